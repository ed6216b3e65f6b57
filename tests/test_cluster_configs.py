"""The files in clusters/ and jobs/: Ray's cluster schema, KubeRay's required fields, recipes that raytev parses."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from raytev.cli import find_command
from raytev.config.fields import to_flags
from raytev.config.flags import parse_flags
from raytev.errors import RaytevError

ROOT = Path(__file__).resolve().parents[1]


def load_checker():
    """clusters/check.py, the offline checker of cluster files (a script beside them, not in the package)."""
    spec = importlib.util.spec_from_file_location("cluster_check", ROOT / "clusters" / "check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_checker = load_checker()
check_file, check_kuberay_manifest, check_launcher_config = (_checker.check_file, _checker.check_kuberay_manifest,
                                                             _checker.check_launcher_config)
load_documents, main, validate_files = _checker.load_documents, _checker.main, _checker.validate_files
LAUNCHER_FILES = sorted((ROOT / "clusters").glob("*.yaml"))
KUBERAY_FILES = sorted((ROOT / "clusters" / "kuberay").glob("*.yaml"))
RECIPES = sorted(path for path in (ROOT / "jobs").glob("*.sh") if path.name != "common.sh")
SHARED = "/mnt/cluster_storage"
# What the generic stage recipes need from their caller; the paper recipes need nothing.
RECIPE_ENV = {"MODEL": "bert-base-uncased", "DATASET": "Tevatron/msmarco-passage", "RUN": "test-run",
              "CORPUS": "Tevatron/msmarco-passage-corpus", "QUERIES": "Tevatron/msmarco-passage",
              "QUERY_SPLIT": "dev", "QRELS": f"{SHARED}/data/msmarco/qrels.dev.tsv",
              "CORPUS_FILE": f"{SHARED}/data/msmarco/corpus.jsonl"}
# Flags naming files a job reads or writes: they must be absolute (a job's working directory is a temporary copy
# that Ray deletes) and, but for the checkpoint URI, on the shared filesystem.
PATH_FLAGS = {"output_dir", "encode_output_path", "index_output_path", "save_ranking_to", "save_to", "passage_reps",
              "query_reps", "run", "qrels", "qa_answers", "qa_corpus", "corpus_path", "dataset_path", "index", "corpus",
              "lora_name_or_path"}
# Ray turns the entrypoint's words into one shell line with subprocess.list2cmdline (Windows quoting) and runs it
# with a shell on the head: only words the shell leaves alone arrive as they were sent. list2cmdline leaves a word
# without spaces bare, so it may hold nothing the shell treats specially; a word with spaces (a prompt such as
# "Query: ") it puts in double quotes, inside which the shell still expands $, ` and \ (and " ends the quotes).
SHELL_SAFE = re.compile(r"[\w./:=,@%+-]+")


def arrives_intact(word: str) -> bool:
    """Whether a word of a submitted command reaches the job's process as it was sent."""
    return bool(SHELL_SAFE.fullmatch(word.replace(" ", "")))


def ray_prepare_and_validate(config: dict) -> None:
    """What `ray up` checks before it calls the cloud: defaults merged from the wheel, then Ray's JSON schema.

    prepare_config only reads the provider's defaults.yaml shipped with Ray; the provider bootstrap that follows
    in `ray up` (boto3 / googleapiclient, credentials, IAM roles, key pairs) needs the cloud and is not run.
    """
    from raytev.compat import launcher_config_checks

    prepare_config, validate_config = launcher_config_checks()
    validate_config(prepare_config(copy.deepcopy(config)))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def ray_documents(path: Path) -> list[dict]:
    return [doc for doc in load_documents(path) if str(doc.get("apiVersion", "")).startswith("ray.io/")]


def kuberay(kind: str, name: str | None = None) -> dict:
    """The first manifest of a kind, or the one in clusters/kuberay/<name>."""
    paths = [ROOT / "clusters" / "kuberay" / name] if name else KUBERAY_FILES
    return next(doc for path in paths for doc in ray_documents(path) if doc["kind"] == kind)


def cluster_spec(manifest: dict) -> dict:
    return {"RayCluster": lambda spec: spec, "RayJob": lambda spec: spec["rayClusterSpec"],
            "RayService": lambda spec: spec["rayClusterConfig"]}[manifest["kind"]](manifest["spec"])


# ---- cluster launcher YAMLs -------------------------------------------------------------------------------------

