"""Delta I/O through the deltalake backend: modes, partition overwrite, idempotence, atomicity,
time travel, statistics, and identical reads with Spark, deltalake and Polars."""

from __future__ import annotations

import datetime as dt
import json
import os

import deltalake
import polars as pl
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recaug_spark.delta import (
    DeltaError,
    TableExistsError,
    TableNotFoundError,
    Warehouse,
    native_delta_available,
    read_table,
    write_table,
)
from recaug_spark.delta.arrow_reader import read_arrow

SCHEMA = T.StructType([
    T.StructField("user_id", T.StringType()),
    T.StructField("n", T.LongType()),
    T.StructField("price", T.DoubleType()),
    T.StructField("ts", T.TimestampType()),
    T.StructField("items", T.ArrayType(T.StringType())),
    T.StructField("dt", T.DateType()),
])


def rows(day: int, count: int, start: int = 0):
    base = dt.datetime(2024, 1, day, 12, 0, 0)
    return [
        (f"u{i}", i, float(i) / 4, base + dt.timedelta(seconds=i), [f"i{i}", f"i{i + 1}"], dt.date(2024, 1, day))
        for i in range(start, start + count)
    ]


@pytest.fixture()
def wh(spark, tmp_path):
    return Warehouse(spark, str(tmp_path / "wh"))


def frame(spark, data):
    return spark.createDataFrame(data, SCHEMA)


def sorted_rows(df):
    return sorted(tuple(r) for r in df.collect())


def test_backend_is_chosen_automatically_here(spark, wh):
    assert native_delta_available(spark) is False  # no Delta jar on this machine
    assert wh.backend == "deltalake"
    with pytest.raises(DeltaError, match="io.delta.tables.DeltaTable"):
        Warehouse(spark, wh.root, backend="native")


def test_round_trip_reads_identically_with_spark_deltalake_and_polars(spark, wh):
    data = rows(1, 20) + rows(2, 15)
    result = wh.write("t", frame(spark, data), partition_by=["dt"])
    assert (result.version, result.rows, result.skipped) == (0, 35, False)
    spark_rows = sorted_rows(wh.read("t"))
    assert spark_rows == sorted(data)
    arrow = read_arrow(wh.uri("t"))
    delta_rows = sorted(
        (r["user_id"], r["n"], r["price"], r["ts"].replace(tzinfo=None), r["items"], r["dt"])
        for r in arrow.to_pylist()
    )
    assert delta_rows == spark_rows_as_lists(spark_rows)
    polars_rows = sorted(
        (r["user_id"], r["n"], r["price"], r["ts"].replace(tzinfo=None), r["items"], r["dt"])
        for r in pl.read_delta(wh.uri("t")).to_dicts()
    )
    assert polars_rows == delta_rows
    assert wh.read("t").schema == T.StructType([f for f in SCHEMA])  # same names, types, order


def spark_rows_as_lists(spark_rows):
    return [(u, n, p, ts, list(items), d) for u, n, p, ts, items, d in spark_rows]


def test_mode_error_refuses_an_existing_table(spark, wh):
    wh.write("t", frame(spark, rows(1, 3)))
    with pytest.raises(TableExistsError, match="already exists"):
        wh.write("t", frame(spark, rows(1, 3)))
    assert wh.read("t").count() == 3


def test_append_and_overwrite_make_new_versions_and_time_travel_reads_old_ones(spark, wh):
    wh.write("t", frame(spark, rows(1, 3)), partition_by=["dt"])
    appended = wh.write("t", frame(spark, rows(2, 4)), mode="append", partition_by=["dt"])
    assert appended.version == 1 and wh.read("t").count() == 7
    overwritten = wh.write("t", frame(spark, rows(3, 2)), mode="overwrite", partition_by=["dt"])
    assert overwritten.version == 2
    assert sorted_rows(wh.read("t")) == sorted(rows(3, 2))
    assert wh.read("t", version=0).count() == 3
    assert wh.read("t", version=1).count() == 7


