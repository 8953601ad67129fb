"""Clean stage: each step on tiny hand-made events with known answers, then the stage end to end."""

from __future__ import annotations

import datetime as dt

import deltalake
import pytest
from pyspark.sql import functions as F

from recaug_spark.config import CleanConfig, SplitConfig, load_config
from recaug_spark.delta.arrow_reader import read_arrow
from recaug_spark.runs import RunContext
from recaug_spark.schemas import (
    EVENTS,
    EVENTS_RAW,
    ITEMS,
    ITEMS_RAW,
    SEQUENCE_TARGETS,
    SEQUENCES,
)
from recaug_spark.stages import clean as C
from recaug_spark.stages import clean_steps as steps

T0 = dt.datetime(2024, 3, 1, 10, 0, 0)


def ev(user, item, seconds, event_type="view", quantity=1, price=1.0, order_id=None, source_session=None):
    ts = T0 + dt.timedelta(seconds=seconds)
    return (user, item, event_type, ts, quantity, price, source_session, order_id, "gb", "web", "test", ts.date())


def frame(spark, rows):
    return spark.createDataFrame(rows, EVENTS_RAW)


def by_key(df, *columns):
    """{(user_id, item_id, seconds after T0, event_type): tuple(columns)} for easy assertions."""
    out = {}
    for row in df.collect():
        key = (row.user_id, row.item_id, int((row.ts - T0).total_seconds()), row.event_type)
        value = tuple(row[c] for c in columns)
        out.setdefault(key, []).append(value if len(value) > 1 else value[0])
    return out


def schema_of(df):
    return [(f.name, f.dataType) for f in df.schema]


def expected(schema):
    return [(f.name, f.dataType) for f in schema]


# The per-user steps (duplicates, bots, returns netting, sessions) have Spark-free tests in
# test_clean_steps.py; here: the same steps through Spark, and what only Spark does.

# ---- 3. returns -------------------------------------------------------------------------------

def test_returns_kept_untouched_when_netting_is_off(spark):
    rows = [ev("u", "a", 0, "purchase", 6), ev("u", "a", 100, "return", 2), ev("u", "a", 200), ev("u", "b", 300)]
    cfg = CleanConfig(net_returns=False)
    out = by_key(C.clean_events(frame(spark, rows), cfg), "quantity", C.REASON, "split")
    assert out[("u", "a", 0, "purchase")] == [(6, None, "train")]
    assert out[("u", "a", 100, "return")] == [(2, None, None)]  # kept, but not part of the sequence


# ---- 4–5. items -------------------------------------------------------------------------------

def test_item_text_is_normalized_and_the_most_frequent_spelling_wins(spark):
    catalog = spark.createDataFrame([
        ("m", "  White  Mug ", "A  mug", "Kitchen", 3.0, '{"c": "w"}', "s"),
        ("m", "white mug", None, " kitchen ", 3.0, '{"c": "w"}', "s"),
        ("m", "WHITE\tMUG", "a mug", "KITCHEN", 3.0, None, "s"),
        ("m", "Red mug", "a  red mug", "kitchen", 3.0, '{"c": "r"}', "s"),
        ("t", "b title", "", None, 1.0, "", "s"),
        ("t", "a title", None, None, 1.0, None, "s"),
    ], ITEMS_RAW)
    items = C.canonical_items(catalog, frame(spark, []))
    assert schema_of(items) == expected(ITEMS)
    rows = {r.item_id: r for r in items.collect()}
    assert len(rows) == 2
    assert (rows["m"].title, rows["m"].description, rows["m"].category) == ("white mug", "a mug", "kitchen")
    assert rows["m"].attributes == '{"c": "w"}'
    assert rows["t"].title == "a title"  # a tie: the lexicographically smallest
    assert rows["t"].description is None and rows["t"].attributes is None  # empty text is no text