def test_the_cluster_files_exist():
    assert {path.name for path in LAUNCHER_FILES} >= {"aws-gpu.yaml", "gcp-gpu.yaml", "gcp-tpu.yaml"}
    assert {path.name for path in KUBERAY_FILES} >= {"rayjob-train.yaml", "rayjob-train-tpu.yaml"}
    assert {doc["kind"] for path in KUBERAY_FILES for doc in ray_documents(path)} == {"RayCluster", "RayJob",
                                                                                      "RayService"}
    assert {path.name for path in RECIPES} >= {"nq_dpr.sh", "nq_dpr_tpu.sh"}


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda path: path.name)
def test_launcher_configs_pass_rays_schema_and_our_rules(path):
    config = load(path)
    ray_prepare_and_validate(config)
    assert check_launcher_config(config) == []


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
def test_gpu_clusters_autoscale_gpu_workers_behind_a_cpu_head(name):
    config = load(ROOT / "clusters" / name)
    head = config["available_node_types"][config["head_node_type"]]
    assert not head["resources"].get("GPU")
    workers = [node for key, node in config["available_node_types"].items() if key != config["head_node_type"]]
    assert any(node["resources"].get("GPU", 0) >= 1 and node["min_workers"] < node["max_workers"] for node in workers)


def test_the_tpu_cluster_has_an_autoscaling_tpu_worker_type():
    config = load(ROOT / "clusters" / "gcp-tpu.yaml")
    assert config["provider"]["type"] == "gcp"
    tpus = [node for node in config["available_node_types"].values() if "acceleratorType" in node["node_config"]]
    assert tpus and all(node["resources"]["TPU"] >= 1 and node["min_workers"] < node["max_workers"] for node in tpus)


@pytest.mark.parametrize("path", LAUNCHER_FILES + KUBERAY_FILES, ids=lambda path: path.name)
def test_every_cluster_mounts_the_shared_storage_the_jobs_write_to(path):
    assert SHARED in path.read_text()


def gpu_worker(config: dict) -> dict:
    return next(node for node in config["available_node_types"].values() if node.get("resources", {}).get("GPU"))


def drop_max_workers(config):
    del gpu_worker(config)["max_workers"]


def min_above_max(config):
    gpu_worker(config).update(min_workers=5, max_workers=2)


def negative_min(config):
    gpu_worker(config)["min_workers"] = -1


def fractional_gpu(config):
    gpu_worker(config)["resources"]["GPU"] = 0.5


def unknown_head_type(config):
    config["head_node_type"] = "ray.head.missing"


def misspelt_key(config):
    config["setup_comands"] = config.pop("setup_commands")


def minimums_above_cluster_max(config):
    gpu_worker(config).update(min_workers=9, max_workers=9)


def no_instance_type(config):
    del gpu_worker(config)["node_config"]["InstanceType"]


@pytest.mark.parametrize("mutate, expected", [
    (drop_max_workers, "no max_workers"),
    (min_above_max, "min_workers (5) is above max_workers (2)"),
    (negative_min, "min_workers: must be 0 or more"),
    (no_instance_type, "no InstanceType"),
])
def test_broken_worker_types_are_rejected_by_our_rules(mutate, expected):
    config = load(ROOT / "clusters" / "aws-gpu.yaml")
    mutate(config)
    problems = check_launcher_config(config)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize("mutate, error, expected", [
    (fractional_gpu, jsonschema.ValidationError, "0.5 is not of type 'integer'"),
    (unknown_head_type, ValueError, "head_node_type"),
    (misspelt_key, jsonschema.ValidationError, "setup_comands"),
    (minimums_above_cluster_max, ValueError, "max_workers"),
])
def test_broken_configs_are_rejected_by_rays_own_checks(mutate, error, expected):
    config = load(ROOT / "clusters" / "aws-gpu.yaml")
    mutate(config)
    with pytest.raises(error, match=re.escape(expected)):
        ray_prepare_and_validate(config)
    problems = check_launcher_config(config)
    assert len(problems) == 1 and expected in problems[0], problems


def test_broken_gcp_node_types_are_rejected():
    config = load(ROOT / "clusters" / "gcp-tpu.yaml")
    tpu = config["available_node_types"]["ray_worker_tpu"]
    tpu["node_config"]["acceleratorType"] = "tpu-v4"
    tpu["resources"] = {}
    problems = check_launcher_config(config)
    assert any("'tpu-v4' is not a TPU type" in problem for problem in problems), problems
    assert any("declare the TPU chips" in problem for problem in problems), problems

    config = load(ROOT / "clusters" / "gcp-gpu.yaml")
    del config["available_node_types"]["ray_worker_gpu"]["node_config"]["scheduling"]
    assert any("onHostMaintenance: TERMINATE" in problem for problem in check_launcher_config(config))


