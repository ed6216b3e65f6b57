"""Offline checks of cluster files: Ray's own cluster-launcher schema, and the fields KubeRay manifests need.

`python clusters/check.py clusters/*.yaml clusters/kuberay/*.yaml` checks edited copies before `ray up` or
`kubectl apply` (neither has a dry run that works without cloud credentials). It needs raytev installed (for
raytev.compat, where the private Ray calls it makes live) but is not part of the runtime package.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from raytev.errors import RaytevError

KUBERAY_API_VERSION = "ray.io/v1"
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayService")
# Kubernetes object names (DNS-1123 labels): KubeRay derives Service names from them, which must be labels too.
K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Serve's import_path: "package.module:attribute" or "package.module.attribute".
IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*[:.][A-Za-z_]\w*")


def load_documents(path: str | Path) -> list[dict]:
    """The YAML documents of a file (a manifest may hold several); RaytevError if it is not YAML mappings."""
    import yaml

    try:
        documents = [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc is not None]
    except FileNotFoundError:
        raise RaytevError(f"{path}: file not found") from None
    except yaml.YAMLError as error:
        raise RaytevError(f"{path}: invalid YAML: {error}") from None
    if not documents or not all(isinstance(doc, dict) for doc in documents):
        raise RaytevError(f"{path}: expected one or more YAML mappings")
    return documents


def is_launcher_config(document: dict) -> bool:
    """Whether a document is a `ray up` cluster config (it names a provider) rather than a Kubernetes object."""
    return "provider" in document and "apiVersion" not in document


def check_launcher_config(config: dict) -> list[str]:
    """Problems of a `ray up` config: Ray's own schema and defaults, then rules Ray leaves to launch time."""
    # Ray's config checks, as `ray up` runs them before it touches a cloud. `ray up` then calls the provider's
    # bootstrap (boto3 / googleapiclient with credentials, creating IAM roles and key pairs); that part needs the
    # cloud and is not run here. prepare_config only merges the provider's defaults.yaml shipped in the wheel.
    import jsonschema
    from raytev.compat import launcher_config_checks

    prepare_config, validate_config = launcher_config_checks()

    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except jsonschema.ValidationError as error:
        where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        return [f"{where}: {error.message} (Ray's cluster schema)"]
    except (ValueError, RuntimeError, KeyError, TypeError, NotImplementedError, AssertionError) as error:
        return [f"{type(error).__name__}: {error} (Ray's config checks)"]
    return _node_type_problems(config) + _provider_problems(config)


def _node_type_problems(config: dict) -> list[str]:
    """Each worker type states its own autoscaling range, and the range is possible."""
    # Ray fills a missing max_workers with the cluster-wide one and quietly caps a min_workers above max_workers:
    # in a file people edit, both are more likely slips than intent, so they are reported instead.
    problems = []
    node_types = config.get("available_node_types", {})
    for name, node_type in node_types.items():
        if name == config.get("head_node_type"):
            continue
        where = f"available_node_types.{name}"
        bounds = {key: node_type.get(key) for key in ("min_workers", "max_workers")}
        for key, value in bounds.items():
            if value is None:
                problems.append(f"{where}: no {key}; give every worker type its own autoscaling range")
            elif value < 0:
                problems.append(f"{where}.{key}: must be 0 or more, got {value}")
        low, high = bounds["min_workers"], bounds["max_workers"]
        if low is not None and high is not None and low > high:
            problems.append(f"{where}: min_workers ({low}) is above max_workers ({high})")
        if high is not None and high > config.get("max_workers", high):
            problems.append(f"{where}.max_workers ({high}) is above the cluster's max_workers "
                            f"({config['max_workers']}); the cluster limit wins")
    return problems


def _provider_problems(config: dict) -> list[str]:
    """What the provider's bootstrap would refuse, checked without its cloud SDK."""
    provider = config["provider"]["type"]
    problems = []
    for name, node_type in config.get("available_node_types", {}).items():
        where = f"available_node_types.{name}.node_config"
        node = node_type.get("node_config", {})
        if provider == "aws" and not ({"InstanceType", "LaunchTemplate"} & node.keys()):
            problems.append(f"{where}: no InstanceType (or LaunchTemplate)")
        if provider == "gcp":
            problems += _gcp_node_problems(where, node, node_type, is_head=name == config.get("head_node_type"))
    return problems


