"""Ingest: adapters, validation reasons, pseudonymization, reconciliation (tiny hand-made inputs).

Each test builds a few rows with a known answer; Spark jobs are batched (one collect per case
table) to keep the suite fast on two cores.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recaug_spark.config import ConfigError, IngestConfig, validate
from recaug_spark.delta import Warehouse, WriteResult
from recaug_spark.runs import RunContext
from recaug_spark.schemas import EVENTS_RAW, ITEMS_RAW, QUARANTINE, RAW_EVENT_FIELDS, RAW_ITEM_FIELDS
from recaug_spark.sources import (
    ADAPTER_EVENT_COLUMNS,
    ADAPTER_ITEM_COLUMNS,
    SourceError,
    amazon_5core_rows,
    diginetica_rows,
    map_columns,
    read_csv,
    read_sources,
)
from recaug_spark.stages.ingest import (
    EVENT_REASONS,
    PseudonymKeyError,
    ReconciliationError,
    accepted_rows,
    check_events,
    check_items,
    check_session,
    known_item_ids,
    pseudonym,
    pseudonymize_checked,
    quarantine_rows,
    reconcile,
    resolve_pseudonym_key,
    run_ingest,
)

NOW = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
KEY = "test-key-0123456789-abcdefghijklmnop"  # what an operator would put in RECAUG_PSEUDONYM_KEY
OTHER_KEY = "another-key-9876543210-zyxwvutsrqpo"
ADAPTER_SCHEMA = T.StructType(
    [T.StructField(c, T.StringType()) for c in RAW_EVENT_FIELDS]
    + [T.StructField("_source", T.StringType()), T.StructField("_raw", T.StringType()),
       T.StructField("_unparsable", T.BooleanType())]
)
ITEM_ADAPTER_SCHEMA = T.StructType(
    [T.StructField(c, T.StringType()) for c in RAW_ITEM_FIELDS]
    + [T.StructField("_source", T.StringType()), T.StructField("_raw", T.StringType()),
       T.StructField("_unparsable", T.BooleanType())]
)


def adapter_rows(spark, rows: list[dict], fields, source: str, schema):
    """Adapter-shaped rows of ``fields`` from dicts of strings (missing fields are null)."""
    data = []
    for row in rows:
        given = {k: v for k, v in row.items() if not k.startswith("_")}
        data.append(tuple(row.get(c) for c in fields)
                    + (source, row.get("_raw", json.dumps(given)), bool(row.get("_unparsable", False))))
    return spark.createDataFrame(data, schema)


def raw_events(spark, rows: list[dict]):
    return adapter_rows(spark, rows, RAW_EVENT_FIELDS, "test.csv", ADAPTER_SCHEMA)


def raw_items(spark, rows: list[dict]):
    return adapter_rows(spark, rows, RAW_ITEM_FIELDS, "items.csv", ITEM_ADAPTER_SCHEMA)


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


GOOD = {"user_id": "u1", "item_id": "i1", "event_type": "purchase", "ts": "2024-01-05T13:22:10Z",
        "quantity": "2", "price": "9.5"}


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

def test_each_event_reason_and_the_first_failing_check_wins(spark):
    # Given one row per case, identified by order_id, with the reason it must get
    cases = {
        "ok": ({}, None),
        "ok_defaults": ({"user_id": " u2 ", "ts": "2024-01-05 13:22:10", "quantity": None, "price": None,
                         "event_type": None}, None),
        "ok_iso_date_and_float_quantity": ({"event_type": " VIEW ", "ts": "2024-01-05", "quantity": "3.0"}, None),
        "ok_near_future": ({"ts": "2024-06-01T00:30:00Z"}, None),
        "unparsable": ({"_unparsable": True}, "unparsable_line"),
        "blank_user": ({"user_id": "  "}, "missing_user"),
        "no_user_and_bad_ts": ({"user_id": None, "ts": "garbage"}, "missing_user"),
        "no_item": ({"item_id": ""}, "missing_item"),
        "bad_ts": ({"ts": "05/01/2024"}, "bad_timestamp"),
        "no_ts": ({"ts": None}, "bad_timestamp"),
        "too_old": ({"ts": "1999-12-31T23:59:59Z"}, "bad_timestamp"),
        "future": ({"ts": "2024-06-01T02:00:00Z"}, "future_timestamp"),
        "fractional_quantity": ({"quantity": "2.5"}, "wrong_type"),
        "text_quantity": ({"quantity": "two"}, "wrong_type"),
        "comma_price": ({"price": "1,50"}, "wrong_type"),
        "nan_price": ({"price": "NaN"}, "wrong_type"),
        "infinite_price": ({"price": "Infinity"}, "wrong_type"),
        "negative_quantity": ({"quantity": "-1"}, "negative_quantity"),
        "negative_quantity_and_text_price": ({"quantity": "-1", "price": "x"}, "wrong_type"),
        "zero_price": ({"price": "0"}, "nonpositive_price"),
        "negative_price": ({"price": "-3.5"}, "nonpositive_price"),
        "unknown_type": ({"event_type": "click"}, "unknown_event_type"),
        "unknown_item": ({"item_id": "i404"}, "unknown_item"),
    }
    rows = [{**GOOD, **overrides, "order_id": name} for name, (overrides, _) in cases.items()]
    cfg = IngestConfig(format="csv", min_timestamp="2000-01-01", max_future_seconds=3600)
    known = known_item_ids(raw_items(spark, [{"item_id": " i1 "}, {"item_id": "i2"}, {"item_id": None}]))

    # When checked
    checked = check_events(raw_events(spark, rows), cfg, now=NOW, known_items=known)
    got = {r["order_id"]: r for r in checked.select(
        "*", F.date_format("ts", "yyyy-MM-dd HH:mm:ss").alias("ts_text")).collect()}

    # Then each row gets exactly its reason, and accepted rows are typed and normalized
    assert {name: got[name]["reason"] for name in cases} == {name: reason for name, (_, reason) in cases.items()}
    # every reason is covered (those of reading and of integer-id formats in tests/test_ingest_files.py)
    format_reasons = {"encoding", "duplicate_key", "bad_id", "overflow", "missing_quantity", "missing_price"}
    assert {r for _, r in cases.values()} - {None} == set(EVENT_REASONS) - format_reasons
    ok = got["ok_defaults"]
    assert (ok["user_id"], ok["event_type"], ok["quantity"], ok["price"], ok["ts_text"], ok["dt"]) == (
        "u2", "purchase", 1, None, "2024-01-05 13:22:10", dt.date(2024, 1, 5))
    assert got["ok"]["price"] == 9.5 and got["ok"]["quantity"] == 2
    assert got["ok_iso_date_and_float_quantity"]["event_type"] == "view"
    assert got["ok_iso_date_and_float_quantity"]["quantity"] == 3
    assert got["ok"]["raw"] is None  # raw text is kept for rejected rows only
    assert json.loads(got["bad_ts"]["raw"])["ts"] == "05/01/2024"


# The generator plants one invalid field per bad row (recaug_spark.stages.generate.BAD_KINDS).
PLANTED_REASON = {
    "ts_unparsable": "bad_timestamp", "ts_future": "future_timestamp", "ts_too_old": "bad_timestamp",
    "user_id_missing": "missing_user", "item_id_missing": "missing_item", "item_id_unknown": "unknown_item",
    "price_not_positive": "nonpositive_price", "price_not_numeric": "wrong_type",
    "quantity_negative": "negative_quantity", "quantity_not_numeric": "wrong_type",
}


def test_generator_planted_bad_rows_get_the_matching_reason_and_nothing_else_is_rejected(spark):
    from recaug_spark.config import GenerateConfig
    from recaug_spark.stages.generate import BAD_KINDS, generate_events, generate_items

    # Given a generated shop with many planted bad rows, each labelled (the label rides in _raw)
    assert set(BAD_KINDS) == set(PLANTED_REASON)
    cfg = GenerateConfig(events=2_000, items=100, partitions=2,
                         mess={"bad_row_rate": 0.2, "bot_users": 1, "bot_events_per_user": 50})
    events = generate_events(spark, cfg, seed=3, with_labels=True)
    raw = events.select(*RAW_EVENT_FIELDS, F.lit("generated_events").alias("_source"),
                        F.coalesce("planted", F.lit("organic")).alias("_raw"), F.lit(False).alias("_unparsable"))

    # When checked against the generated catalog
    checked = check_events(raw, IngestConfig(), now=NOW, known_items=known_item_ids(generate_items(spark, cfg, seed=3)))

    # Then every rejected row is a planted bad row with its reason, and every planted bad row is rejected
    rejected = {(r["raw"], r["reason"]): r["count"] for r in checked.where("reason IS NOT NULL")
                .groupBy("raw", "reason").count().collect()}
    expected_reason = F.create_map(*[F.lit(x) for pair in PLANTED_REASON.items() for x in pair])[F.col("planted")]
    expected = {(r["planted"], r["reason"]): r["count"] for r in events.where(F.col("planted").isin(*BAD_KINDS))
                .groupBy("planted", expected_reason.alias("reason")).count().collect()}
    assert {kind for kind, _ in expected} == set(BAD_KINDS)  # every kind occurs
    assert rejected == expected


def test_zero_price_allowed_on_request_and_unknown_items_only_when_required(spark):
    rows = [{**GOOD, "order_id": "zero", "price": "0"}, {**GOOD, "order_id": "negative", "price": "-1"},
            {**GOOD, "order_id": "unknown", "item_id": "i404"}]
    cfg = IngestConfig(format="csv", allow_zero_price=True)
    checked = check_events(raw_events(spark, rows), cfg, now=NOW)  # no known items: no unknown_item check
    got = {r["order_id"]: r["reason"] for r in checked.collect()}
    assert got == {"zero": None, "negative": "nonpositive_price", "unknown": None}


def test_timestamp_formats(spark):
    rows = [
        {**GOOD, "order_id": "pattern", "ts": "05/01/2024 13:22"},
        {**GOOD, "order_id": "iso_with_pattern", "ts": "2024-01-05T13:22:00Z"},
    ]
    pattern = check_events(raw_events(spark, rows), IngestConfig(format="csv", timestamp_format="dd/MM/yyyy HH:mm"),
                           now=NOW)
    epoch_rows = [{**GOOD, "order_id": "seconds", "ts": "1704460920"}, {**GOOD, "order_id": "text", "ts": "soon"}]
    epoch = check_events(raw_events(spark, epoch_rows), IngestConfig(format="csv", timestamp_format="epoch_seconds"),
                         now=NOW)
    millis = check_events(raw_events(spark, [{**GOOD, "order_id": "millis", "ts": "1704460920000"}]),
                          IngestConfig(format="json", timestamp_format="epoch_millis"), now=NOW)
    # Every format honours timestamp_format, and ISO plus its native spelling (UCI: M/d/yyyy H:mm) stay accepted
    retail = [{**GOOD, "user_id": "17850", "order_id": "retail", "ts": "2024-01-05 13:22:00"},
              {**GOOD, "user_id": "17850", "order_id": "uci", "ts": "1/5/2024 13:22"},
              {**GOOD, "user_id": "17850", "order_id": "declared", "ts": "05.01.2024 13:22"}]
    known = check_events(raw_events(spark, retail),
                         IngestConfig(format="online-retail", timestamp_format=["dd.MM.yyyy HH:mm"]), now=NOW)
    got = {r["order_id"]: (r["reason"], r["t"]) for r in pattern.unionByName(epoch).unionByName(millis)
           .unionByName(known).select("order_id", "reason", F.date_format("ts", "yyyy-MM-dd HH:mm").alias("t"))
           .collect()}
    assert got == {
        "pattern": (None, "2024-01-05 13:22"), "iso_with_pattern": (None, "2024-01-05 13:22"),
        "uci": (None, "2024-01-05 13:22"), "declared": (None, "2024-01-05 13:22"),
        "seconds": (None, "2024-01-05 13:22"), "text": ("bad_timestamp", None),
        "millis": (None, "2024-01-05 13:22"), "retail": (None, "2024-01-05 13:22"),
    }


def test_invalid_timestamp_pattern_fails_before_reading(spark):
    with pytest.raises(ConfigError, match="ingest.timestamp_format"):
        check_session(spark, IngestConfig(format="csv", timestamp_format="yyyy-qqq-bb"))


def test_each_item_reason(spark):
    cases = {
        "ok": ({"item_id": "a", "price": "2.5", "attributes": '{"color": "red"}'}, None),
        "no_price": ({"item_id": "b", "price": None}, None),
        "unparsable": ({"item_id": "c", "_unparsable": True}, "unparsable_line"),
        "blank_id": ({"item_id": "  ", "price": "1"}, "missing_item"),
        "text_price": ({"item_id": "d", "price": "abc"}, "wrong_type"),
        "array_attributes": ({"item_id": "e", "attributes": "[1, 2]"}, "wrong_type"),
        "broken_attributes": ({"item_id": "f", "attributes": '{"a": '}, "wrong_type"),
        "zero_price": ({"item_id": "g", "price": "0"}, "nonpositive_price"),
    }
    rows = [{**fields, "title": name} for name, (fields, _) in cases.items()]
    checked = check_items(raw_items(spark, rows), IngestConfig(format="csv"))
    got = {r["title"]: r for r in checked.collect()}
    assert {name: got[name]["reason"] for name in cases} == {name: reason for name, (_, reason) in cases.items()}
    assert got["ok"]["price"] == 2.5 and got["ok"]["attributes"] == '{"color": "red"}'
    accepted, rejected = accepted_rows(checked, ITEMS_RAW), quarantine_rows(checked, run_id="r1", table="items")
    assert [(f.name, f.dataType) for f in accepted.schema] == [(f.name, f.dataType) for f in ITEMS_RAW]
    assert [(f.name, f.dataType) for f in rejected.schema] == [(f.name, f.dataType) for f in QUARANTINE]
    assert sorted(r["title"] for r in accepted.collect()) == ["no_price", "ok"]


def test_accepted_and_quarantine_frames_have_the_table_schemas(spark):
    rows = [{**GOOD, "order_id": "ok"}, {**GOOD, "order_id": "bad", "user_id": None}]
    checked = check_events(raw_events(spark, rows), IngestConfig(format="csv"), now=NOW)
    accepted = accepted_rows(checked, EVENTS_RAW)
    rejected = quarantine_rows(checked, run_id="run-1", table="events")
    assert [(f.name, f.dataType) for f in accepted.schema] == [(f.name, f.dataType) for f in EVENTS_RAW]
    assert [(f.name, f.dataType) for f in rejected.schema] == [(f.name, f.dataType) for f in QUARANTINE]
    (row,) = rejected.collect()
    assert (row["run_id"], row["stage"], row["table"], row["source"], row["reason"]) == (
        "run-1", "ingest", "events", "test.csv", "missing_user")
    assert json.loads(row["raw"])["order_id"] == "bad"


def test_quarantine_files_hold_the_same_sorted_rows_whatever_the_sources_partitioning(spark):
    from recaug_spark.stages.ingest import quarantine_in_files

    rows = [("r", "ingest", table, f"f{n % 3}.csv", f"line {n}", "wrong_type" if n % 2 else "missing_user", n, 10 * n)
            for n in range(40) for table in ("events", "items")]
    frame = spark.createDataFrame(rows, QUARANTINE)
    layouts = [frame.coalesce(1), frame.repartition(7), spark.createDataFrame(rows[::-1], QUARANTINE).repartition(3)]
    for files in (1, 3):
        placed = [[[tuple(r) for r in part] for part in quarantine_in_files(df, files).rdd.glom().collect()]
                  for df in layouts]
        assert placed[0] == placed[1] == placed[2]  # the same rows in the same file, in the same order
        assert len(placed[0]) == files and sorted(r for part in placed[0] for r in part) == sorted(rows)
        key = lambda r: (r[2], r[3], r[6], r[7], r[5], r[4])  # noqa: E731  table, source, row, offset, reason, raw
        assert all(part == sorted(part, key=key) for part in placed[0])


def test_reconcile_raises_on_any_mismatch():
    counts = {"events_in": 3, "events_accepted": 2, "events_quarantined": 1, "events.quarantine.missing_user": 1,
              "items_in": 1, "items_accepted": 1, "items_quarantined": 0}
    written = {name: WriteResult(name, name, 0, 1, rows, False) for name, rows in
               (("events_raw", 2), ("items_raw", 1), ("quarantine", 1))}
    reconcile(counts, written)  # balanced: no error
    with pytest.raises(ReconciliationError, match="events: in 4"):
        reconcile({**counts, "events_in": 4}, written)
    with pytest.raises(ReconciliationError, match="quarantine: wrote 5 rows but counted 1"):
        reconcile(counts, {**written, "quarantine": WriteResult("q", "q", 0, 1, 5, False)})
    skipped = {**written, "events_raw": WriteResult("e", "e", 0, 0, 0, True)}
    reconcile(counts, skipped)  # a write skipped by its txn wrote nothing: nothing to compare


# --------------------------------------------------------------------------------------------
# Pseudonymization
# --------------------------------------------------------------------------------------------

def test_resolve_pseudonym_key(monkeypatch, tmp_path):
    monkeypatch.delenv("RECAUG_PSEUDONYM_KEY", raising=False)
    csv = IngestConfig(format="csv", events="x.csv")
    with pytest.raises(PseudonymKeyError, match="RECAUG_PSEUDONYM_KEY") as error:
        resolve_pseudonym_key(csv)
    assert "ids_already_anonymous" in str(error.value) and "key_file" in str(error.value)
    assert resolve_pseudonym_key(IngestConfig(format="generated")) is None
    assert resolve_pseudonym_key(IngestConfig(format="csv", pseudonymize={"ids_already_anonymous": True})) is None

    monkeypatch.setenv("RECAUG_PSEUDONYM_KEY", KEY)
    assert resolve_pseudonym_key(csv) == KEY.encode()
    monkeypatch.setenv("MY_KEY", "short-secret")
    with pytest.raises(PseudonymKeyError, match="shorter than 16 bytes") as error:
        resolve_pseudonym_key(IngestConfig(format="csv", pseudonymize={"key_env": "MY_KEY"}))
    assert "short-secret" not in str(error.value)

    key_file = write_text(tmp_path / "key.txt", OTHER_KEY + "\n")
    from_file = IngestConfig(format="csv", pseudonymize={"key_file": str(key_file)})
    assert resolve_pseudonym_key(from_file) == OTHER_KEY.encode()  # the file wins over the env var
    with pytest.raises(PseudonymKeyError, match="cannot be read"):
        resolve_pseudonym_key(IngestConfig(format="csv", pseudonymize={"key_file": str(tmp_path / "absent")}))


def test_pseudonym_known_answers_from_the_stdlib_construction():
    """HMAC-SHA256 (docs/pipeline.md, "Pseudonymization") under a per-kind subkey
    HMAC-SHA256(key, "recaug-spark/pseudonym/<kind>"), first 32 hex characters of the digest of the
    UTF-8 id: computed here with the standard library only, never through the project's functions."""
    import hmac

    def expected(value: str, kind: str) -> str:
        subkey = hmac.digest(KEY.encode(), b"recaug-spark/pseudonym/" + kind.encode(), "sha256")
        return hmac.digest(subkey, value.encode("utf-8"), "sha256").hex()[:32]

    for value, kind in [("17850", "user_id"), ("alice", "user_id"), ("josé", "user_id"), ("s-77", "session_id"),
                        ("17850", "session_id")]:
        assert pseudonym(value, KEY.encode(), kind) == expected(value, kind), (value, kind)
    # The same two, derived a third way: `openssl dgst -sha256 -hmac KEY` for the subkey, then
    # `openssl dgst -sha256 -mac HMAC -macopt hexkey:<subkey>` over the id, first 32 hex characters.
    assert pseudonym("17850", KEY.encode()) == "5af8a53312f9ef777629f1e31fa45c57"
    assert pseudonym("s-77", KEY.encode(), "session_id") == "1ef8d068bc956441b0a9447768bdccf4"


