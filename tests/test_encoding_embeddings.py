"""The embeddings format: shards written atomically, resumable, and readers that refuse what does not fit."""

from __future__ import annotations

import numpy as np
import pytest

from raytev.encoding.embeddings import (
    EmbeddingsManifest,
    EmbeddingsWriter,
    check_shared_folder,
    find_shards,
    load_compact,
    load_embeddings,
    read_manifest,
    read_tevatron_pickle,
    write_shard_file,
    write_tevatron_pickle,
)
from raytev.errors import RaytevError


def manifest(**changes) -> EmbeddingsManifest:
    values = dict(model="m", dim=4, kind="passages", pooling="mean", normalize=True, source="abc", planned_shards=2)
    return EmbeddingsManifest(**{**values, **changes})


def vectors(rows: int, seed: int, dim: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


def test_shards_round_trip_in_order(tmp_path):
    writer = EmbeddingsWriter(tmp_path / "emb", manifest())
    writer.write_shard(1, ["c"], vectors(1, 1))
    writer.write_shard(0, ["a", "b"], vectors(2, 0))
    ids, loaded = load_embeddings(str(tmp_path / "emb"))
    assert ids.tolist() == ["a", "b", "c"]
    assert np.array_equal(loaded, np.concatenate([vectors(2, 0), vectors(1, 1)]))
    assert read_manifest(tmp_path / "emb").count == 3 and not list((tmp_path / "emb").glob(".*tmp"))
    compact_ids, compact = load_compact(str(tmp_path / "emb"))  # what searches hold: Arrow ids, one array
    assert compact_ids.to_pylist() == ["a", "b", "c"] and np.array_equal(compact, loaded)


def test_shards_written_by_other_processes_are_recorded_only_when_this_one_sees_them(tmp_path):
    writer = EmbeddingsWriter(tmp_path / "emb", manifest())
    check_shared_folder(writer.directory)  # what an encoding actor checks before it loads a model
    assert write_shard_file(writer.directory, 1, ["c", "d"], vectors(2, 1), 4) == 2  # as an actor writes it
    assert read_manifest(writer.directory).shards == {}  # the file alone finishes nothing
    writer.record_shard(1, 2)
    assert read_manifest(writer.directory).shards == {"shard-00001.parquet": 2} and writer.finished() == {1}
    # An actor on a node without the shared filesystem wrote shard 0 into its own disk: refused with what to do.
    with pytest.raises(RaytevError, match="every node mounts at the same place"):
        writer.record_shard(0, 1)
    with pytest.raises(RaytevError, match="not visible on this node.*every node mounts"):
        check_shared_folder(tmp_path / "elsewhere")


def test_reopening_keeps_finished_shards_and_refuses_another_run(tmp_path):
    EmbeddingsWriter(tmp_path / "emb", manifest()).write_shard(0, ["a"], vectors(1, 0))
    again = EmbeddingsWriter(tmp_path / "emb", manifest())
    assert again.finished() == {0}
    with pytest.raises(RaytevError, match="embeddings of another run"):
        EmbeddingsWriter(tmp_path / "emb", manifest(model="other"))
    fresh = EmbeddingsWriter(tmp_path / "emb", manifest(model="other"), overwrite=True)
    assert fresh.finished() == set() and not (tmp_path / "emb" / "shard-00000.parquet").exists()


def test_unfinished_missing_and_mismatched_shards_are_explained(tmp_path):
    writer = EmbeddingsWriter(tmp_path / "emb", manifest())
    writer.write_shard(0, ["a"], vectors(1, 0))
    with pytest.raises(RaytevError, match=r"unfinished \(1 of 2 shards\)"):
        find_shards(str(tmp_path / "emb"))
    writer.write_shard(1, ["b"], vectors(1, 1))
    (tmp_path / "emb" / "shard-00001.parquet").unlink()
    with pytest.raises(RaytevError, match="shards listed in manifest.json are missing: shard-00001.parquet"):
        find_shards(str(tmp_path / "emb"))
    EmbeddingsWriter(tmp_path / "wide", manifest(dim=8, planned_shards=1)).write_shard(0, ["x"], vectors(1, 2, dim=8))
    EmbeddingsWriter(tmp_path / "ok", manifest(planned_shards=1)).write_shard(0, ["y"], vectors(1, 3))
    with pytest.raises(RaytevError, match="disagree on dimension"):
        find_shards(str(tmp_path / "*" / "shard-*.parquet"))
    EmbeddingsWriter(tmp_path / "m2", manifest(model="m2", planned_shards=1)).write_shard(0, ["z"], vectors(1, 4))
    with pytest.raises(RaytevError, match="different models: m, m2"):
        find_shards(str(tmp_path / "[om]*"))
    with pytest.raises(RaytevError, match="no embeddings at"):
        find_shards(str(tmp_path / "nothing-*"))


def test_writer_rejects_vectors_of_the_wrong_shape(tmp_path):
    writer = EmbeddingsWriter(tmp_path / "emb", manifest())
    with pytest.raises(ValueError, match="expected 2 x 4 vectors"):
        writer.write_shard(0, ["a", "b"], vectors(2, 0, dim=3))


def test_tevatron_pickles_round_trip(tmp_path):
    write_tevatron_pickle(tmp_path / "corpus.pkl", vectors(3, 5), ["1", "2", "3"])
    ids, loaded = read_tevatron_pickle(tmp_path / "corpus.pkl")
    assert ids.tolist() == ["1", "2", "3"] and np.array_equal(loaded, vectors(3, 5))