# ---- KubeRay manifests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", KUBERAY_FILES, ids=lambda path: path.name)
def test_kuberay_manifests_have_what_kuberay_needs(path):
    assert check_file(path) == []
    for manifest in ray_documents(path):
        assert manifest["apiVersion"] == "ray.io/v1"
        spec = cluster_spec(manifest)
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["headGroupSpec"]["template"]["spec"]["containers"]
        for group in spec["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_the_rayservice_runs_raytevs_serve_app():
    config = yaml.safe_load(kuberay("RayService")["spec"]["serveConfigV2"])
    assert [app["import_path"] for app in config["applications"]] == ["raytev.serving.app:build_app"]


def worker_group(manifest):
    return cluster_spec(manifest)["workerGroupSpecs"][0]


def head_group(manifest):
    return cluster_spec(manifest)["headGroupSpec"]


BROKEN_MANIFESTS = [
    ("RayCluster", lambda m: worker_group(m).pop("maxReplicas"), "maxReplicas: missing"),
    ("RayCluster", lambda m: worker_group(m).update(minReplicas=3, maxReplicas=1), "minReplicas (3) is above"),
    ("RayCluster", lambda m: worker_group(m).update(replicas=9), "replicas: must be within"),
    ("RayCluster", lambda m: worker_group(m).pop("groupName"), "groupName: missing"),
    ("RayCluster", lambda m: worker_group(m).pop("template"), "workerGroupSpecs[0].template.spec.containers"),
    ("RayCluster", lambda m: m["spec"].pop("enableInTreeAutoscaling"), "enableInTreeAutoscaling: must be true"),
    ("RayCluster", lambda m: m.update(apiVersion="ray.io/v1alpha1"), "apiVersion: expected ray.io/v1"),
    ("RayCluster", lambda m: m["metadata"].update(name="Raytev_Cluster"), "metadata.name"),
    ("RayCluster", lambda m: head_group(m).pop("rayStartParams"), "headGroupSpec.rayStartParams: missing"),
    ("RayCluster", lambda m: head_group(m)["rayStartParams"].update({"num-cpus": 0}), "must be a string"),
    ("RayCluster", lambda m: worker_group(m)["template"]["spec"]["containers"][0].update(image="other:1"),
     "different images"),
    ("RayJob", lambda m: m["spec"].pop("entrypoint"), "spec.entrypoint"),
    ("RayJob", lambda m: m["spec"].pop("rayClusterSpec"), "spec.rayClusterSpec: missing"),
    ("RayJob", lambda m: m["spec"].update(runtimeEnvYAML="env_vars: [unclosed"), "runtimeEnvYAML: invalid YAML"),
    ("RayJob", lambda m: worker_group(m).pop("minReplicas"), "minReplicas: missing"),
    ("RayService", lambda m: m["spec"].update(serveConfigV2={"applications": []}), "not a string"),
    ("RayService", lambda m: m["spec"].update(serveConfigV2="applications: []\n"), "non-empty applications"),
    ("RayService", lambda m: m["spec"].update(serveConfigV2="applications:\n  - name: search\n"), "import_path"),
    ("RayService", lambda m: m["spec"].pop("rayClusterConfig"), "spec.rayClusterConfig: missing"),
]


@pytest.mark.parametrize("kind, mutate, expected", BROKEN_MANIFESTS,
                         ids=[f"{kind}-{expected}" for kind, _, expected in BROKEN_MANIFESTS])
def test_broken_manifests_are_rejected(kind, mutate, expected):
    manifest = copy.deepcopy(kuberay(kind))
    assert check_kuberay_manifest(manifest) == []
    mutate(manifest)
    problems = check_kuberay_manifest(manifest)
    assert any(expected in problem for problem in problems), problems


def test_files_are_checked_by_what_they_hold(tmp_path, capsys):
    cluster = copy.deepcopy(kuberay("RayCluster"))
    worker_group(cluster).pop("maxReplicas")
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(yaml.safe_dump_all([{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                          "metadata": {"name": "x"}}, cluster]))
    assert check_file(mixed) == [f"{mixed} (document 2): spec.workerGroupSpecs[0].maxReplicas: missing or not a "
                                 "whole number >= 0 (got None)"]
    stray = tmp_path / "stray.yaml"
    stray.write_text("name: not a cluster\n")
    with pytest.raises(RaytevError, match="neither a `ray up` config"):
        validate_files([stray])
    assert main([str(mixed)]) == 1 and "maxReplicas" in capsys.readouterr().err
    assert main([str(path) for path in KUBERAY_FILES]) == 0


# ---- job recipes ------------------------------------------------------------------------------------------------

# Records one line per call: the program's name and its arguments, separated by the ASCII unit separator.
STUB = """#!/bin/sh
{ printf '%s' "$(basename "$0")"; for word in "$@"; do printf '\\037%s' "$word"; done; printf '\\n'; } \\
  >> "$RAYTEV_RECORD"
"""


def run_recipe(path: Path, tmp_path: Path, **env) -> list[list[str]]:
    """Run a recipe with `ray`, `serve` and `python` replaced by stubs; the argument lists they were called with."""
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("ray", "serve", "python"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    record = tmp_path / f"{path.stem}.calls"
    record.unlink(missing_ok=True)
    # The caller's own settings (RAYTEV_STORAGE, STAGES, ...) would change what the recipes submit.
    ignored = RECIPE_ENV.keys() | {"STAGES", "NUM_GPUS", "TRAIN_GPUS", "TPU_HOSTS", "BASE_MODEL", "LORA",
                                   "CPUS_PER_WORKER", "SEARCH_SHARDS"}
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("RAYTEV_", "RAY_")) and key not in ignored}
    environment.update(PATH=f"{bin_dir}:{os.environ['PATH']}", RAYTEV_RECORD=str(record), **RECIPE_ENV, **env)
    subprocess.run(["bash", str(path)], env=environment, check=True, cwd=tmp_path, timeout=60)
    return [line.split("\x1f") for line in record.read_text().splitlines()]