def test_partition_overwrite_replaces_only_the_named_partitions(spark, wh):
    wh.write("t", frame(spark, rows(1, 5) + rows(2, 5)), partition_by=["dt"])
    replacement = rows(2, 2, start=100)
    wh.write("t", frame(spark, replacement), mode="overwrite", partition_by=["dt"],
             replace_partitions={"dt": [dt.date(2024, 1, 2)]})
    assert sorted_rows(wh.read("t")) == sorted(rows(1, 5) + replacement)


def test_filters_prune_files_by_partition_and_by_statistics(spark, wh):
    wh.write("t", frame(spark, rows(1, 5) + rows(2, 6)), partition_by=["dt"])
    pruned = wh.read("t", filters=[("dt", "=", "2024-01-02")])
    assert pruned.count() == 6
    assert all("dt=2024-01-02" in f for f in pruned.inputFiles())
    by_stats = wh.read("t", filters="n >= 5")  # only day 2 has n = 5 in its file's min/max range
    assert sorted(r.n for r in by_stats.collect()) == [5]
    assert all("dt=2024-01-02" in f for f in by_stats.inputFiles())


def test_same_txn_commits_once(spark, wh):
    first = wh.write("t", frame(spark, rows(1, 4)), mode="append", txn=("run-a/ingest", 0))
    again = wh.write("t", frame(spark, rows(1, 4)), mode="append", txn=("run-a/ingest", 0))
    other = wh.write("t", frame(spark, rows(1, 4)), mode="append", txn=("run-b/ingest", 0))
    assert (first.skipped, again.skipped, other.skipped) == (False, True, False)
    assert again.version == first.version
    assert wh.read("t").count() == 8


def test_failed_write_leaves_nothing_visible(spark, wh):
    wh.write("t", frame(spark, rows(1, 4)), partition_by=["dt"])
    before = set(_all_files(wh.uri("t")))

    @F.udf("long")
    def explode_on_seven(n):
        if n == 7:
            raise ValueError("boom")
        return n

    bad = frame(spark, rows(1, 10)).withColumn("n", explode_on_seven("n"))
    with pytest.raises(Exception, match="boom"):
        wh.write("t", bad, mode="append", partition_by=["dt"])
    assert wh.version("t") == 0
    assert wh.read("t").count() == 4
    assert set(_all_files(wh.uri("t"))) == before  # no orphan data files, no staging left


def test_failed_first_write_creates_no_table(spark, wh):
    @F.udf("long")
    def always_fails(n):
        raise ValueError("boom")

    with pytest.raises(Exception, match="boom"):
        wh.write("t", frame(spark, rows(1, 3)).withColumn("n", always_fails("n")))
    assert not wh.exists("t")
    with pytest.raises(TableNotFoundError):
        wh.read("t")


def test_append_with_another_schema_is_refused(spark, wh):
    wh.write("t", frame(spark, rows(1, 3)))
    with pytest.raises(DeltaError, match="schema"):
        wh.write("t", frame(spark, rows(1, 3)).drop("price"), mode="append")


def test_append_with_new_nullable_columns_adds_them_and_old_rows_read_null(spark, wh):
    # a newer recaug appending rows with more columns (e.g. quarantine's row_number) to an older table
    wh.write("t", frame(spark, rows(1, 2)))
    wider = frame(spark, rows(2, 2, start=2)).withColumn("row_number", F.col("n"))
    wh.write("t", wider, mode="append")
    got = sorted((r["n"], r["row_number"]) for r in read_arrow(wh.uri("t")).to_pylist())
    assert got == [(0, None), (1, None), (2, 2), (3, 3)]
    assert sorted(r["n"] for r in wh.read("t").where("row_number is null").collect()) == [0, 1]  # Spark too
    moved = frame(spark, rows(3, 1, start=4)).withColumn("row_number", F.col("n")).withColumn("extra", F.col("n"))
    with pytest.raises(DeltaError, match="schema"):  # an existing column moved behind a new one: refused
        wh.write("t", moved.select("extra", *wider.columns), mode="append")


