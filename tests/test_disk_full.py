"""A disk that fills up: one line saying so (the path, the space left, what to do), nothing half-written kept, and
the same command completing once there is room. On a real small tmpfs where this test may mount one, with the
error injected everywhere else."""

from __future__ import annotations

import errno
import io
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import make_tiny_beir, save_tiny_bert, toy_training_groups, write_jsonl

from raytev.cli import main
from raytev.encoding.embeddings import EmbeddingsManifest, EmbeddingsWriter, load_embeddings
from raytev.errors import DiskFullError, RaytevError, disk_full_error, user_error_of
from raytev.staging import disk_full_as_error, staged_directory, staged_file
from raytev.training.state import STATE_FILE, latest_checkpoint, remove_incomplete_checkpoints

FILLER = ".filler"  # what takes the small disk's room; removing it is "freeing space"
PAGE = 4096  # tmpfs hands out whole pages


def no_space(path: str | os.PathLike | None = None) -> OSError:
    """The error a write on a full disk raises."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([str(path)] if path else []))


def one_error_line(err: str, path: Path) -> str:
    """The error line of a failed command's stderr, checked: the last line, the only error, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("error: disk full: "), err
    assert sum("error" in line.lower() for line in lines) == 1, err
    assert str(path) in lines[-1] and "free there" in lines[-1], lines[-1]
    return lines[-1]


def left_behind(folder: Path) -> list[str]:
    """Everything under `folder` but the filler, as relative paths."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.name != FILLER)


# ---- without a small disk: the error injected ----


def test_the_message_is_one_line_with_path_free_space_and_flag(tmp_path):
    error = DiskFullError(tmp_path / "out" / "index", "--index_output_path")
    text = str(error)
    assert "\n" not in text and text.startswith("disk full: ")
    assert str(tmp_path / "out" / "index") in text and "free there" in text and "--index_output_path" in text
    copy = pickle.loads(pickle.dumps(error))  # it crosses from Ray actors and Train workers
    assert isinstance(copy, DiskFullError) and (copy.path, copy.option) == (error.path, error.option)
    assert "write to another disk" in str(DiskFullError(None))


def test_disk_full_is_found_inside_wrappers_errno_or_text():
    class RayLikeError(Exception):  # Ray's task errors keep the original as `cause`
        def __init__(self, cause):
            super().__init__("remote traceback ...")
            self.cause = cause

    class WorkerGroupLikeError(Exception):  # Ray Train's keep each worker's failure
        def __init__(self, failures):
            super().__init__("Training failed due to worker errors")
            self.worker_failures = failures

    try:
        try:
            raise no_space("/data/x.parquet")
        except OSError as error:
            raise RuntimeError("writing failed") from error
    except RuntimeError as chained:
        assert disk_full_error(chained).path == "/data/x.parquet"
    assert disk_full_error(RayLikeError(no_space())).path is None
    assert disk_full_error(WorkerGroupLikeError({0: OSError(errno.EDQUOT, "Disk quota exceeded")})) is not None
    text_only = RuntimeError("Error in faiss::FileIOWriter: [Errno 28] No space left on device: '/data/index.faiss'")
    assert disk_full_error(text_only).path == "/data/index.faiss"
    for other in (OSError(errno.EACCES, "Permission denied"), ValueError("bad"), BrokenPipeError()):
        assert disk_full_error(other) is None and user_error_of(other) is None


def test_a_raytev_error_inside_a_ray_task_error_is_shown_as_itself():
    from ray.exceptions import RayTaskError

    original = DiskFullError("/data/emb/shard-00000.parquet")
    wrapped = RayTaskError("encode_shard", "Traceback (most recent call last): ...", original).as_instanceof_cause()
    assert isinstance(wrapped, RaytevError)  # what `except RaytevError` would print: the remote traceback
    shown = user_error_of(wrapped)
    assert type(shown) is DiskFullError and str(shown) == str(original)


def test_staged_writers_name_their_target_and_remove_the_temporary(tmp_path):
    target = tmp_path / "run.txt"
    with pytest.raises(DiskFullError) as caught, staged_file(target) as temporary:
        temporary.write_text("half")
        raise no_space(temporary)  # the temporary's name, which the user never gave
    assert caught.value.path == str(target) and caught.value.__cause__ is None
    folder = tmp_path / "index"
    with pytest.raises(DiskFullError) as caught, staged_directory(folder) as staging:
        (staging / "index.faiss").write_text("half")
        raise RuntimeError("write error: No space left on device")  # FAISS's kind: text only
    assert caught.value.path == str(folder)
    assert list(tmp_path.iterdir()) == []


def test_an_outer_boundary_names_its_folder_for_hidden_scratch_paths_and_adds_its_flag(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DiskFullError) as caught, disk_full_as_error(cache, "--dataset_cache_dir"):
        with staged_file(cache / ".reading-x1" / "corpus.arrow"):
            raise no_space()
    assert (caught.value.path, caught.value.option) == (str(cache), "--dataset_cache_dir")
    with pytest.raises(DiskFullError) as caught, disk_full_as_error(cache, "--dataset_cache_dir"):
        with staged_directory(cache / "corpus-abc"):
            raise no_space()
    assert caught.value.path == str(cache / "corpus-abc")  # a final name: kept
    with pytest.raises(ValueError), disk_full_as_error(cache):  # anything else passes unchanged
        raise ValueError("not a disk")


def test_checkpoints_cut_short_are_neither_resumed_nor_kept(tmp_path):
    run = tmp_path / "checkpoints"
    for step, state in ((1, '{"step": 1}'), (2, ""), (3, '{"st')):
        (run / f"checkpoint_step_{step:08d}").mkdir(parents=True)
        (run / f"checkpoint_step_{step:08d}" / STATE_FILE).write_text(state)
    assert latest_checkpoint(run).name == "checkpoint_step_00000001"
    assert [path.name for path in remove_incomplete_checkpoints(run)] == ["checkpoint_step_00000002",
                                                                          "checkpoint_step_00000003"]
    assert [path.name for path in run.iterdir()] == ["checkpoint_step_00000001"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model, a tiny BEIR folder, training groups, and embeddings of 12 passages and 2 queries (written
    directly: no encoding needed to index or search them)."""
    root = tmp_path_factory.mktemp("disk-full")
    rng = np.random.default_rng(0)
    for kind, count in (("passages", 12), ("queries", 2)):
        writer = EmbeddingsWriter(root / kind, EmbeddingsManifest(model="tiny", dim=32, kind=kind, planned_shards=1))
        prefix = "d" if kind == "passages" else "q"
        writer.write_shard(0, [f"{prefix}{i}" for i in range(count)], rng.standard_normal((count, 32)))
    return {"model": save_tiny_bert(root / "model"), "beir": make_tiny_beir(root), "root": root,
            "train": write_jsonl(root / "train.jsonl", toy_training_groups(8)),
            "passages": root / "passages", "queries": root / "queries"}


