"""Ingest against real public data in ../shared/datasets (skipped, with the reason, where absent).

The expected figures were computed independently with pandas from the raw files (see the
comments); the README's facts are the cross-check: 541,909 rows, 135,080 without CustomerID,
9,288 cancellation rows (InvoiceNo starting with "C"), 296,337 interactions of 35,598 users,
12,391 DIGINETICA views in 2,986 sessions.
"""

from __future__ import annotations

import datetime as dt

from conftest import dataset_path
from pyspark.sql import functions as F

from recaug_spark.config import IngestConfig, validate
from recaug_spark.runs import RunContext
from recaug_spark.sources import read_sources
from recaug_spark.stages.ingest import check_events, pseudonym, reason_counts, run_ingest

KEY = "real-data-test-key-0123456789abcdef"
NOW = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)


def test_online_retail_through_run_ingest(spark, tmp_path, monkeypatch):
    """pandas over the 305 files (dtype=str): 541,909 rows; the checks in order give
    missing_user 135,080 (CustomerID empty), then nonpositive_price 40 (UnitPrice 0 with a
    customer); no negative quantity survives (the 1,336 non-"C" negative rows all lack a customer)
    → 406,789 accepted. Of the 9,288 "C" rows, 383 lack a customer; 8,905 are accepted returns.
    Accepted rows hold 4,371 distinct customers. Items: 18,053 distinct (StockCode, Description,
    UnitPrice); the 1,771 with UnitPrice <= 0 come only from quarantined events, so they are left out
    (each bad record is one quarantine row: its event) → 16,282 items in, all accepted."""
    folder = dataset_path("online-retail", "by-day")
    monkeypatch.setenv("RECAUG_PSEUDONYM_KEY", KEY)
    cfg = validate({"run": {"warehouse": str(tmp_path / "warehouse")},
                    "ingest": {"format": "online-retail", "events": str(folder)}})
    ctx = RunContext.create(spark, cfg, run_id="retail-test")

    result = run_ingest(ctx)

    assert result.counts == {
        "events_in": 541_909, "events_accepted": 406_789, "events_quarantined": 135_120,
        "items_in": 16_282, "items_accepted": 16_282, "items_quarantined": 0,
        "events.quarantine.missing_user": 135_080, "events.quarantine.nonpositive_price": 40,
        "quarantine.missing_user": 135_080, "quarantine.nonpositive_price": 40,
    }
    assert (result.rows_in, result.rows_out, result.rows_quarantined) == (558_191, 423_071, 135_120)

    events = ctx.warehouse.read("events_raw")
    (summary,) = events.agg(
        F.count("*").alias("rows"),
        F.sum(F.when(F.col("event_type") == "return", 1).otherwise(0)).alias("returns"),
        F.min("quantity").alias("min_quantity"),
        F.countDistinct("user_id").alias("users"),
        F.sum(F.when(F.col("user_id").rlike("^[0-9a-f]{32}$"), 0).otherwise(1)).alias("not_pseudonyms"),
        F.sum(F.when(F.col("user_id") == pseudonym("17850", KEY.encode()), 1).otherwise(0)).alias("customer_17850"),
        F.countDistinct("dt").alias("days"),
    ).collect()
    assert summary.asDict() == {"rows": 406_789, "returns": 8_905, "min_quantity": 1, "users": 4_371,
                                "not_pseudonyms": 0, "customer_17850": 312, "days": 305}

    quarantine = ctx.warehouse.read("quarantine").where(F.col("table") == "events")
    cancellations = quarantine.where(F.col("raw").startswith("C")).groupBy("reason").count().collect()
    assert {r["reason"]: r["count"] for r in cancellations} == {"missing_user": 383}  # 8,905 + 383 = 9,288


def test_amazon_sports_5core_adapter(spark):
    """Every line parses: 35,598 users, 296,337 (user, item) events, 18,357 items (counted with
    Python's str.split over the file); the longest line has 296 items."""
    path = dataset_path("amazon-sports-5core", "Sports_and_Outdoors.txt")
    cfg = IngestConfig(format="amazon-5core", events=str(path), pseudonymize={"ids_already_anonymous": True})
    sources = read_sources(spark, cfg)
    checked = check_events(sources.events, cfg, now=NOW)
    (summary,) = checked.agg(
        F.count("*").alias("events"), F.countDistinct("user_id").alias("users"),
        F.sum(F.when(F.col("reason").isNull(), 1).otherwise(0)).alias("accepted"),
        F.date_format(F.min("ts"), "yyyy-MM-dd HH:mm:ss").alias("first"),
        F.date_format(F.max("ts"), "yyyy-MM-dd HH:mm:ss").alias("last"),
    ).collect()
    assert summary.asDict() == {"events": 296_337, "users": 35_598, "accepted": 296_337,
                                "first": "2000-01-01 00:00:00", "last": "2000-01-01 00:04:55"}  # + 295 s
    assert sources.items.count() == 18_357


def test_diginetica_sample_adapter(spark):
    """12,391 views, 2,986 sessions, 7,139 items. Unlike the README says, user_id is "NA" on 7,681
    rows only: anonymous sessions (1,724) become users "session:<id>", the rest carry 1,270 real
    user ids → 2,994 users. ts = eventdate + timeframe ms spans 2016-01-03 00:00:07.112 ..
    2016-06-01 00:18:44.305 (pandas)."""
    path = dataset_path("diginetica-sample", "train-item-views.csv")
    cfg = IngestConfig(format="diginetica", events=str(path), pseudonymize={"ids_already_anonymous": True})
    sources = read_sources(spark, cfg)
    checked = check_events(sources.events, cfg, now=NOW)
    counts = reason_counts(checked)
    assert counts == {None: 12_391}
    (summary,) = checked.agg(
        F.countDistinct("session_id").alias("sessions"), F.countDistinct("user_id").alias("users"),
        F.countDistinct("item_id").alias("items"),
        F.sum(F.when(F.col("user_id").startswith("session:"), 1).otherwise(0)).alias("anonymous_rows"),
        F.date_format(F.min("ts"), "yyyy-MM-dd HH:mm:ss.SSS").alias("first"),
        F.date_format(F.max("ts"), "yyyy-MM-dd HH:mm:ss.SSS").alias("last"),
    ).collect()
    assert summary.asDict() == {"sessions": 2_986, "users": 2_994, "items": 7_139, "anonymous_rows": 7_681,
                                "first": "2016-01-03 00:00:07.112", "last": "2016-06-01 00:18:44.305"}