def test_pseudonyms_are_keyed_stable_and_leave_no_raw_id_or_key_in_the_plan(spark):
    rows = [
        {**GOOD, "order_id": "a1", "user_id": "17850", "session_id": "s-77"},
        {**GOOD, "order_id": "a2", "user_id": "17850"},
        {**GOOD, "order_id": "b1", "user_id": "alice"},
        {**GOOD, "order_id": "q1", "user_id": "17850", "price": "0",
         "_raw": '{"CustomerID":"17850.0","UnitPrice":"0","Quantity":"178500"}'},
        {"order_id": "q2", "_unparsable": True, "_raw": "536365,85123A,17850.0"},
    ]
    cfg = IngestConfig(format="csv")
    checked = check_events(raw_events(spark, rows), cfg, now=NOW)
    first = pseudonymize_checked(checked, KEY.encode())
    second = pseudonymize_checked(checked, OTHER_KEY.encode())

    got = {r["order_id"]: r for r in first.collect()}
    other = {r["order_id"]: r for r in second.collect()}
    expected = pseudonym("17850", KEY.encode())
    assert got["a1"]["user_id"] == got["a2"]["user_id"] == expected and len(expected) == 32
    assert got["b1"]["user_id"] == pseudonym("alice", KEY.encode()) != expected
    assert other["a1"]["user_id"] == pseudonym("17850", OTHER_KEY.encode()) != expected
    assert got["a1"]["session_id"] == pseudonym("s-77", KEY.encode(), "session_id")
    # The rejected row's raw text carries the pseudonym, not the id (other numbers untouched)
    assert json.loads(got["q1"]["raw"]) == {"CustomerID": expected, "UnitPrice": "0", "Quantity": "178500"}
    assert got["q2"]["reason"] == "unparsable_line" and got["q2"]["raw"].startswith("<redacted")
    assert "17850" not in json.dumps([r.asDict() for r in got.values()], default=str).replace("178500", "")

    kept = {r["order_id"]: r["raw"] for r in pseudonymize_checked(checked, KEY.encode(), redact_unparsable=False)
            .where("reason IS NOT NULL").collect()}
    assert kept["q2"] == "536365,85123A,17850.0"  # verbatim on request: its user id cannot be located

    plan = first._jdf.queryExecution().toString()
    from recaug_spark.stages.ingest import pseudonym_subkey

    for secret in (KEY, KEY.encode().hex(), pseudonym_subkey(KEY.encode(), "user_id").hex()):
        assert secret not in plan
    assert "pseudonym_of" in plan  # the hash is there, by name only


