"""Orphan cleanup (recaug_spark/delta/vacuum.py): files a crashed write left in a table folder
(a staging folder, data files no commit references) are swept once older than the last commit and
the grace period; a plain Parquet reader of the folder then counts the table's rows."""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import write_deltalake

from recaug_spark.delta import sweep, vacuum_table
from recaug_spark.delta.arrow_reader import read_arrow

HOUR = 3600


def _orphan(path, rows: int, age_s: float) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({"x": list(range(rows))}), path)
    past = time.time() - age_s
    os.utime(path, (past, past))


def _crashed_table(tmp_path):
    """A 5-row table plus what a killed driver leaves: two moved-in files and a staging folder."""
    uri = str(tmp_path / "augmented_sequences")
    write_deltalake(uri, pa.table({"x": list(range(5))}))
    _orphan(f"{uri}/part-00000-crashed.parquet", 7, HOUR)
    _orphan(f"{uri}/part-00001-crashed.parquet", 11, HOUR)
    staging = f"{uri}/_staging/0123abcd"
    _orphan(f"{staging}/part-00000-x.parquet", 3, HOUR)
    with open(f"{staging}/.part-00000-x.parquet.crc", "w") as handle:
        handle.write("crc")
    past = time.time() - HOUR
    for path in (f"{staging}/.part-00000-x.parquet.crc", staging):
        os.utime(path, (past, past))
    return uri


def _plain_rows(uri: str) -> int:
    return ds.dataset(uri, format="parquet", exclude_invalid_files=True).count_rows()


def test_sweep_removes_a_crashes_orphans(tmp_path):
    uri = _crashed_table(tmp_path)
    assert _plain_rows(uri) == 5 + 7 + 11  # what the issue saw: a plain reader counts the orphans
    report = sweep(uri)
    assert report.orphans == ["part-00000-crashed.parquet", "part-00001-crashed.parquet"]
    assert report.staging == ["_staging/0123abcd"]
    assert not os.path.exists(f"{uri}/_staging")
    assert _plain_rows(uri) == 5 == read_arrow(uri).num_rows


def test_sweep_spares_files_a_running_writer_may_still_commit(tmp_path):
    uri = _crashed_table(tmp_path)
    _orphan(f"{uri}/part-00002-in-flight.parquet", 2, 0)  # just moved in by a writer about to commit
    _orphan(f"{uri}/_staging/feedbeef/part-0.parquet", 2, 0)  # a running Spark job's staging folder
    report = sweep(uri)
    assert "part-00002-in-flight.parquet" not in report.orphans
    assert report.staging == ["_staging/0123abcd"]
    assert os.path.exists(f"{uri}/part-00002-in-flight.parquet")
    assert os.path.exists(f"{uri}/_staging/feedbeef/part-0.parquet")


def test_sweep_keeps_the_files_of_older_versions(tmp_path):
    uri = str(tmp_path / "t")
    write_deltalake(uri, pa.table({"x": [1, 2, 3]}))
    write_deltalake(uri, pa.table({"x": [4]}), mode="overwrite")
    for name in os.listdir(uri):
        if name.endswith(".parquet"):
            os.utime(f"{uri}/{name}", (time.time() - HOUR, time.time() - HOUR))
    assert sweep(uri, min_age_s=0).orphans == []  # version 0's file is removed, not an orphan
    assert read_arrow(uri, version=0).num_rows == 3


def test_vacuum_table_dry_run_lists_without_deleting(tmp_path):
    uri = _crashed_table(tmp_path)
    report = vacuum_table(uri, dry_run=True)
    assert len(report.orphans) == 2 and report.staging == ["_staging/0123abcd"]
    assert _plain_rows(uri) == 23
    report = vacuum_table(uri, keep_versions=[0])
    assert _plain_rows(uri) == 5 and "2 orphan file(s), 1 staging folder(s)" in report.line()


def test_a_write_sweeps_its_table_after_a_crash(spark, tmp_path):
    from recaug_spark.delta import Warehouse

    wh = Warehouse(spark, str(tmp_path / "wh"))
    wh.write("augmented_sequences", spark.createDataFrame([(i,) for i in range(5)], "x long"))
    uri = str(tmp_path / "wh" / "augmented_sequences")
    _orphan(f"{uri}/part-00009-crashed.parquet", 7, HOUR)
    _orphan(f"{uri}/_staging/0123abcd/part-0.parquet", 3, HOUR)
    os.utime(f"{uri}/_staging/0123abcd", (time.time() - HOUR, time.time() - HOUR))
    wh.write("augmented_sequences", spark.createDataFrame([(9,)], "x long"), mode="append")
    assert not os.path.exists(f"{uri}/part-00009-crashed.parquet")
    assert not os.path.exists(f"{uri}/_staging")
    assert _plain_rows(uri) == 6 == wh.read("augmented_sequences").count()
