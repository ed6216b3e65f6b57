"""raytev: dense retrieval (Tevatron's train / encode / index / search / evaluate) on Ray.

The Python API is generated from the stage registry (raytev/config/stages.py): `raytev.<name>(**flags)` for
prepare, validate, train, encode, build_index, search, evaluate, mine, pipeline, demo, serve and doctor takes the
command's flags as keyword arguments and returns the stage's typed result. Functions that use Ray connect to the
running session when there is one (`ray.init("ray://head:10001")` first to work through a Ray client), else to
`address=` / RAY_ADDRESS, else start Ray here.
"""

__version__ = "0.1.0"


def _api_function(stage):
    """`raytev.<stage.api>(**flags)`: the stage run from keyword arguments named as its flags."""
    import inspect

    from raytev.config.fields import flag_fields, is_required

    def run(**flags):
        return _call_stage(stage.api, flags)

    run.__name__ = run.__qualname__ = stage.api
    run.__doc__ = f"{stage.help}: `raytev {stage.command}`, its flags as keyword arguments."
    run.__signature__ = inspect.Signature([
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                          default=inspect.Parameter.empty if is_required(field) else field.default)
        for name, (_, field) in flag_fields(stage.config).items()])
    return run


def _call_stage(api: str, flags: dict):
    """Run a stage here, or from a Ray client as a task on the cluster (see raytev.cluster.call_on_cluster)."""
    import sys

    from raytev.config.stages import run_stage
    from raytev.ray_auth import is_client_address

    if "ray" not in sys.modules and not is_client_address(flags.get("address")):
        return run_stage(api, flags)  # no Ray in this process yet, so it cannot be a client: skip importing Ray
    from raytev.cluster import call_on_cluster, connect

    if is_client_address(flags.get("address")):
        connect(flags["address"])
    return call_on_cluster(run_stage, api, flags)


def _install_api() -> list[str]:
    from raytev.config.stages import STAGES

    globals().update({stage.api: _api_function(stage) for stage in STAGES})
    return [stage.api for stage in STAGES]


__all__ = _install_api()