# --------------------------------------------------------------------------------------------
# The stage, end to end
# --------------------------------------------------------------------------------------------

EVENTS_CSV = """user_id,item_id,ts,quantity,price,event_type,country
alice-0001,p1,2024-01-05T10:00:00Z,1,2.5,purchase,UK
alice-0001,p2,2024-01-06T10:00:00Z,1,,view,UK
bob-0002,p1,2024-01-05T11:00:00Z,-2,2.5,purchase,FR
,p1,2024-01-05T11:00:00Z,1,2.5,purchase,FR
carol-0003,p9,2024-01-07T11:00:00Z,1,2.5,purchase,DE
carol-0003,p1,2024-01-07T11:00:00Z,1
dave-0004,p2,not-a-date,1,2.5,purchase,UK
"""
ITEMS_CSV = """item_id,title,price,category
p1,Mug,2.5,kitchen
p2,Pen,,office
p3,,0,office
,Orphan,1.0,misc
p4,Bad,abc,misc
"""
RAW_USER_IDS = ("alice-0001", "bob-0002", "carol-0003", "dave-0004")


def _context(spark, tmp_path, **ingest):
    cfg = validate({"run": {"warehouse": str(tmp_path / "warehouse")}, "ingest": ingest})
    return RunContext.create(spark, cfg, run_id="test-run")