def test_item_prices_median_then_category_median_then_null(spark):
    catalog = spark.createDataFrame([
        ("x", "x", None, "mugs", 10.0, None, "s"), ("x", "x", None, "mugs", 20.0, None, "s"),
        ("x", "x", None, "mugs", None, None, "s"), ("x", "x", None, "mugs", 0.0, None, "s"),
        ("x2", "x2", None, "mugs", 40.0, None, "s"),
        ("y", "y", None, "mugs", None, None, "s"), ("y", "y", None, "mugs", -1.0, None, "s"),
        ("y", "y", None, "mugs", float("nan"), None, "s"),
        ("z", "z", None, None, None, None, "s"),
        ("n", "n", None, "bowls", None, None, "s"),
    ], ITEMS_RAW)
    events = frame(spark, [ev("u", "x", 0, price=30.0), ev("u", "x", 1, price=None), ev("u", "w", 2, price=7.0)])
    rows = {r.item_id: (r.price, r.price_imputed) for r in C.canonical_items(catalog, events).collect()}
    assert rows["x"] == (20.0, False)  # median of 10, 20 (catalog) and 30 (event)
    assert rows["x2"] == (40.0, False)
    assert rows["y"] == (30.0, True)  # median of the category's item prices 20 and 40
    assert rows["w"] == (7.0, False)  # only seen in events
    assert rows["z"] == (None, False) and rows["n"] == (None, False)  # no price, no priced category


# ---- 7. k-core --------------------------------------------------------------------------------

def test_kcore_iterates_until_every_user_and_item_has_k_interactions(spark):
    rows = [
        ev("u1", "a", 0), ev("u1", "b", 1), ev("u2", "a", 2), ev("u2", "b", 3),
        ev("u3", "a", 4), ev("u3", "c", 5),  # c has 1 → goes; then u3 has 1 → goes
        ev("u3", "c", 6, "return"),  # not an interaction, but u3 and c are gone
        ev("u1", "b", 7, "cart"),
    ]
    out = by_key(C.mark_kcore(frame(spark, rows), 2, ("view", "cart", "purchase")), C.REASON)
    kept = sorted(k for k, v in out.items() if v == [None])
    assert [k[:2] for k in kept] == [("u1", "a"), ("u1", "b"), ("u1", "b"), ("u2", "a"), ("u2", "b")]
    assert all(v == ["kcore"] for k, v in out.items() if k[0] == "u3")


# ---- 8. split ---------------------------------------------------------------------------------

def test_leave_one_out_split_sequences_and_targets(spark):
    rows = (
        [ev("five", f"i{k}", 60 * k) for k in range(5)]
        + [ev("two", "i0", 0), ev("two", "i1", 60)]
        + [ev("capped", f"i{k}", 60 * k) for k in range(7)]
        + [ev("five", "i9", 30, "return")]  # returns are not sequence events
        + [ev("tie", "b", 0), ev("tie", "a", 0), ev("tie", "c", 0, "cart")]  # equal ts: item, then type
    )
    cfg = CleanConfig(max_sequence_length=5, net_returns=False)
    annotated = C.clean_events(frame(spark, rows), cfg).persist()
    out = by_key(annotated, "split")
    assert [out[("five", f"i{k}", 60 * k, "view")] for k in range(5)] == [["train"]] * 3 + [["valid"], ["test"]]
    assert out[("five", "i9", 30, "return")] == [None]
    assert out[("two", "i0", 0, "view")] == out[("two", "i1", 60, "view")] == ["train"]
    capped = [out[("capped", f"i{k}", 60 * k, "view")][0] for k in range(7)]
    assert capped == [None, None, "train", "train", "train", "valid", "test"]  # the last 5 only

    kept = annotated.where(F.col(C.REASON).isNull()).withColumn("session_id", F.col(C._SESSION))
    sequences = C.build_sequences(kept)
    targets = C.build_targets(kept)
    assert schema_of(sequences) == expected(SEQUENCES) and schema_of(targets) == expected(SEQUENCE_TARGETS)
    seqs = {r.user_id: r for r in sequences.collect()}
    assert seqs["five"].item_ids == ["i0", "i1", "i2"] and seqs["five"].length == 3
    assert seqs["five"].session_ids == ["five-1"] * 3 and seqs["five"].event_types == ["view"] * 3
    assert seqs["five"].timestamps == [T0 + dt.timedelta(seconds=60 * k) for k in range(3)]
    assert seqs["two"].item_ids == ["i0", "i1"] and seqs["capped"].item_ids == ["i2", "i3", "i4"]
    assert seqs["tie"].item_ids == ["a"]  # equal timestamps: ordered by item_id (then event type)
    held_out = sorted((r.user_id, r.split, r.item_id) for r in targets.collect())
    assert held_out == [
        ("capped", "test", "i6"), ("capped", "valid", "i5"), ("five", "test", "i4"), ("five", "valid", "i3"),
        ("tie", "test", "c"), ("tie", "valid", "b"),
    ]
    annotated.unpersist()


