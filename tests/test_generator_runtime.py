"""Generator artifacts and the executor runtime: versions, integrity checks, one load per Python worker."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from recaug_spark.generators import runtime
from recaug_spark.generators.artifacts import (
    ArtifactError,
    check_vocabulary,
    latest,
    manifest,
    read_vocabulary,
    save_artifact,
    vocabulary_hash,
)

KIND = "test_echo"


@runtime.register_loader(KIND)
def _load_echo(path: Path, written: dict) -> dict:
    return {"payload": (path / "payload.bin").read_bytes(), "pid": os.getpid()}


def save(models, payload=b"weights", **extra):
    return save_artifact(models, "echo", kind=KIND, files={"payload.bin": payload}, config={"k": 1},
                         trained_on={"sequences": 3}, vocabulary=["b", "a"], fidelity={"hr@10": 0.5}, **extra)


def test_versions_count_up_and_the_manifest_records_training(tmp_path):
    first, second = save(tmp_path), save(tmp_path, payload=b"other")
    assert (first.version, second.version) == ("v1", "v2") and first.tag == "echo@v1"
    assert latest(tmp_path, "echo") == second
    written = manifest(first)
    assert written["kind"] == KIND and written["trained_on"] == {"sequences": 3} and written["fidelity"] == {"hr@10": 0.5}
    assert written["vocabulary_hash"] == vocabulary_hash(["a", "b"]) and read_vocabulary(first) == ["b", "a"]
    assert first.content_hash != second.content_hash
    assert not [p for p in (tmp_path / "echo").iterdir() if p.name.startswith(".tmp")]  # no staging left behind


def test_missing_artifact_says_to_run_fit(tmp_path):
    with pytest.raises(ArtifactError, match="no generator model 'echo'.*recaug fit"):
        latest(tmp_path, "echo")


def test_changed_bytes_fail_the_content_hash(tmp_path):
    ref = save(tmp_path)
    (Path(ref.path) / "payload.bin").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="corrupt or was changed"):
        runtime.load(ref)


def test_a_deleted_file_or_manifest_is_named(tmp_path):
    ref = save(tmp_path)
    (Path(ref.path) / "payload.bin").unlink()
    with pytest.raises(ArtifactError, match="lacks.*payload.bin"):
        runtime.load(ref)
    other = save(tmp_path)
    (Path(other.path) / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt manifest.json"):
        runtime.load(other)


def test_another_item_vocabulary_is_refused(tmp_path):
    ref = save(tmp_path)
    check_vocabulary(ref, ["a", "b", "a"])  # the same set: fine
    with pytest.raises(ArtifactError, match="another item vocabulary"):
        check_vocabulary(ref, ["a", "b", "c"])


def test_unknown_kind_lists_the_known_ones(tmp_path):
    ref = save_artifact(tmp_path, "odd", kind="no_such_kind", files={"x": b"1"}, config={}, trained_on={})
    with pytest.raises(ArtifactError, match="no loader for generator kind 'no_such_kind'"):
        runtime.load(ref)


def test_the_cache_loads_once_and_reloads_a_new_version(tmp_path):
    runtime.clear_cache()
    ref = save(tmp_path)
    before = runtime.LOADS[ref.tag]
    assert runtime.load(ref) is runtime.load(ref)
    assert runtime.LOADS[ref.tag] == before + 1
    newer = save(tmp_path, payload=b"v2")
    assert runtime.load(newer)["payload"] == b"v2" and runtime.LOADS[newer.tag] == 1


def _count_loads(ref_json: str):
    """mapInArrow body: load the model for every batch and report (pid, loads so far in this worker)."""
    def body(batches):
        from recaug_spark.generators import runtime as executor_runtime
        from recaug_spark.generators.artifacts import ArtifactRef

        ref = ArtifactRef(**json.loads(ref_json))
        # the test's kind is unknown to executors: register its loader there (a real kind registers at import)
        executor_runtime.register_loader(KIND)(lambda path, written: (path / "payload.bin").read_bytes())
        for batch in batches:
            for _ in range(3):  # several calls per batch, as an augmenter chain makes
                executor_runtime.load(ref)
            yield pa.RecordBatch.from_pydict({"pid": [os.getpid()] * batch.num_rows,
                                              "loads": [executor_runtime.LOADS[ref.tag]] * batch.num_rows})
    return body


def test_each_python_worker_loads_the_model_once_over_many_tasks(spark, tmp_path):
    import dataclasses

    ref = save(tmp_path, payload=b"shared")
    ref_json = json.dumps(dataclasses.asdict(ref))
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "10")
    try:
        frame = spark.range(0, 400, numPartitions=16)  # 16 tasks, 4 batches each
        rows = frame.mapInArrow(_count_loads(ref_json), "pid long, loads long").collect()
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert len(rows) == 400
    by_pid: dict[int, set[int]] = {}
    for row in rows:
        by_pid.setdefault(row.pid, set()).add(row.loads)
    assert by_pid and all(loads == {1} for loads in by_pid.values()), by_pid
    assert len(by_pid) < 16  # workers were reused across tasks (else this test proves nothing)


def test_an_object_store_uri_is_refused_with_the_reason():
    with pytest.raises(ArtifactError, match="POSIX path"):
        latest("s3://bucket/models", "echo")