def _all_text(ctx, tables) -> str:
    """Every value of every table, as one string (to search for things that must not be there)."""
    return json.dumps([[r.asDict() for r in ctx.warehouse.read(t).collect()] for t in tables], default=str)


def test_run_ingest_csv_end_to_end_with_pseudonymization(spark, tmp_path, monkeypatch):
    # Given a CSV clickstream and catalog with one record of each kind of mess, and a key in the env
    events = write_text(tmp_path / "src" / "events.csv", EVENTS_CSV)
    items = write_text(tmp_path / "src" / "items.csv", ITEMS_CSV)
    monkeypatch.setenv("RECAUG_PSEUDONYM_KEY", KEY)
    ctx = _context(spark, tmp_path, format="csv", events=str(events), items=str(items))

    # When ingested
    result = run_ingest(ctx)

    # Then counts reconcile to the known answer
    assert result.counts == {
        "events_in": 7, "events_accepted": 2, "events_quarantined": 5,
        "items_in": 5, "items_accepted": 2, "items_quarantined": 3,
        "events.quarantine.negative_quantity": 1, "events.quarantine.missing_user": 1,
        "events.quarantine.unknown_item": 1, "events.quarantine.unparsable_line": 1,
        "events.quarantine.bad_timestamp": 1,
        "items.quarantine.nonpositive_price": 1, "items.quarantine.missing_item": 1,
        "items.quarantine.wrong_type": 1,
        "quarantine.negative_quantity": 1, "quarantine.missing_user": 1, "quarantine.unknown_item": 1,
        "quarantine.unparsable_line": 1, "quarantine.bad_timestamp": 1, "quarantine.nonpositive_price": 1,
        "quarantine.missing_item": 1, "quarantine.wrong_type": 1,
    }
    assert (result.rows_in, result.rows_out, result.rows_quarantined) == (12, 4, 8)
    assert result.tables == {"events_raw": 0, "items_raw": 0, "quarantine": 0} and not result.skipped

    accepted = ctx.warehouse.read("events_raw")
    assert [(f.name, f.dataType) for f in accepted.schema] == [(f.name, f.dataType) for f in EVENTS_RAW]
    rows = sorted(accepted.collect(), key=lambda r: r["item_id"])
    alice = pseudonym("alice-0001", KEY.encode())
    assert [(r["user_id"], r["item_id"], r["event_type"], r["quantity"], r["price"], r["dt"], r["source"])
            for r in rows] == [
        (alice, "p1", "purchase", 1, 2.5, dt.date(2024, 1, 5), "events.csv"),
        (alice, "p2", "view", 1, None, dt.date(2024, 1, 6), "events.csv"),
    ]
    assert sorted(r["item_id"] for r in ctx.warehouse.read("items_raw").collect()) == ["p1", "p2"]
    quarantine = ctx.warehouse.read("quarantine")
    assert {(r["table"], r["reason"]) for r in quarantine.collect()} >= {("items", "wrong_type"),
                                                                         ("events", "unknown_item")}
    assert {r["run_id"] for r in quarantine.collect()} == {"test-run"}

    # No raw user id and no key anywhere in what was written (tables and Delta logs)
    text = _all_text(ctx, ["events_raw", "items_raw", "quarantine"])
    for secret in (KEY, *RAW_USER_IDS):
        assert secret not in text
    for path in (tmp_path / "warehouse").rglob("*.json"):
        assert KEY not in path.read_text()

    # And re-running the same run id writes nothing twice
    again = run_ingest(ctx)
    assert again.skipped and again.rows_in == 0 and again.tables == result.tables
    assert ctx.warehouse.read("quarantine").count() == 8


