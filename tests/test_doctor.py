"""`raytev doctor`: every section on this machine, the same facts as JSON, no Ray, and each warning rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import GPU_WHEEL, fake_distribution

import raytev
from raytev.compat import installed_version
from raytev.diagnostics.facts import (
    CpuFacts,
    FaissFacts,
    JaxFacts,
    MemoryFacts,
    RayFacts,
    TorchFacts,
    jax_facts,
    ray_facts,
)
from raytev.diagnostics.report import DoctorReport
from raytev.diagnostics.rules import (
    cpu_bf16_warnings,
    faiss_gpu_warnings,
    faiss_install_warnings,
    jax_warnings,
    ray_warnings,
    resource_warnings,
    torch_warnings,
)
from raytev.index.faiss_install import FaissDistribution, faiss_distributions

SECTIONS = ("raytev", "python", "cpu", "memory", "torch", "faiss", "jax", "libraries", "ray")
CPU_FAISS = [FaissDistribution("faiss-cpu", "1.15.1", "/site/faiss_cpu-1.15.1.dist-info")]
GPU_FAISS = [FaissDistribution(*GPU_WHEEL, "/site/faiss_gpu_cu12-1.14.1.post1.dist-info")]
ONE_GPU = TorchFacts(version="2.13.0+cu128", build="CUDA 12.8", cuda_available=True,
                     devices=["cuda:0 NVIDIA H200 (140 GiB)"], bf16_on_gpu=True)


def run_doctor(*flags: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, bool]:
    """`raytev doctor FLAGS` through the CLI's main in a fresh interpreter; also whether that imported Ray."""
    code = ("import sys; from raytev.cli import main; code = main(sys.argv[1:]); "
            "print('ray imported:', 'ray' in sys.modules); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, "doctor", *flags], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=180)
    output, _, last = done.stdout.rstrip().rpartition("\n")
    return subprocess.CompletedProcess(done.args, done.returncode, output, done.stderr), last == "ray imported: True"


def parse_text(text: str) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The text report as {section: {name: value}} and its warning lines; fails on a line of another shape."""
    sections, warnings, current = {}, [], None
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif line.startswith("  ") and ": " in line and current is not None:
            name, value = line.strip().split(": ", 1)
            current[name] = value
        elif line.startswith("warning: "):
            warnings.append(line.removeprefix("warning: "))
        else:
            assert line == "no warnings", f"unexpected line: {line!r}"
    return sections, warnings


@pytest.fixture(scope="module")
def text_and_json():
    """This machine's report as text and as JSON, each from its own `raytev doctor` run."""
    text, text_imported_ray = run_doctor()
    as_json, json_imported_ray = run_doctor("--json")
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    assert not text_imported_ray and not json_imported_ray  # Ray is neither started nor even imported
    return parse_text(text.stdout), json.loads(as_json.stdout)


def test_the_command_reports_every_section_of_this_machine(text_and_json):
    import torch

    (sections, _), _ = text_and_json
    assert tuple(sections) == SECTIONS
    assert sections["raytev"] == {"version": raytev.__version__, "location": os.path.dirname(raytev.__file__)}
    assert sections["python"]["executable"] == sys.executable
    assert sections["cpu"]["logical cores"] == str(os.cpu_count())
    assert sections["torch"]["version"] == torch.__version__
    assert sections["torch"]["build"] == (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU")
    assert sections["faiss"]["installed by"] == ", ".join(map(str, faiss_distributions()))
    assert sections["ray"]["version"] == installed_version("ray")
    assert set(sections["ray"]) == {"version", "address", "local cluster", "RAY_AUTH_MODE", "token"}


def test_json_holds_the_same_facts(text_and_json):
    (sections, warnings), report = text_and_json
    assert list(report) == [*SECTIONS, "warnings"]
    assert report["raytev"]["version"] == sections["raytev"]["version"]
    assert report["python"]["executable"] == sections["python"]["executable"]
    assert str(report["cpu"]["logical_cores"]) == sections["cpu"]["logical cores"]
    assert report["cpu"]["bf16"] == sections["cpu"]["--bf16 on the CPU"]
    assert report["torch"]["version"] == sections["torch"]["version"]
    assert report["torch"]["build"] == sections["torch"]["build"]
    assert report["faiss"]["version"] == sections["faiss"]["version"]
    assert [f"{found['name']} {found['version']}" for found in report["faiss"]["distributions"]] == \
        sections["faiss"]["installed by"].split(", ")
    if report["jax"]["version"]:
        assert (report["jax"]["version"], report["jax"]["backend"]) == (sections["jax"]["version"],
                                                                        sections["jax"]["backend"])
    else:
        assert sections["jax"]["version"].startswith("not installed")
    assert report["ray"]["version"] == sections["ray"]["version"]
    assert report["memory"]["cache_dir"] == sections["memory"]["cache folder"]
    assert report["warnings"] == warnings


def test_the_python_api_returns_the_report():
    report = raytev.doctor(json=True, ray_address="ray://127.0.0.1:1")  # reported, not connected to
    assert isinstance(report, DoctorReport)
    assert (report.ray.address, report.ray.address_from) == ("ray://127.0.0.1:1", "--ray_address")
    assert report.raytev.version == raytev.__version__
    assert report.faiss.distributions == faiss_distributions() and report.faiss.error == ""
    from raytev.index.faiss_setup import faiss

    assert (report.faiss.version, report.faiss.gpus) == (faiss.__version__, faiss.get_num_gpus())
    assert json.loads(report.summary()) == report.as_dict()  # json=True: summary() is the JSON
    report.as_json = False
    assert report.summary().splitlines()[0] == "[raytev]"


def test_a_mixed_faiss_is_reported_not_loaded(tmp_path):
    fake_distribution(tmp_path, *GPU_WHEEL)
    done, _ = run_doctor(env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    sections, warnings = parse_text(done.stdout)
    installed = faiss_distributions()
    assert sections["faiss"]["installed by"] == ", ".join(["faiss-gpu-cu12 1.14.1.post1", *map(str, installed)])
    assert "version" not in sections["faiss"]  # faiss was not imported
    assert sections["faiss"]["error"].startswith("2 faiss builds are installed")
    assert any(warning.startswith("2 faiss builds are installed") and "uninstall -y faiss-gpu-cu12" in warning
               for warning in warnings)


def test_the_token_itself_is_never_shown(tmp_path):
    secret = "s3cr3t-token-value"
    facts = ray_facts("ray://head:10001", {"RAY_AUTH_TOKEN": secret, "RAY_TMPDIR": str(tmp_path)})
    assert facts.token == "RAY_AUTH_TOKEN" and facts.address_from == "--ray_address"
    assert secret not in json.dumps(facts.__dict__) and secret not in str(facts.lines())
    assert ray_warnings(facts) == []


def test_a_local_cluster_is_found_and_checked(tmp_path):
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")  # port 1: nothing answers
    facts = ray_facts(None, {"RAY_TMPDIR": str(tmp_path)})
    assert (facts.local_cluster, facts.local_cluster_answers, facts.address) == ("127.0.0.1:1", False, None)
    assert "does not answer" in ray_warnings(facts)[0]


def test_a_jax_that_does_not_answer_is_reported():
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    facts = jax_facts(stuck, timeout=0.5)
    assert stuck.poll() is not None  # killed, not left behind
    assert facts.error.startswith("no answer from jax within 0.5 s")
    assert jax_warnings(facts, TorchFacts()) == [f"jax: {facts.error}"]
    crashed = subprocess.Popen([sys.executable, "-c", "raise SystemExit('no backend')"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert jax_facts(crashed).error == "jax failed to start: no backend"


# --- Each rule on made-up facts ---

def test_faiss_rules():
    assert faiss_install_warnings(FaissFacts(error="2 faiss builds are installed: ...")) == \
        ["2 faiss builds are installed: ..."]
    assert faiss_install_warnings(FaissFacts(distributions=CPU_FAISS)) == []
    cpu_with_gpus = faiss_gpu_warnings(FaissFacts(distributions=CPU_FAISS, gpu_build=False, gpus=0), ONE_GPU)
    assert len(cpu_with_gpus) == 1 and "faiss-cpu 1.15.1 is a CPU build while torch sees 1 GPU(s)" in cpu_with_gpus[0]
    assert '`pip uninstall -y faiss-cpu`, then `pip install "raytev[gpu]"`' in cpu_with_gpus[0]
    gpu_without_gpus = faiss_gpu_warnings(FaissFacts(distributions=GPU_FAISS, gpu_build=True, gpus=0), TorchFacts())
    assert len(gpu_without_gpus) == 1 and "is a GPU build but sees no GPU" in gpu_without_gpus[0]
    assert faiss_gpu_warnings(FaissFacts(distributions=GPU_FAISS, gpu_build=True, gpus=1), ONE_GPU) == []
    assert faiss_gpu_warnings(FaissFacts(distributions=CPU_FAISS, gpu_build=False, gpus=0), TorchFacts()) == []


def test_torch_rules():
    no_gpu = torch_warnings(TorchFacts(build="CUDA 12.8", cuda_available=False))
    assert len(no_gpu) == 1 and no_gpu[0].startswith("torch is a CUDA 12.8 build but sees no GPU")
    old_gpu = torch_warnings(TorchFacts(build="CUDA 12.8", cuda_available=True, devices=["cuda:0 Tesla T4"],
                                        bf16_on_gpu=False))
    assert len(old_gpu) == 1 and "use --fp16" in old_gpu[0]
    assert torch_warnings(ONE_GPU) == [] and torch_warnings(TorchFacts(build="CPU")) == []
    assert torch_warnings(TorchFacts(error="import torch failed: no module")) == ["import torch failed: no module"]


@pytest.mark.parametrize(("flags", "bf16", "warned"), [
    (["avx2", "avx512f"], "emulated", True),  # AVX-512 without its bf16 instructions
    (["avx2"], "emulated", True),
    (["avx2", "avx512f", "avx512_bf16"], "avx512_bf16", False),
    (["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"], "AMX", False),
    (None, "unknown", False),  # the system does not list flags: nothing to say
])
def test_the_bf16_rule(flags, bf16, warned):
    assert CpuFacts(flags=flags).bf16.startswith(bf16)
    found = cpu_bf16_warnings(CpuFacts(flags=flags))
    assert len(found) == warned
    if warned:
        assert "--bf16 on the CPU is emulated and slower than fp32" in found[0]


def test_the_jax_rule():
    on_cpu = jax_warnings(JaxFacts(version="0.10.2", backend="cpu", devices=["cpu:0 cpu"]), ONE_GPU)
    assert len(on_cpu) == 1 and 'pip install "jax[cuda12]==0.10.2"' in on_cpu[0]
    assert jax_warnings(JaxFacts(version="0.10.2", backend="gpu"), ONE_GPU) == []
    assert jax_warnings(JaxFacts(version="0.10.2", backend="cpu"), TorchFacts()) == []
    assert jax_warnings(JaxFacts(), ONE_GPU) == []  # not installed


@pytest.mark.parametrize(("facts", "expected"), [
    # A client without a token, or token mode without one: what is wrong, and what to set.
    (RayFacts(address="ray://head:10001", address_from="RAY_ADDRESS"),
     ("RAY_ADDRESS is a Ray client address (ray://head:10001) but no token was found", "RAY_AUTH_TOKEN")),
    (RayFacts(auth_mode="token"), ("RAY_AUTH_MODE=token but no token was found", "RAY_AUTH_TOKEN")),
    (RayFacts(address="ray://head:10001", address_from="RAY_ADDRESS", token="/home/me/.ray/auth_token"), ()),
    (RayFacts(address="10.0.0.1:6379", address_from="--ray_address"), ()),  # joining as a node: Ray decides the mode
    # A stale address file makes a stage without --address try to join a dead head.
    (RayFacts(local_cluster="10.0.0.1:6379", local_cluster_answers=False), ("10.0.0.1:6379 that does not answer",)),
    (RayFacts(local_cluster="10.0.0.1:6379", local_cluster_answers=True), ()),
])
def test_the_ray_rules(facts, expected):
    found = ray_warnings(facts)
    assert len(found) == (1 if expected else 0)
    assert all(part in found[0] for part in expected)


def test_the_resource_rules():
    plenty = MemoryFacts(total_gib=64, available_gib=40, cache_dir="/c", cache_free_gib=100)
    assert resource_warnings(plenty) == []
    low = resource_warnings(MemoryFacts(total_gib=8, available_gib=2.5, cache_dir="/c", cache_free_gib=3.25))
    assert low[0].startswith("only 2.5 GiB of memory is available (under 4)")
    assert low[1].startswith("only 3.2 GiB is free for the token cache (/c; under 10)")
    assert resource_warnings(MemoryFacts()) == []  # unknown: nothing to say