def _gcp_node_problems(where: str, node: dict, node_type: dict, is_head: bool) -> list[str]:
    """GCP node rules from Ray's gcp/config.py, whose module imports googleapiclient (not installed offline)."""
    from raytev.compat import is_valid_tpu_type

    tpu = "machineType" not in node and ({"acceleratorType", "acceleratorConfig"} & node.keys())
    if "machineType" not in node and not tpu:
        return [f"{where}: needs machineType (a VM) or acceleratorType (a TPU VM)"]
    problems = []
    if tpu:
        accelerator = node.get("acceleratorType")
        if accelerator is not None and not is_valid_tpu_type(accelerator):
            problems.append(f"{where}.acceleratorType: {accelerator!r} is not a TPU type like v4-8 or v5litepod-8")
        if "runtimeVersion" not in node:
            problems.append(f"{where}: a TPU VM needs runtimeVersion (its software image)")
        if is_head:
            problems.append(f"{where}: a TPU cannot be the head node (Ray refuses it)")
        if not node_type.get("resources", {}).get("TPU"):
            problems.append(f"{where}: declare the TPU chips in resources (\"TPU\": n) so the autoscaler can plan")
    if node.get("guestAccelerators"):
        # GCP refuses to create GPU VMs that live-migrate on host maintenance.
        scheduling = node.get("scheduling", {})
        entries = scheduling if isinstance(scheduling, list) else [scheduling]
        if not any(entry.get("onHostMaintenance") == "TERMINATE" for entry in entries):
            problems.append(f"{where}: GPU VMs need scheduling onHostMaintenance: TERMINATE")
    return problems


def check_kuberay_manifest(manifest: dict) -> list[str]:
    """Problems of a KubeRay RayCluster, RayJob or RayService manifest: the fields KubeRay needs, autoscaling on."""
    kind = manifest.get("kind")
    problems = []
    if manifest.get("apiVersion") != KUBERAY_API_VERSION:
        problems.append(f"apiVersion: expected {KUBERAY_API_VERSION}, got {manifest.get('apiVersion')!r}")
    if kind not in KUBERAY_KINDS:
        return problems + [f"kind: expected one of {', '.join(KUBERAY_KINDS)}, got {kind!r}"]
    name = (manifest.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not K8S_NAME.fullmatch(name) or len(name) > 63:
        problems.append(f"metadata.name: needs a lowercase DNS label (a-z, 0-9, '-', at most 63), got {name!r}")
    spec = manifest.get("spec")
    if not isinstance(spec, dict):
        return problems + ["spec: missing"]
    if kind == "RayCluster":
        return problems + _cluster_spec_problems(spec, "spec")
    if kind == "RayJob":
        return problems + _ray_job_problems(spec)
    return problems + _ray_service_problems(spec)


def _ray_job_problems(spec: dict) -> list[str]:
    problems = []
    if not isinstance(spec.get("entrypoint"), str) or not spec["entrypoint"].strip():
        problems.append("spec.entrypoint: the command the job runs is missing")
    if "runtimeEnvYAML" in spec:
        problems += _yaml_mapping_problems(spec["runtimeEnvYAML"], "spec.runtimeEnvYAML")
    if "clusterSelector" in spec:
        return problems  # the job runs on an existing RayCluster, checked on its own
    if not isinstance(spec.get("rayClusterSpec"), dict):
        return problems + ["spec.rayClusterSpec: missing (the cluster the job starts)"]
    return problems + _cluster_spec_problems(spec["rayClusterSpec"], "spec.rayClusterSpec")


def _ray_service_problems(spec: dict) -> list[str]:
    problems = []
    if not isinstance(spec.get("serveConfigV2"), str):
        problems.append("spec.serveConfigV2: missing, or not a string (KubeRay takes the Serve config as a "
                        "YAML string: use `serveConfigV2: |`)")
    else:
        problems += _serve_config_problems(spec["serveConfigV2"])
    if not isinstance(spec.get("rayClusterConfig"), dict):
        return problems + ["spec.rayClusterConfig: missing (the cluster Serve runs on)"]
    return problems + _cluster_spec_problems(spec["rayClusterConfig"], "spec.rayClusterConfig")


def _serve_config_problems(text: str) -> list[str]:
    where = "spec.serveConfigV2"
    problems = _yaml_mapping_problems(text, where)
    if problems:
        return problems
    import yaml

    applications = yaml.safe_load(text).get("applications")
    if not isinstance(applications, list) or not applications:
        return [f"{where}: needs a non-empty applications list"]
    names, prefixes = [], []
    for index, application in enumerate(applications):
        at = f"{where}.applications[{index}]"
        if not isinstance(application, dict):
            problems.append(f"{at}: expected a mapping")
            continue
        if not IMPORT_PATH.fullmatch(str(application.get("import_path", ""))):
            problems.append(f"{at}.import_path: expected 'module:attribute', got {application.get('import_path')!r}")
        names.append(application.get("name", "default"))
        prefixes.append(application.get("route_prefix", "/"))
    for label, values in (("name", names), ("route_prefix", prefixes)):
        repeated = sorted({value for value in values if value is not None and values.count(value) > 1})
        if repeated:
            problems.append(f"{where}: applications share a {label}: {', '.join(map(str, repeated))}")
    return problems


def _yaml_mapping_problems(text, where: str) -> list[str]:
    import yaml

    if not isinstance(text, str):
        return [f"{where}: expected a YAML string (use `|`)"]
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        return [f"{where}: invalid YAML: {error}"]
    return [] if isinstance(value, dict) else [f"{where}: expected a YAML mapping"]


def _cluster_spec_problems(spec: dict, where: str) -> list[str]:
    """A RayCluster spec: head group, worker groups with a sound autoscaling range, in-tree autoscaling on."""
    problems = []
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append(f"{where}.enableInTreeAutoscaling: must be true (raytev's clusters autoscale)")
    head = spec.get("headGroupSpec")
    images = []
    if not isinstance(head, dict):
        problems.append(f"{where}.headGroupSpec: missing")
    else:
        problems += _group_problems(head, f"{where}.headGroupSpec", images)
    groups = spec.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        return problems + [f"{where}.workerGroupSpecs: needs at least one worker group"]
    names = []
    for index, group in enumerate(groups):
        at = f"{where}.workerGroupSpecs[{index}]"
        if not isinstance(group, dict):
            problems.append(f"{at}: expected a mapping")
            continue
        if not group.get("groupName"):
            problems.append(f"{at}.groupName: missing")
        names.append(group.get("groupName"))
        problems += _replica_problems(group, at) + _group_problems(group, at, images)
    repeated = sorted({name for name in names if name and names.count(name) > 1})
    if repeated:
        problems.append(f"{where}.workerGroupSpecs: groupName used twice: {', '.join(repeated)}")
    # Head and workers must run the same Ray and Python; different images are the usual way they drift apart.
    if len(set(images)) > 1:
        problems.append(f"{where}: the Ray containers use different images ({', '.join(sorted(set(images)))})")
    return problems


def _replica_problems(group: dict, where: str) -> list[str]:
    problems = []
    bounds = {}
    for key in ("minReplicas", "maxReplicas"):
        value = group.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f"{where}.{key}: missing or not a whole number >= 0 (got {value!r})")
        else:
            bounds[key] = value
    if len(bounds) < 2:
        return problems
    low, high = bounds["minReplicas"], bounds["maxReplicas"]
    replicas = group.get("replicas", low)
    if low > high:
        problems.append(f"{where}: minReplicas ({low}) is above maxReplicas ({high})")
    elif not isinstance(replicas, int) or not low <= replicas <= high:
        problems.append(f"{where}.replicas: must be within minReplicas..maxReplicas ({low}..{high}), "
                        f"got {replicas!r}")
    return problems


