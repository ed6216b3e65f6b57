"""A pool of Ray actors running ShardReranker: what `raytev rerank` and the distillation teacher share."""

from __future__ import annotations

from collections.abc import Iterator

from raytev.reranking.shard_reranker import ShardReranker


def on_rerankers(options: dict, method: str, calls: list[tuple], actors, cluster) -> Iterator:
    """The results of ShardReranker.<method>(*call) for each call, in any order, on a pool of actors
    (--num_actors of them, each restarted and its call run again if it is lost)."""
    import ray
    from ray.util import ActorPool

    from raytev.cluster import connect, node_cpus

    connect(cluster.address, cluster.verbose, dashboard=False)
    pool_size = min(actors.num_actors, len(calls))
    resources = {"num_gpus": 1} if cluster.use_gpu else {"num_cpus": actors.cpus_per_actor}
    options = {**options, "torch_threads": None if cluster.use_gpu else max(1, node_cpus() // pool_size)}
    # A part is complete or absent whichever copy of a retried call finishes (parts are written by rename).
    remote = ray.remote(max_restarts=-1, max_task_retries=-1, **resources)(ShardReranker)
    rerankers = [remote.remote(**options) for _ in range(pool_size)]
    try:
        yield from ActorPool(rerankers).map_unordered(lambda actor, call: getattr(actor, method).remote(*call), calls)
    finally:
        for reranker in rerankers:
            ray.kill(reranker)