def test_run_ingest_refuses_real_ids_without_a_key_before_reading(spark, tmp_path, monkeypatch):
    monkeypatch.delenv("RECAUG_PSEUDONYM_KEY", raising=False)
    ctx = _context(spark, tmp_path, format="csv", events=str(tmp_path / "does-not-exist.csv"))
    with pytest.raises(PseudonymKeyError, match="RECAUG_PSEUDONYM_KEY"):
        run_ingest(ctx)
    assert not ctx.warehouse.exists("events_raw") and not ctx.warehouse.exists("quarantine")


def test_run_ingest_generated_tables_need_no_key(spark, tmp_path, monkeypatch):
    monkeypatch.delenv("RECAUG_PSEUDONYM_KEY", raising=False)
    ctx = _context(spark, tmp_path)  # format: generated
    events = [("u1", "i1", "view", "2024-01-05T13:22:10Z", "1", "3.5", "s1", None, "UK", "mobile"),
              ("u1", "i2", "cart", "2024-01-05T13:23:10Z", None, None, "s1", None, "UK", "mobile"),
              ("u2", "i9", "view", "2024-01-05T13:24:10Z", "1", "3.5", "s2", None, "UK", "web"),
              ("u2", "i1", "purchase", "2024-13-45T99:00:00Z", "1", "3.5", "s2", "o1", "UK", "web")]
    items = [("i1", "Mug", "A mug", "kitchen", "3.5", '{"color": "blue"}'), ("i2", "Pen", None, "office", None, None)]
    schema = lambda fields: T.StructType([T.StructField(c, T.StringType()) for c in fields])  # noqa: E731
    ctx.warehouse.write("generated_events", spark.createDataFrame(events, schema(RAW_EVENT_FIELDS)))
    ctx.warehouse.write("generated_items", spark.createDataFrame(items, schema(RAW_ITEM_FIELDS)))

    result = run_ingest(ctx)

    assert (result.counts["events_accepted"], result.counts["quarantine.unknown_item"],
            result.counts["quarantine.bad_timestamp"], result.counts["items_accepted"]) == (2, 1, 1, 2)
    users = {r["user_id"] for r in ctx.warehouse.read("events_raw").collect()}
    assert users == {"u1"}  # synthetic ids are kept as they are
    sources = {r["source"] for r in ctx.warehouse.read("quarantine").collect()}
    assert sources == {"generated_events"}