def index_command(tiny, output: Path) -> list[str]:
    return ["index", "--passage_reps", str(tiny["passages"]), "--index_output_path", str(output)]


def search_command(tiny, output: Path) -> list[str]:
    return ["search", "--query_reps", str(tiny["queries"]), "--passage_reps", str(tiny["passages"]),
            "--save_ranking_to", str(output), "--depth", "5"]


def test_index_with_the_disk_full_injected(tiny, tmp_path, monkeypatch, capsys):
    import raytev.index.storage as storage

    output = tmp_path / "out" / "index"
    real = storage.faiss.write_index

    def fails(index, path):
        Path(path).write_bytes(b"half an index")
        raise RuntimeError(f"Error in faiss::FileIOWriter: write error: {os.strerror(errno.ENOSPC)}")

    monkeypatch.setattr(storage.faiss, "write_index", fails)
    assert main(index_command(tiny, output)) == 1
    line = one_error_line(capsys.readouterr().err, output)
    assert "--index_output_path" in line
    assert left_behind(tmp_path / "out") == []
    monkeypatch.setattr(storage.faiss, "write_index", real)
    assert main(index_command(tiny, output)) == 0 and (output / "index.json").is_file()


def test_search_with_the_disk_full_injected(tiny, tmp_path, monkeypatch, capsys):
    import raytev.data.runs as runs

    class FullFile(io.BytesIO):
        def write(self, data):
            raise no_space()

    monkeypatch.setattr(runs, "open", lambda path, mode: FullFile(), raising=False)
    output = tmp_path / "run.txt"
    assert main(search_command(tiny, output)) == 1
    assert "--save_ranking_to" in one_error_line(capsys.readouterr().err, output)
    assert left_behind(tmp_path) == []
    monkeypatch.delattr(runs, "open")
    assert main(search_command(tiny, output)) == 0 and len(output.read_text().splitlines()) == 10


def test_prepare_with_the_disk_full_injected(tiny, isolated_cache, monkeypatch, capsys):
    import raytev.data.token_tables as token_tables

    def fails(self, table):
        raise no_space()

    real = token_tables.ParquetShardWriter.write
    monkeypatch.setattr(token_tables.ParquetShardWriter, "write", fails)
    command = ["data", "prepare", "--model_name_or_path", str(tiny["model"]), "--dataset_path", str(tiny["beir"])]
    assert main(command) == 1
    assert "--dataset_cache_dir" in one_error_line(capsys.readouterr().err, isolated_cache)
    assert not isolated_cache.exists()  # the run made it: gone with its tables
    monkeypatch.setattr(token_tables.ParquetShardWriter, "write", real)
    assert main(command) == 0 and len(list(isolated_cache.glob("corpus-*"))) == 1


