"""benchmarks/gpu_check.sh and gpu_check.py without a GPU: arguments, the set-up it would run, rows and the table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_check.sh"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402


def run_script(*args: str, **environment) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **environment})


def test_help_and_bad_arguments():
    assert "--no-install" in run_script("--help").stdout
    unknown = run_script("--frobnicate")
    assert unknown.returncode == 2 and "unknown argument '--frobnicate'" in unknown.stderr
    missing = run_script("--wheels", "/no/such/folder")
    assert missing.returncode == 2 and "not a folder" in missing.stderr


def test_gpu_setup_installs_cuda_torch_and_exactly_one_faiss():
    plan = run_script("--dry-run", "--", "--only", "doctor").stdout.splitlines()
    assert plan[0].endswith("-m venv --system-site-packages .venv-gpu")
    assert any("--index-url https://download.pytorch.org/whl/cu126 torch" in line for line in plan)
    install = next(line for line in plan if "-e ." in line)
    assert ".[gpu,jax]" in install and "jax[cuda12]" in install and "cpu" not in install
    assert plan[-1].endswith("benchmarks/gpu_check.py  --only doctor")


def test_cpu_setup_and_offline_wheels(tmp_path):
    plan = run_script("--dry-run", "--cpu", "--wheels", str(tmp_path), RAYTEV_GPU_VENV="/tmp/v").stdout
    assert "torch==2.13.0" in plan and ".[cpu,jax]" in plan and "gpu]" not in plan
    assert plan.count(f"--no-index --find-links {tmp_path}") == 2
    assert "/tmp/v/bin/python" in plan and "gpu_check.py --cpu" in plan
    assert run_script("--dry-run", "--no-install").stdout.strip() == "python3 benchmarks/gpu_check.py"


def test_check_selection():
    assert gpu_check.selected_checks("", "") == list(gpu_check.CHECKS)
    assert gpu_check.selected_checks("doctor, faiss gpu", "faiss gpu") == ["doctor"]
    with pytest.raises(SystemExit, match="unknown check"):
        gpu_check.selected_checks("doctr", "")


def test_a_failing_or_skipped_check_becomes_a_row_and_the_table_shows_every_row(tmp_path):
    context = gpu_check.Context(gpu_check.parse_args([]), tmp_path)

    def fails(_):
        raise ValueError("first line\nthe reason")

    def skips(_):
        raise gpu_check.Skip("no GPU here")

    rows = [gpu_check.run_check("a", lambda _: ("1.0 docs/s", {"rate": 1.0}, ""), context),
            gpu_check.run_check("b", fails, context), gpu_check.run_check("c", skips, context)]
    assert [(row.status, row.figure) for row in rows] == [("ok", "1.0 docs/s"), ("FAIL", ""), ("skip", "")]
    assert rows[1].detail == "ValueError: the reason"
    table = gpu_check.format_table(rows, "title").splitlines()
    assert table[0] == "title" and table[2].split() == ["check", "status", "figure", "seconds"]
    assert [line.split()[:2] for line in table[4:7]] == [["a", "ok"], ["b", "FAIL"], ["c", "skip"]]
    assert table[-2:] == ["b: ValueError: the reason", "c: no GPU here"]


def test_a_folder_without_weights_becomes_a_seeded_random_model(tmp_path):
    from helpers import save_tiny_bert

    folder = save_tiny_bert(tmp_path / "tiny")
    assert gpu_check.prepare_model(str(folder), tmp_path / "work") == str(folder)  # has weights: used as it is
    (folder / "model.safetensors").unlink()
    made = Path(gpu_check.prepare_model(str(folder), tmp_path / "work"))
    again = Path(gpu_check.prepare_model(str(folder), tmp_path / "again"))
    assert (made / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    assert (made / "tokenizer_config.json").exists()


def test_model_transfer_round_trip_keeps_files_and_rounds_weights_per_row(tmp_path):
    import model_transfer
    import numpy as np
    from helpers import save_tiny_bert
    from safetensors.numpy import load_file

    folder = save_tiny_bert(tmp_path / "tiny")
    model_transfer.pack(folder, tmp_path / "packed.npz")
    model_transfer.unpack(tmp_path / "packed.npz", tmp_path / "back")
    for path in folder.iterdir():
        if path.name != "model.safetensors":
            assert (tmp_path / "back" / path.name).read_bytes() == path.read_bytes()
    before, after = load_file(str(folder / "model.safetensors")), load_file(str(tmp_path / "back" /
                                                                                 "model.safetensors"))
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        bound = np.abs(tensor).max(axis=-1, keepdims=True) / 127 / 2 + 1e-7 if tensor.ndim == 2 else 1e-3
        assert np.all(np.abs(after[name] - tensor) <= bound), name


def test_doctor_text_becomes_sections():
    text = "[torch]\n  version: 2.11.0+cu130\n  build: CUDA 13.0\n[faiss]\n  GPUs: 0\nwarning: something: odd\n"
    assert gpu_check.doctor_sections(text) == {"torch": {"version": "2.11.0+cu130", "build": "CUDA 13.0"},
                                               "faiss": {"GPUs": "0"}}