def submitted(call: list[str]) -> list[str]:
    """The entrypoint of a `ray job submit` call, after checking it is submitted the way jobs/README.md says."""
    assert call[:3] == ["ray", "job", "submit"], call
    options = call[3:call.index("--")]
    assert options == ["--working-dir", ".", "--runtime-env", "jobs/runtime_env.yaml"], options
    return call[call.index("--") + 1:]


def parse_raytev(words: list[str]) -> tuple[str, dict]:
    """`python -m raytev <command> <flags>` parsed by raytev's own command table and flag parser."""
    assert words[:3] == ["python", "-m", "raytev"], words
    stage, rest = find_command(words[3:])
    assert stage is not None, words
    return stage.command, to_flags(parse_flags(stage.config, rest, "raytev"))


def export_helper():
    spec = importlib.util.spec_from_file_location("export_hf", ROOT / "jobs" / "export_hf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def raytev_commands(path: Path, tmp_path: Path, **env) -> list[tuple[str, dict]]:
    """Every raytev command a recipe submits, parsed; every other call checked as far as it can be."""
    commands = []
    for call in run_recipe(path, tmp_path, **env):
        if call[0] == "serve":
            assert call[:4] == ["serve", "deploy", "--address", "http://127.0.0.1:8265"] and len(call) == 5, call
            continue
        if call[0] == "python":  # run here, not on the cluster (serve.sh writes its Serve config)
            commands.append(parse_raytev(call))
            continue
        words = submitted(call)
        unsafe = [word for word in words if not arrives_intact(word)]
        assert not unsafe, f"{path.name}: words the head's shell would change: {unsafe}"
        if words[:2] == ["python", "jobs/export_hf.py"]:
            export_helper().build_parser().parse_args(words[2:])
            continue
        commands.append(parse_raytev(words))
    return commands


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.name)
def test_recipes_submit_commands_raytev_parses(path, tmp_path):
    commands = raytev_commands(path, tmp_path)
    assert commands or path.name == "serve.sh"
    for name, values in commands:
        for flag in PATH_FLAGS & values.keys():
            if values[flag] is not None:
                assert values[flag].startswith(f"{SHARED}/"), f"{path.name}: raytev {name} --{flag} {values[flag]}"
        if name == "train":
            assert values["storage_path"] == f"{SHARED}/raytev/checkpoints"
        if name in ("train", "encode"):  # on accelerators: GPUs with torch, or TPUs with the JAX backend
            assert values["use_gpu"] or (values["use_tpu"] and values["backend"] == "jax"), (path.name, name)


def test_the_stage_recipes_cover_every_stage(tmp_path):
    names = {name for recipe in ("finetune", "encode", "index", "evaluate")
             for name, _ in raytev_commands(ROOT / "jobs" / f"{recipe}.sh", tmp_path)}
    assert names == {"train", "encode", "index", "search", "eval"}
    assert (ROOT / "jobs" / "serve.sh").exists()


def test_a_renamed_flag_breaks_the_recipe_check(tmp_path):
    call = next(call for call in run_recipe(ROOT / "jobs" / "msmarco_bert_base.sh", tmp_path) if "train" in call)
    words = [("--lr" if word == "--learning_rate" else word) for word in submitted(call)]
    with pytest.raises(SystemExit):
        parse_raytev(words)


def test_checkpoints_may_go_to_an_object_store(tmp_path):
    commands = raytev_commands(ROOT / "jobs" / "finetune.sh", tmp_path, RAYTEV_CHECKPOINTS="s3://bucket/raytev")
    assert [values["storage_path"] for _, values in commands] == ["s3://bucket/raytev"]
    assert commands[0][1]["output_dir"] == f"{SHARED}/raytev/test-run/model"


def commands_of(recipe: str, tmp_path: Path, **env) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for name, values in raytev_commands(ROOT / "jobs" / recipe, tmp_path, **env):
        found.setdefault(name, []).append(values)
    return found


def test_msmarco_recipe_has_tevatrons_hyper_parameters(tmp_path):
    commands = commands_of("msmarco_bert_base.sh", tmp_path)
    [train] = commands["train"]
    assert (train["model_name_or_path"], train["dataset_name"]) == ("bert-base-uncased", "Tevatron/msmarco-passage")
    assert (train["learning_rate"], train["per_device_train_batch_size"], train["train_group_size"]) == (5e-6, 8, 8)
    assert (train["query_max_len"], train["passage_max_len"], train["num_train_epochs"]) == (16, 128, 3)
    assert train["fp16"] and train["num_workers"] == 1 and train["warmup_ratio"] == 0.1
    corpus, queries = commands["encode"]
    assert corpus["passage_max_len"] == 128 and queries["query_max_len"] == 32 and queries["encode_is_query"]
    assert set(commands) == {"train", "encode", "index", "search", "eval"}