def test_an_unplaced_disk_full_error_still_ends_in_one_line(monkeypatch, capsys):
    import raytev.index.files as files

    def fails(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/somewhere/out/index/ids.parquet")

    monkeypatch.setattr(files, "build_index", fails)
    assert main(["index", "--passage_reps", "x", "--index_output_path", "/somewhere/out/index"]) == 1
    line = one_error_line(capsys.readouterr().err, Path("/somewhere/out/index/ids.parquet"))
    assert "--index_output_path" in line


# ---- on a real small disk ----


class SmallDisk:
    """A 1 MiB tmpfs whose room a filler file takes, but for what a test leaves free."""

    def __init__(self, path: Path):
        self.path = path

    def leave(self, free: int) -> None:
        """Fill the disk but for `free` bytes (whole pages)."""
        (self.path / FILLER).unlink(missing_ok=True)
        stats = os.statvfs(self.path)
        (self.path / FILLER).write_bytes(bytes(stats.f_bavail * stats.f_frsize - free))

    def free_up(self) -> None:
        """Free the room the filler took."""
        (self.path / FILLER).unlink()


@pytest.fixture
def small_disk(tmp_path):
    """A small tmpfs mounted for the test, unmounted after it."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN); the injected-error tests cover the rest")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): no CAP_SYS_ADMIN in this container")
    try:
        yield SmallDisk(mount_point)
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


def test_index_and_search_on_a_full_disk(tiny, small_disk, capsys):
    small_disk.leave(PAGE)
    index, run = small_disk.path / "index", small_disk.path / "run.txt"
    assert main(index_command(tiny, index)) == 1
    one_error_line(capsys.readouterr().err, index)
    assert left_behind(small_disk.path) == []
    small_disk.leave(0)
    assert main(search_command(tiny, run)) == 1
    one_error_line(capsys.readouterr().err, run)
    assert left_behind(small_disk.path) == []
    small_disk.free_up()
    assert main(index_command(tiny, index)) == 0 and main(search_command(tiny, run)) == 0


def test_prepare_on_a_full_disk(tiny, small_disk, capsys):
    cache = small_disk.path / "cache"
    command = ["data", "prepare", "--model_name_or_path", str(tiny["model"]), "--dataset_path", str(tiny["beir"]),
               "--dataset_cache_dir", str(cache)]
    small_disk.leave(2 * PAGE)
    assert main(command) == 1
    assert "--dataset_cache_dir" in one_error_line(capsys.readouterr().err, cache)
    assert left_behind(small_disk.path) == []
    small_disk.free_up()
    assert main(command) == 0


@pytest.mark.slow
def test_encode_on_a_full_disk(tiny, small_disk, ray_session, capsys):
    output = small_disk.path / "embeddings"
    command = ["encode", "--model_name_or_path", str(tiny["model"]), "--dataset_path", str(tiny["beir"]),
               "--encode_output_path", str(output), "--num_actors", "1"]
    small_disk.leave(PAGE)  # the manifest fits, the shard (written by an actor) does not
    assert main(command) == 1
    assert "--encode_output_path" in one_error_line(capsys.readouterr().err, output)
    # What stays is the resumable state: the manifest and finished shards only, no temporary or partial shard.
    assert set(left_behind(small_disk.path)) <= {"embeddings", "embeddings/manifest.json"}
    small_disk.free_up()
    assert main(command) == 0
    assert len(load_embeddings(str(output))[0]) == 12


@pytest.mark.slow
def test_mine_on_a_full_disk(tiny, small_disk, capsys):
    output = small_disk.path / "mined.jsonl"
    command = ["mine", "--model_name_or_path", str(tiny["model"]), "--dataset_path", str(tiny["beir"]),
               "--split", "train", "--save_to", str(output), "--negative_rank_end", "4", "--n_sample", "2",
               "--num_actors", "0"]
    small_disk.leave(4 * PAGE)  # room for some of the retrieval's files, not all
    assert main(command) == 1
    assert "--save_to" in one_error_line(capsys.readouterr().err, small_disk.path)
    assert not output.exists() and not [name for name in left_behind(small_disk.path) if "/." in f"/{name}"]
    small_disk.free_up()
    assert main(command) == 0 and len(output.read_text().splitlines()) == 4


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"], ids=["in-process", "ray-train-persists"])
def test_a_checkpoint_on_a_full_disk(tiny, small_disk, ray_session, capsys, workers):
    # In-process runs write their checkpoints themselves; with workers, Ray Train copies them into their final
    # folder, where a copy cut short used to stay (its trainer state empty).
    output = small_disk.path / "model"
    command = ["train", "--model_name_or_path", str(tiny["model"]), "--dataset_path", str(tiny["train"]),
               "--output_dir", str(output), "--num_workers", workers, "--max_steps", "1", "--save_steps", "1",
               "--train_group_size", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1",
               "--max_failures", "0"]  # each restart would only fill the disk again
    small_disk.leave(16 * PAGE)  # less than the model's weights
    assert main(command) == 1
    assert "--output_dir" in one_error_line(capsys.readouterr().err, output / "checkpoints")
    assert left_behind(small_disk.path) == []  # a cut copy left here made the next run crash on its empty state
    if workers == "0":  # the re-run is the same code either way; CI time goes to the Ray Train failure above
        small_disk.free_up()
        assert main(command) == 0 and (output / "raytev_model.json").is_file()
