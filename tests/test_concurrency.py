"""Concurrent writers on one table: the commit carries the app-id transaction and is made on top of
the version the write read (recaug_spark/delta/commit.py), so the same (app id, version) commits
exactly once and a conflicting writer gets a clear error, never a silent lost update."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, Schema, write_deltalake

from recaug_spark.delta import CommittedByConcurrentRun, ConcurrentWriteError, txn_commit_version
from recaug_spark.delta.arrow_reader import read_arrow
from recaug_spark.delta.commit import commit_actions

SCHEMA = pa.schema([("x", pa.int64())])


def _add(uri: str, values: list[int]):
    """One Parquet file with ``values`` in the table folder, described as an add action."""
    from deltalake.transaction import AddAction

    name = f"part-{uuid.uuid4().hex}.parquet"
    pq.write_table(pa.table({"x": values}, schema=SCHEMA), os.path.join(uri, name))
    return AddAction(path=name, size=os.path.getsize(os.path.join(uri, name)), partition_values={},
                     modification_time=int(time.time() * 1000), data_change=True,
                     stats=json.dumps({"numRecords": len(values)}))


def _at_once(task, count: int, timeout_s: float) -> list:
    """``task(i)`` for i in 0..count-1, each in its own thread; the results, or the exception each raised."""
    outcomes: list = [None] * count

    def run(i: int) -> None:
        try:
            outcomes[i] = task(i)
        except Exception as error:  # noqa: BLE001 - the outcome is what the test checks
            outcomes[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout_s)
    return outcomes


def _race(uri: str, writers: list[dict]) -> list:
    """Every writer reads the table, then all commit at once (threads released by one barrier)."""
    barrier = threading.Barrier(len(writers))

    def commit(i: int):
        snapshot = DeltaTable(uri)  # the version this writer read
        actions = [_add(uri, writers[i]["values"])]
        barrier.wait()
        return commit_actions(uri, snapshot, actions, mode=writers[i]["mode"], schema=Schema.from_arrow(SCHEMA),
                              txn=writers[i].get("txn"))

    return _at_once(commit, len(writers), timeout_s=60)


@pytest.fixture()
def table(tmp_path):
    uri = str(tmp_path / "t")
    write_deltalake(uri, pa.table({"x": [1, 2]}, schema=SCHEMA))
    return uri


def _values(uri: str) -> list[int]:
    return sorted(read_arrow(uri).column("x").to_pylist())


def test_same_transaction_commits_exactly_once(table):
    outcomes = _race(table, [{"values": [10], "mode": "append", "txn": ("recaug/r1/ingest", 0)},
                             {"values": [10], "mode": "append", "txn": ("recaug/r1/ingest", 0)}])
    versions = [o for o in outcomes if isinstance(o, int)]
    lost = [o for o in outcomes if isinstance(o, CommittedByConcurrentRun)]
    assert len(versions) == 1 and len(lost) == 1, outcomes
    assert "already committed by a concurrent run" in str(lost[0])
    assert _values(table) == [1, 2, 10]  # one copy of the rows, not two
    assert DeltaTable(table).version() == 1
    assert txn_commit_version(table, ("recaug/r1/ingest", 0)) == versions[0] == 1


def test_different_transactions_appending_both_commit(table):
    outcomes = _race(table, [{"values": [10], "mode": "append", "txn": ("recaug/a/ingest", 0)},
                             {"values": [20], "mode": "append", "txn": ("recaug/b/ingest", 0)}])
    assert sorted(outcomes) == [1, 2], outcomes  # a blind append is retried on top of the other: both rows
    assert _values(table) == [1, 2, 10, 20]


def test_different_transactions_overwriting_one_fails_clearly(table):
    outcomes = _race(table, [{"values": [10], "mode": "overwrite", "txn": ("recaug/a/clean", 0)},
                             {"values": [20], "mode": "overwrite", "txn": ("recaug/b/clean", 0)}])
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], ConcurrentWriteError), outcomes
    assert "read version 0" in str(errors[0]) and "run the stage again" in str(errors[0])
    winner = [10] if isinstance(outcomes[0], int) else [20]
    assert _values(table) == winner  # the winner's rows, intact: no silent lost update


def test_concurrent_create_of_an_append_table_keeps_both(tmp_path):
    uri = str(tmp_path / "runs")
    os.makedirs(uri)
    barrier = threading.Barrier(2)

    def create(i: int):
        actions = [_add(uri, [i])]
        barrier.wait()
        return commit_actions(uri, None, actions, mode="append", schema=Schema.from_arrow(SCHEMA),
                              txn=(f"recaug/run{i}/runs", 0))

    outcomes = _at_once(create, 2, timeout_s=60)
    assert sorted(outcomes) == [0, 1], outcomes
    assert _values(uri) == [0, 1]


def test_two_spark_writes_with_one_run_id_commit_once(spark, tmp_path, monkeypatch):
    """Through the Warehouse: both writes stage their files before either commits (a barrier in
    the staging step); exactly one commits, the other reports the concurrent run and leaves no file."""
    import recaug_spark.delta.delta_rs as delta_rs
    from recaug_spark.delta import Warehouse

    barrier = threading.Barrier(2)
    original = delta_rs.staged

    def staged_then_wait(*args, **kwargs):
        manager = original(*args, **kwargs)

        class Waiting:
            def __enter__(self):
                actions = manager.__enter__()
                barrier.wait(timeout=120)
                return actions

            def __exit__(self, *exc):
                return manager.__exit__(*exc)

        return Waiting()

    wh = Warehouse(spark, str(tmp_path / "wh"))
    wh.write("quarantine", spark.createDataFrame([(0,)], "x long"), mode="append")
    monkeypatch.setattr(delta_rs, "staged", staged_then_wait)
    def write(i: int):
        df = spark.createDataFrame([(1,), (2,)], "x long").coalesce(1)
        return wh.write("quarantine", df, mode="append", txn=("recaug/X/ingest", 0))

    outcomes = _at_once(write, 2, timeout_s=300)
    assert sum(isinstance(o, CommittedByConcurrentRun) for o in outcomes) == 1, outcomes
    assert sorted(r.x for r in wh.read("quarantine").collect()) == [0, 1, 2]  # not [0, 1, 1, 2, 2]
    folder = tmp_path / "wh" / "quarantine"
    on_disk = sorted(p.name for p in folder.glob("*.parquet"))
    assert len(on_disk) == len(DeltaTable(str(folder)).file_uris())  # the loser's files were deleted
    assert not (folder / "_staging").exists()