def _group_problems(group: dict, where: str, images: list[str]) -> list[str]:
    """rayStartParams (a string map in KubeRay's CRD) and a pod template whose first container runs Ray."""
    problems = []
    params = group.get("rayStartParams")
    if not isinstance(params, dict):
        problems.append(f"{where}.rayStartParams: missing (use {{}} for none)")
    else:
        for key, value in params.items():
            if not isinstance(value, str):
                problems.append(f"{where}.rayStartParams.{key}: must be a string (quote it), got {value!r}")
    containers = ((group.get("template") or {}).get("spec") or {}).get("containers")
    if not isinstance(containers, list) or not containers:
        return problems + [f"{where}.template.spec.containers: missing"]
    for index, container in enumerate(containers):
        if not isinstance(container, dict) or not container.get("name") or not container.get("image"):
            problems.append(f"{where}.template.spec.containers[{index}]: needs a name and an image")
    if isinstance(containers[0], dict) and containers[0].get("image"):
        images.append(containers[0]["image"])
    return problems


def check_file(path: str | Path) -> list[str]:
    """Problems of one cluster file, each prefixed with the file (and the document, for multi-document files)."""
    documents = load_documents(path)
    problems = []
    for number, document in enumerate(documents, start=1):
        prefix = f"{path}" if len(documents) == 1 else f"{path} (document {number})"
        if is_launcher_config(document):
            found = check_launcher_config(document)
        elif str(document.get("apiVersion", "")).startswith("ray.io/"):
            found = check_kuberay_manifest(document)
        elif "apiVersion" in document and "kind" in document:
            found = []  # another Kubernetes object (a PersistentVolumeClaim, a Secret): not ours to check
        else:
            found = ["neither a `ray up` config (no provider) nor a Kubernetes manifest (no apiVersion/kind)"]
        problems += [f"{prefix}: {problem}" for problem in found]
    return problems


def validate_files(paths: Iterable[str | Path]) -> None:
    """Check cluster files; raise RaytevError listing every problem found."""
    problems = [problem for path in paths for problem in check_file(path)]
    if problems:
        raise RaytevError("invalid cluster files:\n" + "\n".join(f"  {problem}" for problem in problems))


def main(argv: list[str] | None = None) -> int:
    """`python clusters/check.py FILE...`: check the files, print what was wrong; exit 1 on problems."""
    import logging

    # prepare_config logs every default it fills in; the verdict is all a person checking files needs.
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)
    paths = sys.argv[1:] if argv is None else list(argv)
    if not paths:
        print("usage: python clusters/check.py FILE.yaml...", file=sys.stderr)
        return 2
    try:
        validate_files(paths)
    except RaytevError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{len(paths)} cluster file(s) valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