# --------------------------------------------------------------------------------------------
# Adapters
# --------------------------------------------------------------------------------------------

def test_csv_adapter_maps_columns_and_keeps_malformed_lines(spark, tmp_path):
    path = write_text(tmp_path / "shop" / "clicks.csv", (
        "customer,product,when,qty,amount,kind\n"
        "c1,p1,2024-01-05 10:00:00,1,2.5,purchase\n"
        "c2,p2,2024-01-05 11:00:00,2,3.0\n"
        'c3,p3,"2024-01-05 12:00:00",1,1.0,view,extra\n'
        'c4,"p,4",2024-01-06 12:00:00,1,1.0,cart\n'
    ))
    cfg = IngestConfig(format="csv", events=str(path), events_columns={
        "user_id": "customer", "item_id": "product", "ts": "when", "quantity": "qty", "price": "amount",
        "event_type": "kind"})
    sources = read_sources(spark, cfg)
    assert sources.events.columns == list(ADAPTER_EVENT_COLUMNS)
    assert sources.items.columns == list(ADAPTER_ITEM_COLUMNS) and sources.items_derived
    rows = {r["_raw"]: r for r in sources.events.collect()}
    broken = {raw: r["_unparsable"] for raw, r in rows.items() if r["_unparsable"]}
    assert broken == {"c2,p2,2024-01-05 11:00:00,2,3.0": True,
                      'c3,p3,"2024-01-05 12:00:00",1,1.0,view,extra': True}
    good = sorted((r for r in rows.values() if not r["_unparsable"]), key=lambda r: r["user_id"])
    assert [(r["user_id"], r["item_id"], r["ts"], r["quantity"], r["price"], r["event_type"], r["country"],
             r["_source"]) for r in good] == [
        ("c1", "p1", "2024-01-05 10:00:00", "1", "2.5", "purchase", None, "clicks.csv"),
        ("c4", "p,4", "2024-01-06 12:00:00", "1", "1.0", "cart", None, "clicks.csv"),
    ]
    assert good[0]["_raw"] == "c1,p1,2024-01-05 10:00:00,1,2.5,purchase"  # the verbatim line
    assert sorted(r["item_id"] for r in sources.items.collect()) == ["p,4", "p1"]  # from parsed rows only

    # Without a header the columns are _c0, _c1, ... and the first line is data
    bare = write_text(tmp_path / "bare" / "clicks.tsv", "c1\tp1\t2024-01-05\nc2\tp2\n")
    cfg = IngestConfig(format="csv", events=str(bare), csv_header=False, csv_separator="\t",
                       events_columns={"user_id": "_c0", "item_id": "_c1", "ts": "_c2"})
    rows = sorted(read_sources(spark, cfg).events.collect(), key=lambda r: r["_raw"])
    assert [(r["user_id"], r["ts"], r["_unparsable"]) for r in rows] == [("c1", "2024-01-05", False),
                                                                         ("c2", None, True)]