def test_nq_recipe_has_tevatrons_hyper_parameters(tmp_path):
    [train] = commands_of("nq_dpr.sh", tmp_path)["train"]
    assert (train["num_workers"], train["per_device_train_batch_size"]) == (4, 32)
    assert train["cross_worker_negatives"]  # Tevatron's --negatives_x_device
    assert (train["train_group_size"], train["positive_passage_no_shuffle"], train["learning_rate"]) == (2, True, 1e-5)
    assert (train["query_max_len"], train["passage_max_len"], train["num_train_epochs"]) == (32, 156, 40)
    [single] = commands_of("nq_dpr.sh", tmp_path, TRAIN_GPUS="1", STAGES="train")["train"]
    assert (single["num_workers"], single["per_device_train_batch_size"], single["grad_cache"]) == (1, 128, True)
    [evaluation] = commands_of("nq_dpr.sh", tmp_path, STAGES="eval")["eval"]
    assert evaluation["top_k"] == "20,100" and evaluation["qa_answers"].endswith("test.jsonl")


def test_cocondenser_recipe_mines_then_trains_again_from_the_checkpoint(tmp_path):
    commands = commands_of("cocondenser_msmarco.sh", tmp_path)
    first, second = commands["train"]
    assert first["model_name_or_path"] == second["model_name_or_path"] == "Luyu/co-condenser-marco"
    assert (first["num_train_epochs"], second["num_train_epochs"]) == (3, 2)
    assert all((run["learning_rate"], run["per_device_train_batch_size"], run["train_group_size"]) == (5e-6, 8, 8)
               for run in (first, second))
    [mine] = commands["mine"]
    assert mine["model_name_or_path"] == first["output_dir"] and second["dataset_path"] == mine["save_to"]
    assert (mine["negative_rank_start"], mine["negative_rank_end"], mine["n_sample"]) == (1, 200, 63)
    assert mine["keep_original_groups"]


def test_the_rayjob_trains_as_the_msmarco_recipe_does(tmp_path):
    [recipe] = commands_of("msmarco_bert_base.sh", tmp_path, STAGES="train")["train"]
    entrypoint = kuberay("RayJob", "rayjob-train.yaml")["spec"]["entrypoint"]
    assert parse_raytev(shlex.split(entrypoint)) == ("train", recipe)


# How an LLM retriever reads text and pools: the training command's settings, which encoding must repeat.
TEXT_FLAGS = ("pooling", "normalize", "append_eos_token", "query_prefix", "passage_prefix", "query_max_len",
              "passage_max_len", "attn_implementation")
ALL_PROJECTIONS = "q_proj,k_proj,v_proj,o_proj,down_proj,up_proj,gate_proj"


def test_repllama_recipe_has_tevatron_mains_llm_hyper_parameters(tmp_path):
    commands = commands_of("repllama_msmarco.sh", tmp_path)
    # No index: 4096-dimensional vectors of 8.8M passages are searched shard by shard, not as one flat index.
    assert list(commands) == ["train", "encode", "search", "eval"]
    [search] = commands["search"]
    assert search["shard_search"] and search["passage_reps"] == commands["encode"][0]["encode_output_path"]
    [train] = commands["train"]
    assert (train["model_name_or_path"], train["dataset_name"]) == ("mistralai/Mistral-7B-v0.1",
                                                                    "Tevatron/msmarco-passage-aug")
    assert train["lora"] and train["lora_target_modules"] == ALL_PROJECTIONS
    assert (train["lora_r"], train["lora_alpha"], train["lora_dropout"]) == (16, 64, 0.1)
    assert (train["query_prefix"], train["passage_prefix"]) == ("Query: ", "Passage: ")
    assert train["pooling"] in ("eos", "last") and train["normalize"] and train["append_eos_token"]
    assert train["temperature"] == 0.01 and train["warmup_ratio"] == 0.1
    assert train["bf16"] and not train["fp16"] and train["torch_dtype"] == "bfloat16"
    assert train["gradient_checkpointing"] and not train["overwrite_output_dir"]
    assert (train["per_device_train_batch_size"], train["train_group_size"], train["learning_rate"]) == (8, 16, 1e-4)
    assert (train["query_max_len"], train["passage_max_len"], train["num_train_epochs"]) == (32, 156, 1)
    # Tevatron's 4 GPUs x 8 queries x 4 accumulation steps, negatives shared across the GPUs, weights sharded.
    assert (train["num_workers"], train["gradient_accumulation_steps"], train["fsdp"]) == (4, 4, True)
    assert train["cross_worker_negatives"]
    corpus, queries = commands["encode"]
    for encode in (corpus, queries):
        assert (encode["model_name_or_path"], encode["lora_name_or_path"]) == (train["model_name_or_path"],
                                                                              train["output_dir"])
        assert {key: encode[key] for key in TEXT_FLAGS} == {key: train[key] for key in TEXT_FLAGS}
        assert encode["bf16"] and not encode["fp16"]
    assert queries["encode_is_query"] and queries["dataset_split"] == "dev"
    # 128 queries per optimizer step on any number of workers; FSDP needs more than one.
    for gpus, accumulation in (("8", 2), ("1", 16)):
        [run] = commands_of("repllama_msmarco.sh", tmp_path, TRAIN_GPUS=gpus, STAGES="train")["train"]
        assert (run["num_workers"], run["gradient_accumulation_steps"], run["fsdp"]) == (int(gpus), accumulation,
                                                                                         gpus != "1")
    [llama] = commands_of("repllama_msmarco.sh", tmp_path, BASE_MODEL="meta-llama/Llama-2-7b-hf",
                          STAGES="train")["train"]
    assert llama["model_name_or_path"] == "meta-llama/Llama-2-7b-hf" and llama["output_dir"] != train["output_dir"]


