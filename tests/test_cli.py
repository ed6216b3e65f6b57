"""The `raytev` command: help, flags (Tevatron names and v1 aliases), JSON files, exit codes and output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from raytev.cli import main
from raytev.config.flags import parse_flags
from raytev.config.stages import PrepareConfig, ValidateConfig
from raytev.errors import RaytevError
from helpers import group, passage, write_jsonl


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["--help"])
    assert exit_code.value.code == 0
    assert "data prepare" in capsys.readouterr().out
    assert main([]) == 0 and "data validate" in capsys.readouterr().out


def test_the_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "raytev", "train", "--help"], capture_output=True,
                            text=True, check=True)
    assert "--dataset_cache_dir" in result.stdout and "--train_n_passages" in result.stdout


def test_a_reader_that_stops_early_ends_the_command_quietly(tiny_beir, tmp_path, monkeypatch, capsys):
    # As `raytev ... | head` once head has exited: every write to stdout fails with EPIPE.
    class ClosedPipe:
        def __init__(self, descriptor: int):
            self.descriptor = descriptor

        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self) -> int:
            return self.descriptor

    with open(tmp_path / "stdout", "w") as stand_in:
        monkeypatch.setattr("sys.stdout", ClosedPipe(stand_in.fileno()))
        assert main(["data", "validate", "--dataset_name", str(tiny_beir)]) == 141  # 128 + SIGPIPE, as Unix tools
    assert capsys.readouterr().err == ""  # no traceback


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err


def test_flags_use_tevatron_names_and_v1_aliases():
    from raytev.config.stages import TrainConfig

    config = parse_flags(TrainConfig, [
        "--train_n_passages", "4", "--q_max_len", "16", "--p_max_len", "64", "--train_dir", "/data",
        "--split", "dev", "--negative_passage_no_shuffle", "--positive_passage_no_shuffle", "false",
        "--model_name_or_path", "m", "--output_dir", "out"], "raytev x")
    data, text, training = config.data, config.text, config.training
    assert (training.train_group_size, text.query_max_len, text.passage_max_len) == (4, 16, 64)
    assert (data.dataset_path, data.dataset_split) == ("/data", "dev")
    assert training.negative_passage_no_shuffle is True and training.positive_passage_no_shuffle is False
    assert config.model.model_name_or_path == "m" and data.num_proc is None


def test_bad_flag_values_are_rejected():
    from raytev.config.stages import TrainConfig

    required = ["--model_name_or_path", "m", "--output_dir", "out"]
    with pytest.raises(SystemExit):
        parse_flags(TrainConfig, [*required, "--padding_side", "middle"], "raytev x")
    with pytest.raises(SystemExit):
        parse_flags(ValidateConfig, ["--encode_is_query", "maybe"], "raytev x")
    with pytest.raises(RaytevError, match="--train_group_size must be at least 1"):
        parse_flags(TrainConfig, [*required, "--train_group_size", "0"], "raytev x")


def test_a_json_file_of_the_same_keys_is_accepted(tmp_path):
    config = tmp_path / "options.json"
    config.write_text(json.dumps({"dataset_name": "scifact", "query_max_len": 20, "model_name_or_path": "m"}))
    prepared = parse_flags(PrepareConfig, [str(config)], "raytev x")
    assert (prepared.data.dataset_name, prepared.text.query_max_len, prepared.model.model_name_or_path) == (
        "scifact", 20, "m")
    config.write_text(json.dumps({"dataset_nam": "scifact"}))
    with pytest.raises(RaytevError, match=r"unknown keys \['dataset_nam'\]"):
        parse_flags(ValidateConfig, [str(config)], "raytev x")


def test_prepare_prints_counts_and_the_cache_path(tmp_path, tiny_tokenizer_dir, capsys, isolated_cache):
    path = write_jsonl(tmp_path / "train.jsonl", [group("q1", "what", [passage("d1", "a cat")], [])])
    argv = ["data", "prepare", "--dataset_path", str(path), "--model_name_or_path", str(tiny_tokenizer_dir)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 queries with 1 positives and 0 negatives" in out and "[tokenized]" in out
    assert str(isolated_cache) in out
    assert main(argv) == 0
    assert "cache hit: nothing to do" in capsys.readouterr().out


def test_data_errors_exit_non_zero_with_the_located_message(tmp_path, capsys):
    path = write_jsonl(tmp_path / "train.jsonl", ['{"query_id": 1,'])
    assert main(["data", "validate", "--dataset_path", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: invalid input data:") and f"{path}:1: invalid JSON" in err
    assert "Traceback" not in err


def test_validate_reports_counts(tiny_beir, capsys):
    assert main(["data", "validate", "--dataset_path", str(tiny_beir), "--num_negatives", "2"]) == 0
    assert "valid: 12 passages, 2 queries with 3 positives and 4 negatives" in capsys.readouterr().out