def test_column_mapping_errors_name_the_key(spark):
    df = spark.createDataFrame([("u", "i", "t")], "customer string, item_id string, ts string")
    with pytest.raises(SourceError, match=r"events_columns.user_id='client': no such column"):
        map_columns(df, {"user_id": "client"}, RAW_EVENT_FIELDS, what="ingest.events_columns")
    with pytest.raises(SourceError, match="required field 'user_id'"):
        map_columns(df, {}, RAW_EVENT_FIELDS, what="ingest.events_columns")
    mapped = map_columns(df, {"user_id": "customer"}, RAW_EVENT_FIELDS, source=F.lit("t"), what="x")
    (row,) = mapped.collect()
    assert (row["user_id"], row["item_id"], row["ts"], row["price"], row["_source"], row["_unparsable"]) == (
        "u", "i", "t", None, "t", False)


def test_json_and_parquet_adapters_render_typed_values_as_text(spark, tmp_path):
    json_path = write_text(tmp_path / "json" / "events.json", (
        '{"uid": "u1", "sku": 17, "at": "2024-01-05T10:00:00Z", "price": 2.5, "meta": {"k": [1]}}\n'
        '{"uid": "u2", "sku": \n'
    ))
    json_sources = read_sources(spark, IngestConfig(
        format="json", events=str(json_path), events_columns={"user_id": "uid", "item_id": "sku", "ts": "at"},
        items_columns={"attributes": "meta"}))
    got = sorted(json_sources.events.collect(), key=lambda r: r["_unparsable"])
    assert [(r["user_id"], r["item_id"], r["ts"], r["price"], r["_unparsable"]) for r in got] == [
        ("u1", "17", "2024-01-05T10:00:00Z", "2.5", False), (None, None, None, None, True)]
    assert got[1]["_raw"] == '{"uid": "u2", "sku": '
    (item,) = json_sources.items.collect()
    assert (item["item_id"], item["attributes"]) == ("17", '{"k":[1]}')

    typed = spark.createDataFrame(
        [("u1", 17, dt.datetime(2024, 1, 5, 10, 0, tzinfo=dt.timezone.utc), 2.5, "Mug")],
        "user_id string, item_id long, ts timestamp, price double, name string")
    typed.write.parquet(str(tmp_path / "parquet"))
    cfg = IngestConfig(format="parquet", events=str(tmp_path / "parquet"), items_columns={"title": "name"})
    sources = read_sources(spark, cfg)
    (row,) = sources.events.collect()
    assert (row["user_id"], row["item_id"], row["ts"], row["price"]) == (
        "u1", "17", "2024-01-05T10:00:00.000000Z", "2.5")
    assert row["_source"].endswith(".parquet")
    checked = check_events(sources.events, cfg, now=NOW).select(
        "reason", F.date_format("ts", "yyyy-MM-dd HH:mm").alias("t")).collect()
    assert [(r["reason"], r["t"]) for r in checked] == [(None, "2024-01-05 10:00")]
    (item,) = sources.items.collect()
    assert (item["item_id"], item["title"], item["price"]) == ("17", "Mug", None)


def test_delta_adapter_reads_a_table_path(spark, tmp_path):
    warehouse = Warehouse(spark, str(tmp_path / "wh"))
    df = spark.createDataFrame([("u1", "i1", "2024-01-05T10:00:00Z")], "user_id string, item_id string, ts string")
    written = warehouse.write("source_events", df)
    sources = read_sources(spark, IngestConfig(format="delta", events=written.uri), warehouse)
    (row,) = sources.events.collect()
    assert (row["user_id"], row["item_id"], row["_source"], row["_unparsable"]) == ("u1", "i1", written.uri, False)