def test_llm_recipes_refuse_a_worker_count_that_breaks_the_batch(tmp_path):
    import subprocess

    for recipe in ("repllama_msmarco.sh", "qwen3_embedding_finetune.sh"):
        with pytest.raises(subprocess.CalledProcessError):
            run_recipe(ROOT / "jobs" / recipe, tmp_path, TRAIN_GPUS="3")
    with pytest.raises(subprocess.CalledProcessError):
        run_recipe(ROOT / "jobs" / "qwen3_embedding_finetune.sh", tmp_path, LORA="yes")


def test_qwen3_recipe_leaves_pooling_and_prompts_to_the_model_folder(tmp_path):
    commands = commands_of("qwen3_embedding_finetune.sh", tmp_path)
    assert list(commands) == ["train", "encode", "search", "eval"] and commands["search"][0]["shard_search"]
    [train] = commands["train"]
    assert (train["model_name_or_path"], train["dataset_name"]) == ("Qwen/Qwen3-Embedding-0.6B",
                                                                    "Tevatron/msmarco-passage-aug")
    # Last-token pooling, normalization and the prompts come from the sentence-transformers folder, the EOS from
    # its tokenizer; lengths and temperature are given (the folder's would be 32k tokens and none).
    assert all(train[key] is None for key in ("pooling", "normalize", "query_prefix", "passage_prefix"))
    assert not train["append_eos_token"] and train["temperature"] == 0.01
    assert (train["query_max_len"], train["passage_max_len"]) == (64, 156)
    # A full fine-tune on one GPU: float32 weights with bf16 autocast, activations recomputed.
    assert not (train["lora"] or train["fsdp"] or train["fp16"]) and train["torch_dtype"] is None
    assert train["bf16"] and train["gradient_checkpointing"] and train["learning_rate"] == 1e-5
    assert (train["num_workers"], train["per_device_train_batch_size"], train["gradient_accumulation_steps"],
            train["train_group_size"], train["num_train_epochs"]) == (1, 8, 16, 16, 1)
    for encode in commands["encode"]:
        assert encode["model_name_or_path"] == train["output_dir"] and encode["lora_name_or_path"] is None
        assert encode["pooling"] is None and encode["query_prefix"] is None and not encode["append_eos_token"]
        assert (encode["query_max_len"], encode["passage_max_len"], encode["bf16"]) == (64, 156, True)

    lora = commands_of("qwen3_embedding_finetune.sh", tmp_path, BASE_MODEL="Qwen/Qwen3-Embedding-8B", LORA="1")
    [adapter] = lora["train"]
    assert adapter["lora"] and adapter["lora_target_modules"] == ALL_PROJECTIONS and adapter["learning_rate"] == 1e-4
    assert (adapter["num_workers"], adapter["gradient_accumulation_steps"], adapter["fsdp"]) == (4, 4, True)
    assert adapter["torch_dtype"] == "bfloat16" and adapter["output_dir"] != train["output_dir"]
    for encode in lora["encode"]:
        assert (encode["model_name_or_path"], encode["lora_name_or_path"]) == ("Qwen/Qwen3-Embedding-8B",
                                                                              adapter["output_dir"])


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
@pytest.mark.parametrize("recipe, env", [("repllama_msmarco.sh", {}), ("qwen3_embedding_finetune.sh", {"LORA": "1"})])
def test_llm_training_workers_land_together_on_the_multi_gpu_worker_type(name, recipe, env, tmp_path):
    """Each worker asks for more CPUs than a single-GPU node has: the autoscaler must start one node that holds them
    all, not spread a 7B model's FSDP traffic over single-GPU nodes."""
    [train] = commands_of(recipe, tmp_path, STAGES="train", **env)["train"]
    config = load(ROOT / "clusters" / name)
    workers = [node["resources"] for key, node in config["available_node_types"].items()
               if key != config["head_node_type"]]
    holds = [min(resources.get("GPU", 0), resources["CPU"] // train["cpus_per_worker"]) for resources in workers]
    assert max(holds) >= train["num_workers"], holds
    assert all(count == 0 or count >= train["num_workers"] for count in holds), holds


def test_nq_tpu_recipe_is_the_papers_tpu_setup(tmp_path):
    commands = commands_of("nq_dpr_tpu.sh", tmp_path)
    assert set(commands) == {"train", "encode", "index", "search", "eval"}
    [train] = commands["train"]
    assert (train["backend"], train["use_tpu"], train["bf16"]) == ("jax", True, True)
    assert not (train["use_gpu"] or train["fp16"] or train["grad_cache"])
    # One TPU host (a v3-8 or v4-8) with the whole global batch of 128 questions.
    assert (train["num_workers"], train["per_device_train_batch_size"]) == (1, 128)
    assert (train["model_name_or_path"], train["dataset_name"]) == ("bert-base-uncased", "Tevatron/wikipedia-nq")
    assert (train["train_group_size"], train["positive_passage_no_shuffle"], train["learning_rate"]) == (2, True, 1e-5)
    assert (train["query_max_len"], train["passage_max_len"], train["num_train_epochs"]) == (32, 156, 40)
    corpus, queries = commands["encode"]
    assert all((run["backend"], run["use_tpu"], run["model_name_or_path"]) == ("jax", True, train["output_dir"])
               for run in (corpus, queries))
    assert corpus["passage_max_len"] == 128 and queries["query_max_len"] == 32 and queries["encode_is_query"]
    assert corpus["num_actors"] == 1 and commands_of("nq_dpr_tpu.sh", tmp_path, TPU_HOSTS="4",
                                                     STAGES="encode")["encode"][0]["num_actors"] == 4
    # Index, search and evaluation are the GPU recipe's, on this run's outputs.
    gpu = commands_of("nq_dpr.sh", tmp_path)
    for stage in ("index", "search", "eval"):
        [mine], [theirs] = commands[stage], gpu[stage]
        assert {key: str(value).replace("/nq-dpr-tpu/", "/nq-dpr/") for key, value in mine.items()} == \
            {key: str(value) for key, value in theirs.items()}, stage


def tpu_worker_groups(manifest: dict) -> list[dict]:
    return [group for group in cluster_spec(manifest)["workerGroupSpecs"]
            if "google.com/tpu" in group["template"]["spec"]["containers"][0]["resources"].get("limits", {})]


def test_the_tpu_rayjob_trains_as_the_nq_tpu_recipe_does_on_declared_tpus(tmp_path):
    manifest = kuberay("RayJob", "rayjob-train-tpu.yaml")
    [recipe] = commands_of("nq_dpr_tpu.sh", tmp_path, STAGES="train")["train"]
    assert parse_raytev(shlex.split(manifest["spec"]["entrypoint"])) == ("train", recipe)
    [group] = tpu_worker_groups(manifest)
    container = group["template"]["spec"]["containers"][0]
    # GKE hands out whole hosts: requests equal limits, and Ray is told the same chips as its TPU resource
    # (KubeRay passes rayStartParams to `ray start` through a shell).
    chips = int(container["resources"]["limits"]["google.com/tpu"])
    assert chips >= 1 and int(container["resources"]["requests"]["google.com/tpu"]) == chips
    [resources] = shlex.split(group["rayStartParams"]["resources"])
    assert json.loads(resources) == {"TPU": chips}
    assert not any("nvidia.com/gpu" in container["resources"].get(key, {}) for key in ("requests", "limits"))
    # The pods land on a TPU node pool of that shape, and the group can reach --num_workers hosts.
    selector = group["template"]["spec"]["nodeSelector"]
    assert selector["cloud.google.com/gke-tpu-accelerator"].startswith("tpu-")
    assert re.fullmatch(r"\d+(x\d+){1,2}", selector["cloud.google.com/gke-tpu-topology"])
    assert group["numOfHosts"] >= 1 and group["maxReplicas"] * group["numOfHosts"] >= recipe["num_workers"]
    # The head gets no TPU: the driver (tokenizing) runs there.
    head = head_group(manifest)["template"]["spec"]["containers"][0]["resources"]
    assert not any("google.com/tpu" in head.get(key, {}) for key in ("requests", "limits"))


def test_the_tpu_cluster_shows_the_nq_tpu_recipes_training_command(tmp_path):
    """clusters/gcp-tpu.yaml's header: a `ray job submit` of `raytev train --backend jax --use_tpu`."""
    lines = [line.lstrip("#").strip() for line in (ROOT / "clusters" / "gcp-tpu.yaml").read_text().splitlines()
             if line.startswith("#")]
    start = next(index for index, line in enumerate(lines) if line.startswith("ray job submit"))
    command = []
    for line in lines[start:]:
        command.append(line.removesuffix("\\"))
        if not line.endswith("\\"):
            break
    words = submitted(shlex.split(" ".join(command)))
    [recipe] = commands_of("nq_dpr_tpu.sh", tmp_path, STAGES="train")["train"]
    assert parse_raytev(words) == ("train", recipe)


def test_words_the_check_allows_reach_the_job_as_sent():
    """Ray's list2cmdline and the head's shell (`subprocess.Popen(..., shell=True)`) leave allowed words alone."""
    import subprocess
    import sys

    def through_the_head(words: list[str]) -> list[str]:
        probe = f"{shlex.quote(sys.executable)} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"
        line = f"{probe} {subprocess.list2cmdline(words)}"
        return json.loads(subprocess.run(line, shell=True, check=True, capture_output=True, text=True).stdout)

    allowed = ["--query_prefix", "Query: ", "--passage_prefix", "Passage: ", "a  b", f"{SHARED}/x-1.2/y_z",
               "q_proj,k_proj", "--lr=1e-4", "user@host:5%+"]
    assert all(arrives_intact(word) for word in allowed)
    assert through_the_head(allowed) == allowed
    refused = ["$HOME", "cost $5 each", "a*", "it's", 'say "hi"', "a\\ b", "`date`", " "]
    assert not any(arrives_intact(word) for word in refused)
    assert through_the_head(["cost $5 each", "`echo x`"]) != ["cost $5 each", "`echo x`"]


def test_stages_can_be_chosen(tmp_path):
    assert list(commands_of("msmarco_bert_base.sh", tmp_path, STAGES="search eval")) == ["search", "eval"]


def test_msmarco_recipes_can_search_without_an_index(tmp_path):
    indexed = commands_of("msmarco_bert_base.sh", tmp_path)
    sharded = commands_of("msmarco_bert_base.sh", tmp_path, SEARCH_SHARDS="1")
    assert "index" in indexed and "index" not in sharded
    [with_index], [without] = indexed["search"], sharded["search"]
    assert (with_index["passage_reps"], with_index["shard_search"]) == (indexed["index"][0]["index_output_path"], False)
    assert (without["passage_reps"], without["shard_search"]) == (indexed["encode"][0]["encode_output_path"], True)


def test_the_runtime_env_is_one_ray_accepts():
    from ray.runtime_env import RuntimeEnv

    runtime_env = RuntimeEnv(**load(ROOT / "jobs" / "runtime_env.yaml"))
    assert runtime_env["env_vars"]["RAYTEV_CACHE_DIR"].startswith(f"{SHARED}/")
    jobs = [doc for path in KUBERAY_FILES for doc in ray_documents(path) if doc["kind"] == "RayJob"]
    assert len(jobs) >= 2
    for job in jobs:
        assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"] == runtime_env["env_vars"]


def test_the_serve_recipe_configures_an_autoscaling_gpu_service(tmp_path):
    [(name, values)] = raytev_commands(ROOT / "jobs" / "serve.sh", tmp_path)
    assert name == "serve" and values["print_config"] and values["use_gpu"]
    assert (values["min_replicas"], values["max_replicas"]) == (1, 4)
    assert values["index"] == f"{SHARED}/raytev/test-run/index"


def test_the_rayservice_args_are_ones_the_app_builder_takes():
    from raytev.serving.app import config_from_args

    args = yaml.safe_load(kuberay("RayService")["spec"]["serveConfigV2"])["applications"][0]["args"]
    config = config_from_args(args)
    assert (config.num_shards, config.max_replicas, config.cluster.use_gpu, config.precision.bf16) == (1, 4, True, True)
    assert config.model.model_name_or_path.startswith(f"{SHARED}/")
    with pytest.raises(RaytevError, match="unknown keys"):
        config_from_args({**args, "num_shard": 2})


def test_the_export_helper_writes_qrels_and_keeps_existing_files(tmp_path, capsys):
    helper = export_helper()
    rows = [{"query_id": "q1", "positive_passages": [{"docid": "d1"}, {"docid": "d2"}]},
            {"query_id": "q2", "positive_passages": [{"docid": "d3"}]}]
    output = tmp_path / "qrels" / "dev.tsv"
    assert helper.write_atomically(output, helper.qrels_lines(rows)) == 3
    assert output.read_text() == "q1 0 d1 1\nq1 0 d2 1\nq2 0 d3 1\n"
    assert [path.name for path in output.parent.iterdir()] == ["dev.tsv"]
    with pytest.raises(RaytevError, match="positive_passages"):
        list(helper.qrels_lines([{"query_id": "q1"}]))
    assert helper.main(["qrels", "--dataset_name", "x/y", "--output", str(output)]) == 0
    assert "kept" in capsys.readouterr().out and output.read_text().startswith("q1 0 d1 1")