def test_per_file_statistics_are_recorded(spark, wh):
    wh.write("t", frame(spark, rows(1, 10)).coalesce(1), partition_by=["dt"])
    log = os.path.join(wh.uri("t"), "_delta_log", "00000000000000000000.json")
    adds = [json.loads(line)["add"] for line in open(log) if '"add"' in line]
    assert len(adds) == 1
    stats = json.loads(adds[0]["stats"])
    assert stats["numRecords"] == 10
    assert stats["minValues"]["n"] == 0 and stats["maxValues"]["n"] == 9
    assert stats["minValues"]["ts"] == "2024-01-01T12:00:00.000Z"
    assert stats["nullCount"]["user_id"] == 0
    assert adds[0]["partitionValues"] == {"dt": "2024-01-01"}


def test_empty_frame_writes_an_empty_table(spark, wh):
    result = wh.write("t", frame(spark, []))
    assert result.rows == 0
    assert wh.read("t").count() == 0 and wh.read("t").schema.fieldNames() == SCHEMA.fieldNames()


def test_tables_by_uri_and_bad_arguments(spark, tmp_path):
    uri = str(tmp_path / "by-uri")
    write_table(frame(spark, rows(1, 2)), uri)
    assert read_table(spark, uri).count() == 2
    with pytest.raises(DeltaError, match="bare name"):
        read_table(spark, "events")
    with pytest.raises(DeltaError, match="mode"):
        write_table(frame(spark, rows(1, 2)), uri, mode="upsert")  # type: ignore[arg-type]
    with pytest.raises(DeltaError, match="partition column"):
        write_table(frame(spark, rows(1, 2)), uri, mode="overwrite", partition_by=["nope"])


def _all_files(root):
    return [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs]


def test_replace_rows_by_key_rewrites_only_the_files_holding_those_keys(spark, tmp_path):
    from recaug_spark.delta import replace_rows_by_key

    uri = str(tmp_path / "by key")
    schema = "user_id string, chain string, n long"
    old = [(f"u {i}", chain, i) for i in range(6) for chain in ("crop>mask", "real")]
    for pair in range(3):  # one file per (chain, user pair): u 0/u 1 share files, u 2/u 3 too, u 4/u 5 too
        df = spark.createDataFrame(old[4 * pair: 4 * pair + 4], schema).coalesce(1)
        write_table(df, uri, partition_by=["chain"], mode="append")
    before = {a["path"] for a in paths(uri)}
    new_rows = spark.createDataFrame([("u 1", "crop>mask", 100), ("u 1", "real", 101), ("u 9", "real", 109)], schema)
    keys = spark.createDataFrame([("u 1",), ("u 3",), ("u 9",)], "user_id string")  # u 3 is deleted
    result = replace_rows_by_key(new_rows, uri, key="user_id", keys=keys, txn=("t", 1))
    after = sorted((r["user_id"], r["chain"], r["n"]) for r in read_arrow(uri).to_pylist())
    expected = sorted([r for r in old if r[0] not in ("u 1", "u 3")]
                      + [("u 1", "crop>mask", 100), ("u 1", "real", 101), ("u 9", "real", 109)])
    assert after == expected
    still_there = before & {a["path"] for a in paths(uri)}
    assert len(still_there) == 2  # the files of u 4/u 5 (one per chain) were not touched
    assert result.version == 3  # one commit
    again = replace_rows_by_key(new_rows, uri, key="user_id", keys=keys, txn=("t", 1))
    assert again.skipped and deltalake.DeltaTable(uri).version() == 3


def paths(uri):
    import pyarrow as pa

    return pa.table(deltalake.DeltaTable(uri).get_add_actions(flatten=True)).to_pylist()