def test_online_retail_adapter(spark, tmp_path):
    header = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
    write_text(tmp_path / "retail" / "2010-12-01.csv", header + (
        "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"
        "C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527.0,United Kingdom\n"
        "536414,22139,,56,2010-12-01 11:52:00,0.0,,United Kingdom\n"
        "536589,21777,,-10,2010-12-01 16:50:00,0.0,13000.0,United Kingdom\n"
    ))
    write_text(tmp_path / "retail" / "2010-12-02.csv", header + (
        '536366,85123A,"WHITE HANGING HEART, T-LIGHT HOLDER",2,2010-12-02 08:28:00,2.95,17850.0,France\n'
        "536367,84406B,CREAM CUPID HEARTS COAT HANGER,8,2010-12-02 08:34:00\n"
    ))
    cfg = IngestConfig(format="online-retail", events=str(tmp_path / "retail"))
    sources = read_sources(spark, cfg)
    events = {r["order_id"]: r for r in sources.events.collect()}
    assert (events["536365"]["user_id"], events["536365"]["item_id"], events["536365"]["event_type"],
            events["536365"]["quantity"], events["536365"]["ts"], events["536365"]["country"]) == (
        "17850", "85123A", "purchase", "6", "2010-12-01 08:26:00", "United Kingdom")
    assert (events["C536379"]["event_type"], events["C536379"]["quantity"]) == ("return", "1")
    assert events["536589"]["quantity"] == "-10"  # not a cancellation: stays negative → quarantined
    reasons = {r["order_id"]: r["reason"] for r in check_events(sources.events, cfg, now=NOW).collect()}
    assert reasons == {"536365": None, "C536379": None, "536414": "missing_user", "536589": "negative_quantity",
                       "536366": None, "536367": "unparsable_line"}
    items = sorted((r["item_id"], r["title"], r["price"]) for r in sources.items.collect())
    assert items == [("21777", "", "0.0"), ("22139", "", "0.0"),  # an empty field as written (blank = missing)
                     ("85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "2.55"),
                     ("85123A", "WHITE HANGING HEART, T-LIGHT HOLDER", "2.95"), ("D", "Discount", "27.5")]


def test_amazon_5core_adapter(spark):
    lines = spark.createDataFrame(
        [(["1", "10", "11", "12"], "1 10 11 12", None, 1), (["2", "11"], "2\t11", None, 2),
         (None, "badline", "unparsable_line", 4), (None, "3 10,11", "unparsable_line", 5)],
        "_fields array<string>, _raw string, _reason string, _row long",
    ).withColumn("_source", F.lit("Sports.txt")).withColumn("_offset", F.lit(None).cast("long"))
    sources = amazon_5core_rows(lines, event_type="view")
    got = sorted(sources.events.collect(), key=lambda r: (r["_unparsable"], r["user_id"] or "", r["ts"] or ""))
    assert [(r["user_id"], r["item_id"], r["ts"], r["event_type"], r["_unparsable"]) for r in got] == [
        ("1", "10", "2000-01-01T00:00:00Z", "view", False),
        ("1", "11", "2000-01-01T00:00:01Z", "view", False),
        ("1", "12", "2000-01-01T00:00:02Z", "view", False),
        ("2", "11", "2000-01-01T00:00:00Z", "view", False),
        (None, None, None, None, True),
        (None, None, None, None, True),
    ]
    assert sorted(r["_raw"] for r in got if r["_unparsable"]) == ["3 10,11", "badline"]
    assert json.loads(got[1]["_raw"]) == {"user_id": "1", "item_id": "11", "position": 1}
    assert sorted(r["item_id"] for r in sources.items.collect()) == ["10", "11", "12"]


def test_diginetica_adapter(spark):
    rows = [("1", "NA", "81766", "526309", "2016-05-09"), ("1", "NA", "31331", "1031018", "2016-05-09"),
            ("2", "1051", "100", "0", "2016-05-10"), ("3", "NA", "200", "abc", "2016-05-10")]
    df = spark.createDataFrame(rows, "session_id string, user_id string, item_id string, timeframe string, "
                                     "eventdate string")
    df = df.withColumn("_source", F.lit("views.csv")).withColumn("_raw", F.lit("x")).withColumn("_unparsable",
                                                                                                F.lit(False))
    sources = diginetica_rows(df)
    got = sorted((r["user_id"], r["item_id"], r["ts"], r["event_type"], r["session_id"])
                 for r in sources.events.collect())
    assert got == [
        ("1051", "100", "2016-05-10T00:00:00.000Z", "view", "2"),
        ("session:1", "31331", "2016-05-09T00:17:11.018Z", "view", "1"),
        ("session:1", "81766", "2016-05-09T00:08:46.309Z", "view", "1"),
        ("session:3", "200", "2016-05-10 + abcms", "view", "3"),
    ]
    reasons = [r["reason"] for r in check_events(sources.events, IngestConfig(format="diginetica"), now=NOW)
               .orderBy("item_id").collect()]
    assert reasons == [None, "bad_timestamp", None, None]  # items 100, 200, 31331, 81766


def test_csv_reader_checks_a_fixed_header(spark, tmp_path):
    path = write_text(tmp_path / "wrong" / "a.csv", "a;b\n1;2\n")
    with pytest.raises(SourceError, match=r"a.csv: the header lacks the column\(s\) \['session_id', 'user_id'\]"):
        read_csv(spark, str(path), sep=";", columns=("session_id", "user_id"))
