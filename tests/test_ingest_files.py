"""Ingest of real-world text files through Spark: what used to crash, change data silently or
refuse good data (issue 24), on tiny files written here. The parser's own cases are in
tests/test_ingest_parsing.py (no Spark)."""

from __future__ import annotations

import gzip
import sys
import textwrap
from pathlib import Path

import pytest
from _process import run_in_own_group

from recaug_spark.config import IngestConfig, validate
from recaug_spark.runs import RunContext
from recaug_spark.sources import SourceError, read_sources
from recaug_spark.stages.ingest import check_events, run_ingest

NOW_ISO = "2024-06-01T00:00:00+00:00"
RETAIL_HEADER = "Country,InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Extra,\n"


def _now():
    import datetime as dt

    return dt.datetime.fromisoformat(NOW_ISO)


def test_online_retail_file_every_record_accepted_or_quarantined_with_its_position(spark, tmp_path):
    folder = tmp_path / "retail"
    folder.mkdir()
    rows = [
        b"United Kingdom,536365,85123A,HEART,6,12/1/2010 8:26,2.55,17850.0,x,\n",  # UCI date spelling
        b'France,536366,22139,"MUG, ""BLUE""\nLARGE",2,2010-12-01 09:00:00,1.5,17851.0,x,\n',  # RFC 4180
        b"France,536367,22140,CUP,,2010-12-01 09:00:00,1.5,17852.0,x,\n",  # empty quantity
        b"France,536368,22141,CUP,1,2010-12-01 09:00:00,1.5,\xef\xbc\x91\xef\xbc\x92,x,\n",  # fullwidth id
        b"France,536369,22142,CUP\xff,1,2010-12-01 09:00:00,1.5,17853.0,x,\n",  # invalid UTF-8
        b"France,536370,22143,CUP,1,2010-12-01 09:00:00,1.5,99999999999999999999.0,x,\n",  # > int64
    ]
    (folder / "retail.csv").write_bytes(RETAIL_HEADER.encode() + b"".join(rows))
    cfg = IngestConfig(format="online-retail", events=str(folder))
    sources = read_sources(spark, cfg)
    got = {r["order_id"]: r for r in check_events(sources.events, cfg, now=_now()).collect()}
    assert {k: r["reason"] for k, r in got.items()} == {
        "536365": None, "536366": None, "536367": "missing_quantity", "536368": "bad_id",
        "536369": "encoding", "536370": "overflow"}
    assert got["536365"]["ts"].isoformat() == "2010-12-01T08:26:00"
    offsets = [len(RETAIL_HEADER)]
    for row in rows[:-1]:
        offsets.append(offsets[-1] + len(row))
    positions = {k: (r["row_number"], r["byte_offset"]) for k, r in got.items() if r["reason"]}
    assert positions == {"536367": (4, offsets[2]), "536368": (5, offsets[3]), "536369": (6, offsets[4]),
                         "536370": (7, offsets[5])}
    assert got["536369"]["raw"] == rows[4][:-1].decode("utf-8", "backslashreplace")  # never U+FFFD
    (mug,) = [r for r in sources.items.collect() if r["item_id"] == "22139"]
    assert mug["title"] == 'MUG, "BLUE"\nLARGE'


def test_5core_huge_line_strict_ids_and_json_duplicate_keys(spark, tmp_path):
    big = "7 " + " ".join(str(i) for i in range(1, 100_001))
    path = tmp_path / "5core" / "lines.txt"
    path.parent.mkdir()
    path.write_text(big + "\n8 -4 0x1F 5\n9,1\n")
    cfg = IngestConfig(format="amazon-5core", events=str(path.parent))
    checked = check_events(read_sources(spark, cfg).events, cfg, now=_now())
    counts = {r["reason"]: r["count"] for r in checked.groupBy("reason").count().collect()}
    assert counts == {None: 100_001, "bad_id": 2, "unparsable_line": 1}

    json_path = tmp_path / "json" / "e.json"
    json_path.parent.mkdir()
    json_path.write_text('{"user_id": "u1", "item_id": "i1", "ts": "2024-01-05T10:00:00Z"}\n'
                         '{"user_id": "u2", "user_id": "u3", "item_id": "i1", "ts": "2024-01-05T10:00:00Z"}\n'
                         '{"user_id": {"id": 1}, "item_id": "i1", "ts": "2024-01-05T10:00:00Z"}\n'
                         '{"user_id": "u4", "item_id": "i1", "ts": "2024-01-05T10:00:00Z", "price": "3"}\n')
    cfg = IngestConfig(format="json", events=str(json_path))
    reasons = sorted((r["row_number"] or 0, r["reason"] or "")
                     for r in check_events(read_sources(spark, cfg).events, cfg, now=_now()).collect())
    assert reasons == [(0, ""), (2, "duplicate_key"), (3, "wrong_type"), (4, "wrong_type")]


def test_a_corrupt_file_is_one_source_error_and_nothing_is_committed(spark, tmp_path, monkeypatch):
    monkeypatch.setenv("RECAUG_PSEUDONYM_KEY", "test-key-0123456789-abcdefghijklmnop")
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "a.csv").write_text("user_id,item_id,ts\nu1,i1,2024-01-05\n")
    (folder / "b.csv.gz").write_bytes(gzip.compress(b"user_id,item_id,ts\nu2,i2,2024-01-05\n" * 50)[:-10])
    cfg = validate({"run": {"warehouse": str(tmp_path / "wh")}, "ingest": {"format": "csv", "events": str(folder)}})
    ctx = RunContext.create(spark, cfg, run_id="corrupt")
    with pytest.raises(SourceError, match=r"b\.csv\.gz: the compressed data is truncated or corrupt"):
        run_ingest(ctx)
    assert not any(ctx.warehouse.exists(t) for t in ("events_raw", "items_raw", "quarantine"))


def test_a_stopped_session_is_replaced(tmp_path):
    script = textwrap.dedent("""
        from recaug_spark.config import SparkConfig
        from recaug_spark.session import get_session
        cfg = SparkConfig(master="local[1]", shuffle_partitions=1, driver_memory="1g")
        first = get_session(cfg)
        first.sparkContext._jsc.sc().stop()  # what a fatal error in a job leaves behind
        second = get_session(cfg)
        print("rows", second.range(3).count(), second is not first)
        second.stop()
    """)
    done = run_in_own_group([sys.executable, "-c", script], timeout_s=300, cwd=str(Path(__file__).parent.parent))
    assert "rows 3 True" in done.stdout, done.stderr[-2000:]