def test_time_fraction_split_cuts_the_time_range(spark):
    day = 86_400
    rows = [ev("u", f"i{k}", day * k) for k in range(10)] + [ev("late", "i9", day * 9)]
    cfg = CleanConfig(split=SplitConfig(strategy="time_fraction", valid_fraction=0.1, test_fraction=0.1))
    df = C.annotate_events(frame(spark, rows), cfg)
    cutoffs = C.time_cutoffs(df, cfg)
    start = int(T0.replace(tzinfo=dt.UTC).timestamp()) * 1_000_000
    span = 9 * day * 1_000_000
    test_start = start + span - span // 10  # 8.1 days in, then 7.2 days in
    assert cutoffs == (test_start - span // 10, test_start)
    out = by_key(C.split_events(df, cfg, cutoffs=cutoffs), "split")
    assert [out[("u", f"i{k}", day * k, "view")][0] for k in range(10)] == ["train"] * 8 + ["valid", "test"]
    assert out[("late", "i9", day * 9, "view")] == [None]  # no training history: not evaluated
    with pytest.raises(ValueError, match="cutoffs"):
        C.split_events(df, cfg)


# ---- reconciliation, plan shape, the stage ----------------------------------------------------

MESSY = (
    [ev("u1", f"i{k % 4}", 120 * k) for k in range(8)]
    + [ev("u1", "i0", 0), ev("u1", "i1", 125)]  # exact and near duplicates
    + [ev("u2", "i1", 0, "purchase", 3, order_id="o1"), ev("u2", "i1", 600, "return", 1, order_id="C1"),
       ev("u2", "i2", 700, "purchase", 1, order_id="o2"), ev("u2", "i2", 800, "return", 1, order_id="C2"),
       ev("u2", "i3", 900, "return", 5, order_id="C3"), ev("u2", "i0", 4000), ev("u2", "i2", 5000)]
    + [ev("bot", f"b{k}", k // 2) for k in range(80)]  # 80 views (no order) in 40 s
    + [ev("u3", "i0", 0), ev("u3", "i1", 60)]
)


def test_every_removed_event_has_exactly_one_reason(spark):
    cfg = CleanConfig(kcore=2)
    counts = C.removal_counts(C._per_user_counts(C.clean_events(frame(spark, MESSY), cfg), cfg))
    removed = {k: v for k, v in counts.items() if k.startswith("removed.")}
    assert counts["rows"] == len(MESSY) == counts["kept"] + sum(removed.values())
    assert removed == {
        "removed.exact_duplicate": 1, "removed.near_duplicate": 1, "removed.bot_user": 80,
        "removed.returned": 1, "removed.return_netted": 2, "removed.unmatched_return": 1, "removed.kcore": 0,
    }


def test_the_event_steps_shuffle_once_sort_once_and_make_one_arrow_pass(spark):
    plan = C.annotate_events(frame(spark, MESSY), CleanConfig(), partitions=4)
    physical = plan._jdf.queryExecution().executedPlan().toString()
    assert physical.count("Exchange ") == 1 and physical.count("Sort [") == 1
    assert physical.count("MapInArrow") == 1 and "Window" not in physical


@pytest.mark.parametrize("partitions", [1, 3])
def test_spark_gives_the_rows_the_arrow_steps_give(spark, partitions):
    cfg = CleanConfig()
    through_spark = C.annotate_events(frame(spark, MESSY), cfg, partitions=partitions).toArrow()
    in_arrow = steps.annotate(steps.sort_in_time_order(frame(spark, MESSY).toArrow()), cfg)
    columns = [*EVENTS_RAW.fieldNames(), C.REASON, C._SESSION, steps.SEQUENCE_EVENTS, steps.SEQUENCE_RANK]
    rows = sorted(map(repr, through_spark.select(columns).to_pylist()))
    assert len(rows) == len(MESSY) and rows == sorted(map(repr, in_arrow.select(columns).to_pylist()))


def test_spark_sorts_ties_in_the_order_the_arrow_steps_sort_them(spark):
    rows = [
        ev("u", item, 0, event_type, quantity, price, order_id)
        for item in ("b", "a", "B", "ä") for event_type in ("return", "cart", "view", "purchase", "click")
        for quantity, price, order_id in ((None, 1.0, "o2"), (2, None, "o1"), (1, 1.0, None), (1, float("nan"), "o1"))
    ] + [ev("U", "a", 0), ev("u", "a", -1)] + [ev("p", "a", 0, price=p) for p in (1.0, None, float("nan"), -1.0, 0.5)]
    in_spark = frame(spark, rows).repartition(1).sortWithinPartitions(*C.time_order(frame(spark, rows))).toArrow()
    in_arrow = steps.sort_in_time_order(frame(spark, rows).toArrow())
    assert list(map(repr, in_spark.to_pylist())) == list(map(repr, in_arrow.to_pylist()))  # repr: NaN ≠ NaN


def test_per_user_counts_report_the_users_and_events_the_sequence_cap_leaves_out(spark):
    # u1: 5 sequence events (2 beyond a cap of 3), a click (not a sequence event); u2: 3 events
    rows = [("u1", t, s) for t, s in (("view", "train"), ("view", "train"), ("cart", "train"), ("view", "valid"),
                                      ("purchase", "test"), ("click", None))] + [("u2", "view", "train")] * 3
    kept = spark.createDataFrame(rows, "user_id string, event_type string, split string").withColumn(
        C.REASON, F.lit(None).cast("string"))
    counts = C._per_user_counts(kept, CleanConfig(max_sequence_length=3))
    assert (counts.users, counts.capped, counts.beyond_cap) == (2, 1, 2)
    assert C._per_user_counts(kept, CleanConfig(max_sequence_length=5)).capped == 0


def write_bronze(ctx, spark):
    ctx.warehouse.write("events_raw", frame(spark, MESSY), mode="overwrite", partition_by=["dt"])
    catalog = spark.createDataFrame([
        ("i0", " Blue  Cup", "d0", "Cups", 2.0, "{}", "s"), ("i0", "blue cup", None, "cups", 4.0, None, "s"),
        ("i1", "Plate", None, "plates", None, None, "s"), ("i9", "Unsold", None, "cups", None, None, "s"),
    ], ITEMS_RAW)
    ctx.warehouse.write("items_raw", catalog, mode="overwrite")


def test_run_clean_end_to_end_and_idempotent(spark, tmp_path):
    ctx = RunContext.create(spark, load_config(overrides=[f"run.warehouse={tmp_path}"]), run_id="t1")
    write_bronze(ctx, spark)
    result = C.run_clean(ctx)
    removed = sum(v for k, v in result.counts.items() if k.startswith("removed."))
    assert result.stage == "clean" and not result.skipped
    assert result.rows_in == len(MESSY) == result.rows_out + removed
    assert result.counts["removed.bot_user"] == 80 and result.counts["removed.kcore"] == 0
    assert result.counts["users"] == 3 and result.counts["sequences"] == 3
    assert result.counts["users_capped"] == result.counts["events_beyond_cap"] == 0  # no history over 200
    assert result.counts["targets.valid"] == result.counts["targets.test"] == 2  # u1, u2; u3 has 2 events
    assert set(result.tables) == set(C.OUTPUT_TABLES)

    tables = {name: deltalake.DeltaTable(ctx.warehouse.uri(name)) for name in C.OUTPUT_TABLES}
    assert {name: t.version() for name, t in tables.items()} == result.tables
    arrow = {name: read_arrow(ctx.warehouse.uri(name)) for name in tables}  # not to_pyarrow_table: see arrow_reader
    assert arrow["events"].num_rows == result.rows_out
    assert tables["events"].metadata().partition_columns == ["dt"]
    for name, schema in (("events", EVENTS), ("items", ITEMS), ("sequences", SEQUENCES),
                         ("sequence_targets", SEQUENCE_TARGETS)):
        assert ctx.warehouse.read(name).columns == schema.fieldNames(), name
    events = ctx.warehouse.read("events")
    assert events.where("event_type = 'return'").count() == 0
    assert {r.session_id for r in events.where("user_id = 'u2'").collect()} == {"u2-1", "u2-2"}
    assert events.where("user_id = 'u2' AND item_id = 'i1' AND event_type = 'purchase'").first().quantity == 2
    items = {r.item_id: r for r in ctx.warehouse.read("items").collect()}
    assert set(items) == {"i0", "i1", "i2", "i3", "i9"} and result.counts["items"] == 5
    assert items["i0"].title == "blue cup" and items["i0"].price == 1.0  # median of 2, 4 and four events at 1.0
    assert items["i9"].price_imputed and items["i9"].price == 1.0
    sequences = {r.user_id: r for r in ctx.warehouse.read("sequences").collect()}
    assert sequences["u3"].item_ids == ["i0", "i1"] and sequences["u2"].length == 1
    targets = ctx.warehouse.read("sequence_targets")
    assert targets.join(ctx.warehouse.read("sequences"), "user_id").where("ts < array_max(timestamps)").count() == 0

    again = C.run_clean(ctx)
    assert again.skipped and again.tables == result.tables
    assert (again.rows_in, again.rows_out) == (result.rows_in, result.rows_out)
    assert {name: ctx.warehouse.version(name) for name in C.OUTPUT_TABLES} == result.tables


def test_run_clean_counts_agree_with_its_tables_under_time_fraction_and_kcore(spark, tmp_path):
    """run_clean's counts (one aggregation over the checkpointed events) agree with the tables it wrote
    under time_fraction + kcore: users, sequences, targets per split, rows_in = rows_out + removed."""
    overrides = [f"run.warehouse={tmp_path}", "clean.kcore=2", "clean.split.strategy=time_fraction",
                 "clean.split.valid_fraction=0.3", "clean.split.test_fraction=0.3", "clean.split.min_train_items=1"]
    ctx = RunContext.create(spark, load_config(overrides=overrides), run_id="tf")
    write_bronze(ctx, spark)
    result = C.run_clean(ctx)
    events, targets = ctx.warehouse.read("events"), ctx.warehouse.read("sequence_targets")
    assert result.counts["users"] == events.select("user_id").distinct().count() > 0
    assert result.counts["sequences"] == ctx.warehouse.read("sequences").count() > 0
    by_split = {r.split: r["count"] for r in targets.groupBy("split").count().collect()}
    assert (result.counts["targets.valid"], result.counts["targets.test"]) == (by_split.get("valid", 0),
                                                                               by_split.get("test", 0))
    assert result.counts["targets.valid"] + result.counts["targets.test"] > 0
    removed = sum(v for k, v in result.counts.items() if k.startswith("removed."))
    assert result.rows_in == len(MESSY) == result.rows_out + removed == events.count() + removed
