"""Issue 24 audit: the defect classes that tests/test_ingest_parsing.py, test_ingest_files.py and
test_ingest_reconcile.py left without a test of their own, each on a tiny input written here with a
known answer — all-NUL records, records wider than Spark's CSV column limit on the fast path,
Parquet files that are corrupt, hold invalid UTF-8 or integer epoch times, every bad id token
through the Spark check, DIGINETICA's string session ids and declared dates, invalid UTF-8 in JSON
through pseudonymization, one example line per quarantine reason, a refused file's exit code, and
a session whose JVM died.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import sys
import textwrap
from pathlib import Path

import pytest
from _process import run_in_own_group

from recaug_spark.config import IngestConfig
from recaug_spark.parsing import integer_id_reason
from recaug_spark.sources import SourceError, diginetica_rows, read_sources, timestamp_formats
from recaug_spark.stages.ingest import (
    EVENT_REASONS,
    check_events,
    integer_id_check,
    known_item_ids,
    pseudonym,
    pseudonymize_checked,
)
from recaug_spark.text_reader import TextSpec, stream_batches, stream_rows

NOW = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
KEY = b"test-key-0123456789-abcdefghijklmnop"
ROOT = Path(__file__).parent.parent


def _stream(data: bytes):
    return io.BufferedReader(io.BytesIO(data))


def _rows(data: bytes, spec: TextSpec) -> list[tuple]:
    return list(stream_rows(_stream(data), "f.txt", spec))


def _batch_rows(data: bytes, spec: TextSpec) -> list[dict]:
    return [row for batch in stream_batches(_stream(data), "f.txt", spec) for row in batch.to_pylist()]


# --------------------------------------------------------------------------------------------
# Spark-free: the text reader
# --------------------------------------------------------------------------------------------

def test_a_record_of_only_nul_bytes_is_one_encoding_row_in_every_text_format():
    # The old reader dropped such a record from both counts; 20 good rows first keep the file
    # from looking binary (a file that starts with mostly NULs is refused whole instead).
    csv = TextSpec(kind="csv", columns=("user_id", "item_id"))
    data = b"user_id,item_id\n" + b"1,2\n" * 20 + b"\x00\x00\x00\n\x00,7\n3,4\n"
    for rows in (_batch_rows(data, csv), _batch_rows(data, TextSpec(kind="csv", columns=csv.columns,
                                                                    fast_csv=False))):
        assert [(r["_row"], r["_raw"], r["_reason"]) for r in rows[-3:]] == [
            (22, "\\x00\\x00\\x00", "encoding"), (23, "\\x00,7", "encoding"), (24, "3,4", None)]
    json = TextSpec(kind="json", columns=("user_id",), kinds=("id",))
    assert _rows(b'{"user_id": 1}\n' * 5 + b"\x00\x00\n", json)[-1][1:] == ("f.txt", "\\x00\\x00", "encoding", 6, 75)
    assert _rows(b"1 2 3\n" * 5 + b"\x00\x00\n", TextSpec(kind="lines"))[-1] == (
        None, "f.txt", "\\x00\\x00", "encoding", 6, 30)


def test_a_record_wider_than_sparks_csv_column_limit_costs_only_itself_on_the_fast_path():
    # Spark's CSV parser stopped at 20,480 columns and failed the whole file.
    spec = TextSpec(kind="csv", columns=("user_id", "item_id"))
    wide = b",".join(b"%d" % i for i in range(30_000))
    rows = _batch_rows(b"user_id,item_id\n1,2\n" + wide + b"\n3,4\n", spec)
    assert [(r["user_id"], r["_row"], r["_reason"]) for r in rows] == [
        ("1", 2, None), ("0", 3, "unparsable_line"), ("3", 4, None)]
    assert rows[1]["_raw"] == wide.decode()  # kept verbatim
    header = b"user_id," + b",".join(b"c%d" % i for i in range(30_000)) + b",item_id\n"
    (row,) = _batch_rows(header + b"u," + b"x," * 30_000 + b"i\n", spec)  # 30,002 columns: read
    assert (row["user_id"], row["item_id"], row["_reason"]) == ("u", "i", None)


# --------------------------------------------------------------------------------------------
# Spark: Parquet
# --------------------------------------------------------------------------------------------

def _write_parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def test_corrupt_and_foreign_parquet_files_are_one_source_error_naming_the_file(spark, tmp_path):
    good = _write_parquet(tmp_path / "t" / "good.parquet", {"user_id": ["u1"], "item_id": ["i1"], "ts": ["2024"]})
    data = good.read_bytes()
    (tmp_path / "t" / "cut.parquet").write_bytes(data[: len(data) // 2])  # truncated
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "notes.parquet").write_text("user_id,item_id\nu1,i1\n")  # not Parquet at all
    for folder, name in (("t", "cut.parquet"), ("n", "notes.parquet")):
        with pytest.raises(SourceError, match=rf"{name}: not a readable Parquet file .*nothing was written"):
            read_sources(spark, IngestConfig(format="parquet", events=str(tmp_path / folder)))


def test_invalid_utf8_in_a_parquet_string_is_quarantined_as_encoding_never_written(spark, tmp_path, monkeypatch):
    import pyarrow as pa

    from recaug_spark.config import validate
    from recaug_spark.runs import RunContext
    from recaug_spark.stages.ingest import run_ingest

    bad = pa.array([b"France", b"Fran\xe7e", b"Spain"], pa.binary()).view(pa.string())  # Latin-1 bytes, unchecked
    path = _write_parquet(tmp_path / "p" / "e.parquet", {
        "user_id": ["u1", "u2", "\x00"], "item_id": ["i1", "i2", "i3"], "ts": ["2024-01-05T10:00:00Z"] * 3,
        "country": bad})
    monkeypatch.setenv("RECAUG_PSEUDONYM_KEY", KEY.decode())
    cfg = validate({"run": {"warehouse": str(tmp_path / "wh")},
                    "ingest": {"format": "parquet", "events": str(path.parent)}})
    ctx = RunContext.create(spark, cfg, run_id="utf8")
    result = run_ingest(ctx)
    assert (result.counts["events_accepted"], result.counts["events.quarantine.encoding"]) == (1, 2)
    row, nul = ctx.warehouse.read("quarantine").orderBy("row_number").collect()
    assert (row["reason"], row["source"], row["row_number"]) == ("encoding", "e.parquet", 2)
    assert (nul["reason"], nul["row_number"]) == ("encoding", 3)  # a NUL as a user id: refused as in text files
    assert '"country":"0x4672616EE765"' in row["raw"] and "u2" not in row["raw"]  # hex, and the id pseudonymized
    assert [r["country"] for r in ctx.warehouse.read("events_raw").collect()] == ["France"]  # reads back


def test_integer_epoch_times_in_parquet_are_refused_naming_the_setting_or_read_in_the_declared_unit(spark, tmp_path):
    seconds = 1_704_448_800  # 2024-01-05T10:00:00Z
    folder = _write_parquet(tmp_path / "p" / "e.parquet", {
        "user_id": ["u1"], "item_id": ["i1"], "ts": [seconds]}).parent
    with pytest.raises(SourceError, match="holds integers .*ingest.timestamp_format: epoch_seconds"):
        read_sources(spark, IngestConfig(format="parquet", events=str(folder)))
    millis = _write_parquet(tmp_path / "m" / "e.parquet", {
        "user_id": ["u1"], "item_id": ["i1"], "ts": [seconds * 1000]}).parent
    for path, unit in ((folder, "epoch_seconds"), (millis, "epoch_millis")):
        cfg = IngestConfig(format="parquet", events=str(path), timestamp_format=unit)
        (row,) = check_events(read_sources(spark, cfg).events, cfg, now=NOW).collect()
        assert (row["reason"], row["ts"].isoformat()) == (None, "2024-01-05T10:00:00")


# --------------------------------------------------------------------------------------------
# Spark: ids, DIGINETICA, JSON through pseudonymization
# --------------------------------------------------------------------------------------------

ID_TOKENS = ["12", "007", " 42 ", "１２", "٣", "-4", "+4", "0x1F", "3.5", "NaN", "1e3", "null", "",
             str(2**63), str(2**63 - 1), "0" * 30 + "1", "9" * 40]


def test_the_spark_id_check_agrees_with_the_pure_one_on_every_kind_of_bad_token(spark):
    from pyspark.sql import functions as F

    df = spark.createDataFrame([(i, t) for i, t in enumerate(ID_TOKENS)], "i int, token string")
    checked = df.select("i", integer_id_check(F.trim("token")).alias("reason")).orderBy("i")
    got = [r["reason"] for r in checked.collect()]
    expected = [integer_id_reason(t) for t in ID_TOKENS]
    assert got == expected
    assert expected == [None, None, None, "bad_id", "bad_id", "bad_id", "bad_id", "bad_id", "bad_id", "bad_id",
                        "bad_id", "bad_id", "bad_id", "overflow", None, None, "overflow"]


def test_diginetica_string_session_ids_are_bad_id_and_a_declared_date_format_is_honoured(spark):
    from pyspark.sql import functions as F

    rows = [("1", "NA", "100", "1000", "09.05.2016"), ("abc", "NA", "101", "0", "09.05.2016"),
            ("2", "7", "102", "0", "2016-05-09"), ("3", "x7", "103", "0", "2016-05-09")]
    df = spark.createDataFrame(rows, "session_id string, user_id string, item_id string, timeframe string, "
                                     "eventdate string")
    df = df.select("*", F.lit("v.csv").alias("_source"), F.lit("x").alias("_raw"), F.lit(False).alias("_unparsable"))
    cfg = IngestConfig(format="diginetica", events="v.csv", timestamp_format="dd.MM.yyyy")
    checked = check_events(diginetica_rows(df, timestamp_formats(cfg)).events, cfg, now=NOW)
    got = {r["item_id"]: (r["reason"], r["ts"] and r["ts"].isoformat()) for r in checked.collect()}
    assert got == {"100": (None, "2016-05-09T00:00:01"), "101": ("bad_id", "2016-05-09T00:00:00"),
                   "102": (None, "2016-05-09T00:00:00"), "103": ("bad_id", "2016-05-09T00:00:00")}


def test_json_with_invalid_utf8_is_quarantined_without_a_crash_and_raw_ids_never_leave(spark, tmp_path):
    lines = [b'{"user_id": "alice", "item_id": "i1", "ts": "2024-01-05T10:00:00Z"}',
             b'{"user_id": "b\xffob", "item_id": "i1", "ts": "2024-01-05T10:00:00Z"}',  # crashed the UDF
             b'{"user_id": "carol",  "item_id": ["i1"], "ts": "2024-01-05T10:00:00Z"}',  # two spaces: verbatim
             b'{"user_id": "dave", "user_id": "erin", "item_id": "i1", "ts": "2024-01-05T10:00:00Z"}']
    path = tmp_path / "j" / "e.json"
    path.parent.mkdir()
    path.write_bytes(b"\n".join(lines) + b"\n")
    cfg = IngestConfig(format="json", events=str(path.parent))
    checked = pseudonymize_checked(check_events(read_sources(spark, cfg).events, cfg, now=NOW), KEY)
    got = sorted(((r["row_number"] or 0), r["reason"], r["user_id"], r["raw"]) for r in checked.collect())
    assert [(row, reason) for row, reason, _, _ in got] == [
        (0, None), (2, "encoding"), (3, "wrong_type"), (4, "duplicate_key")]
    assert got[0][2] == pseudonym("alice", KEY)
    assert got[1][3].startswith("<redacted: unreadable record of ")  # its id cannot be located: not shown
    assert got[2][3] == lines[2].decode().replace("carol", pseudonym("carol", KEY))  # the line as written
    assert all(name not in str(got) for name in ("alice", "bob", "carol", "dave", "erin"))


def test_an_unparsable_csv_record_whose_user_is_located_keeps_its_text_with_the_pseudonym(spark, tmp_path):
    # The old ingest redacted every unparsable line to its length; now only a record whose ids
    # cannot be located is (here the broken quote), a short or long record keeps its text.
    path = tmp_path / "c" / "e.csv"
    path.parent.mkdir()
    path.write_text('user_id,item_id,ts\nalice,i1,2024-01-05T10:00:00Z,extra\nbob,i2\n"carol,i3,2024-01-05\n')
    cfg = IngestConfig(format="csv", events=str(path.parent))
    checked = pseudonymize_checked(check_events(read_sources(spark, cfg).events, cfg, now=NOW), KEY)
    got = sorted((r["row_number"], r["reason"], r["raw"]) for r in checked.collect())
    assert got == [(2, "unparsable_line", pseudonym("alice", KEY) + ",i1,2024-01-05T10:00:00Z,extra"),
                   (3, "unparsable_line", pseudonym("bob", KEY) + ",i2"),
                   (4, "unparsable_line", "<redacted: unreadable record of 20 characters; "
                                          "ingest.pseudonymize.redact_unparsable=false keeps it>")]


def test_a_json_key_that_first_appears_late_is_read_not_dropped(spark, tmp_path):
    # The columns came from the first 1,000 objects only: a price first seen later was dropped, so a
    # price of 0 was accepted as "no price", and a mapped key seen late was refused as missing.
    head = b'{"user_id": "u1", "item_id": "i1", "ts": "2024-01-05T10:00:00Z"}\n' * 1000
    tail = (b'{"user_id": "u2", "item_id": "i1", "ts": "2024-01-05T10:00:00Z", "price": 0, "sid": 5}\n'
            b'{"user_id": "u3", "item_id": "i1", "ts": "2024-01-05T10:00:00Z", "price": 2.5, "sid": 6}\n')
    path = tmp_path / "j" / "e.json"
    path.parent.mkdir()
    path.write_bytes(head + tail)
    cfg = IngestConfig(format="json", events=str(path.parent), events_columns={"session_id": "sid"})
    checked = check_events(read_sources(spark, cfg).events, cfg, now=NOW)
    got = {r["user_id"]: (r["reason"], r["price"], r["session_id"]) for r in checked.where("user_id != 'u1'").collect()}
    assert got == {"u2": ("nonpositive_price", 0.0, "5"), "u3": (None, 2.5, "6")}


# --------------------------------------------------------------------------------------------
# One example line per quarantine reason (the closing note's list)
# --------------------------------------------------------------------------------------------

GOOD_TS = "2024-01-05T10:00:00Z"
REASON_LINES = {  # generic CSV: user_id,item_id,ts,event_type,quantity,price
    "encoding": b"u\xff1,i1,2024-01-05T10:00:00Z,view,1,2.5",
    "unparsable_line": b"u2,i1",
    "missing_user": b",i1,2024-01-05T10:00:00Z,view,1,2.5",
    "missing_item": b"u3,,2024-01-05T10:00:00Z,view,1,2.5",
    "bad_timestamp": b"u4,i1,yesterday,view,1,2.5",
    "future_timestamp": b"u5,i1,2999-01-01T00:00:00Z,view,1,2.5",
    "wrong_type": b"u6,i1,2024-01-05T10:00:00Z,view,two,2.5",
    "negative_quantity": b"u7,i1,2024-01-05T10:00:00Z,view,-1,2.5",
    "nonpositive_price": b"u8,i1,2024-01-05T10:00:00Z,view,1,0",
    "unknown_event_type": b"u9,i1,2024-01-05T10:00:00Z,teleport,1,2.5",
    "unknown_item": b"u10,i999,2024-01-05T10:00:00Z,view,1,2.5",
    None: b"u11,i1,2024-01-05T10:00:00Z,view,1,2.5",
}
RETAIL_LINES = {  # online-retail: InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
    "bad_id": b"536365,85123A,HEART,6,12/1/2010 8:26,2.55,0x1F,France",
    "overflow": b"536366,85123A,HEART,6,12/1/2010 8:26,2.55,9223372036854775808,France",
    "missing_quantity": b"536367,85123A,HEART,,12/1/2010 8:26,2.55,17850.0,France",
    "missing_price": b"536368,85123A,HEART,6,12/1/2010 8:26,,17850.0,France",
}
JSON_LINES = {"duplicate_key": b'{"user_id": "u1", "user_id": "u2", "item_id": "i1", "ts": "2024-01-05T10:00:00Z"}'}


def _reasons(spark, folder: Path, header: bytes, lines: dict, **ingest) -> dict:
    folder.mkdir()
    (folder / "f").write_bytes(header + b"\n".join(lines.values()) + b"\n")
    cfg = IngestConfig(events=str(folder), **ingest)
    sources = read_sources(spark, cfg)
    known = known_item_ids(sources.items) if cfg.items else None
    checked = check_events(sources.events, cfg, now=NOW, known_items=known)
    first_row = 2 if header else 1
    by_row = {r["row_number"]: r["reason"] for r in checked.collect()}
    return {reason: by_row.get(first_row + i) for i, reason in enumerate(lines)}


def test_every_event_reason_code_has_an_example_line_that_gets_it(spark, tmp_path):
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("item_id\ni1\n")
    got = _reasons(spark, tmp_path / "csv", b"user_id,item_id,ts,event_type,quantity,price\n", REASON_LINES,
                   format="csv", items=str(catalog))
    got |= _reasons(spark, tmp_path / "retail", b"InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,"
                    b"CustomerID,Country\n", RETAIL_LINES, format="online-retail")
    got |= _reasons(spark, tmp_path / "json", b"", JSON_LINES, format="json")
    assert got == {reason: reason for reason in got} | {None: None}  # the accepted line has no row_number
    assert set(got) - {None} == set(EVENT_REASONS)


# --------------------------------------------------------------------------------------------
# Processes: the CLI's exit code on a refused file; a session whose JVM died
# --------------------------------------------------------------------------------------------

def _python(script: str, tmp_path: Path, **env) -> str:
    done = run_in_own_group([sys.executable, "-c", textwrap.dedent(script)], timeout_s=400, cwd=str(ROOT),
                            env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_refused_file_exits_2_with_one_message_and_a_dead_jvm_gets_a_new_session(tmp_path):
    import gzip

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "b.csv.gz").write_bytes(gzip.compress(b"user_id,item_id,ts\nu2,i2,2024-01-05\n" * 50)[:-10])
    out = _python(f"""
        import os, signal, time
        from click.testing import CliRunner
        from recaug_spark.cli import main
        from recaug_spark.config import SparkConfig
        from recaug_spark.session import get_session
        result = CliRunner().invoke(main, ["ingest", "--input-format", "csv", "--input",
                                             {str(folder)!r}, "--warehouse", {str(tmp_path / "wh")!r}])
        print("exit", result.exit_code, "|", result.stderr.strip().splitlines()[-1])
        cfg = SparkConfig(master="local[1]", shuffle_partitions=1, driver_memory="1g")
        first = get_session(cfg)
        jvm = first.sparkContext._gateway.proc.pid
        os.kill(jvm, signal.SIGKILL)  # what a StackOverflowError that killed the JVM leaves behind
        first.sparkContext._gateway.proc.wait()
        second = get_session(cfg)
        print("rows", second.range(3).count(), second.sparkContext._gateway.proc.pid != jvm)
        second.stop()
    """, tmp_path, RECAUG_PSEUDONYM_KEY=KEY.decode())
    assert "exit 2 | error: SourceError: b.csv.gz: the compressed data is truncated or corrupt" in out, out
    assert "rows 3 True" in out, out
    assert not (tmp_path / "wh" / "events_raw").exists()


def test_the_summary_states_the_units_of_ingest_and_what_the_sequence_cap_left_out():
    from types import SimpleNamespace

    from recaug_spark.pipeline import summary
    from recaug_spark.runs import StageResult

    warehouse = SimpleNamespace(root="wh", backend="test", uri=lambda name: f"wh/{name}")
    ctx = SimpleNamespace(run_id="r", cfg=SimpleNamespace(hash="h", clean=SimpleNamespace(max_sequence_length=200)),
                          warehouse=warehouse)
    ingest = StageResult("ingest", 13, 11, 2, counts={
        "lines_in": 4, "lines_accepted": 3, "lines_quarantined": 1, "lines.quarantine.unparsable_line": 1,
        "quarantine.unparsable_line": 1, "events_in": 8, "events_accepted": 8, "events_quarantined": 0,
        "items_in": 3, "items_accepted": 3, "items_quarantined": 0})
    clean = StageResult("clean", 8, 8, counts={"users_capped": 2, "events_beyond_cap": 35})
    text = summary(ctx, [ingest, clean])
    assert "  lines: 4 in = 3 accepted + 1 quarantined\n  events of read lines: 8 in = 8 accepted" in text
    assert ("2 users have more events than clean.max_sequence_length (200): their 35 oldest stay in `events` but "
            "not in their sequences (held-out targets are the last events either way)") in text
