"""The embedded default shop: determinism, shape, realism and exactly counted planted mess.

Spark-free tests check the numpy building blocks on known answers. Spark tests share one small
generation (10^4 events) collected to pandas, and one ``run_generate`` into a temporary warehouse
read back with ``deltalake``: every planted-mess count the stage reports is recomputed here from
the written rows alone, the way ingest and clean will have to find them.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recaug_spark.config import ConfigError, GenerateConfig, MessConfig, load_config
from recaug_spark.delta.arrow_reader import read_arrow
from recaug_spark.runs import RunContext
from recaug_spark.schemas import EVENT_TYPES, RAW_EVENT_FIELDS, RAW_ITEM_FIELDS
from recaug_spark.stages import generate as gen
from recaug_spark.synthetic import plan as P
from recaug_spark.synthetic import simulator as S
from recaug_spark.synthetic import vocabulary as V
from recaug_spark.synthetic.rows import events_to_arrow, items_to_arrow

SEED = 42
EVENTS = 10_000
TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


# ---------------------------------------------------------------------------------------------
# Spark-free building blocks


def test_permutation_is_a_bijection_and_inverts():
    perm = P.Permutation.create(SEED, "test", 2_000)
    index = np.arange(2_000)
    public = perm.forward(index)
    assert sorted(public) == list(index)
    assert not np.array_equal(public, index)  # the popularity rank does not show in the ids
    assert np.array_equal(perm.inverse(public), index)


def test_activity_scale_hits_the_target_exactly_under_the_cap():
    weights = np.array([1.0, 2.0, 3.0, 100.0])
    scale = P._activity_scale(weights, target=30.0, cap=10)
    # 100 * s is capped at 10, so s * (1 + 2 + 3) = 20.
    assert scale == pytest.approx(20.0 / 6.0, rel=1e-9)
    assert np.minimum(scale * weights, 10).sum() == pytest.approx(30.0)


def test_sessions_of_one_user_never_overlap_after_separation():
    users = np.array([0, 0, 0, 1, 1])
    starts = np.array([1_000, 1_100, 50_000, 1_000, 1_050])
    durations = np.array([600, 300, 10, 100, 100])
    separated = S._separate_sessions(users, starts, durations)
    # User 0: 1000-1600, then 1600 + 35 min gap = 3700 (not 1100); 50000 was free already.
    assert separated.tolist() == [1_000, 1_600 + S._MIN_SESSION_GAP_S, 50_000, 1_000,
                                  1_100 + S._MIN_SESSION_GAP_S]


def test_numpy_simulation_lands_on_the_target_and_ignores_chunking():
    cfg = GenerateConfig(events=50_000)
    plan = P.plan_events(cfg, SEED)
    users = np.arange(plan.n_users + plan.n_bots)
    whole = S.simulate_user_events(users, plan)
    assert len(whole["ts"]) == pytest.approx(50_000, rel=0.03)
    pieces = [S.simulate_user_events(users[i:i + 777], plan) for i in range(0, len(users), 777)]
    chunked = {name: np.concatenate([p[name] for p in pieces]) for name in whole}
    order_whole = np.lexsort((whole["ts"], whole["draw"], whole["key"], whole["planted"]))
    order_chunked = np.lexsort((chunked["ts"], chunked["draw"], chunked["key"], chunked["planted"]))
    for name in whole:
        assert np.array_equal(whole[name][order_whole], chunked[name][order_chunked]), name


def test_plans_reject_impossible_configs():
    with pytest.raises(ConfigError, match="max_events_per_user"):
        P.plan_events(GenerateConfig(events=10_000, users=10, max_events_per_user=100), SEED)
    with pytest.raises(ConfigError, match="generate.items"):
        P.plan_catalog(GenerateConfig(items=10, categories=12), SEED)
    with pytest.raises(ConfigError, match="generate.categories"):
        load_config(overrides=["generate.categories=17"])
    with pytest.raises(ConfigError, match="bad_row_rate"):
        load_config(overrides=["generate.mess.duplicate_rate=0.7", "generate.mess.bad_row_rate=0.5"])


# A small shop with every kind of planted mess, and the SHA-256 (first 16 hex digits) of its rows.
PINNED_MESS = MessConfig(duplicate_rate=0.03, near_duplicate_rate=0.03, bad_row_rate=0.05, return_rate=0.3,
                         missing_session_id_rate=0.1, missing_item_price_rate=0.1, messy_item_text_rate=0.3)
PINNED = {"events": (3_003, "c5f820683ed11b05"), "items": (150, "c9cf2f0d50d18671")}


def _digest(batch: pa.RecordBatch) -> str:
    digest = hashlib.sha256()
    for name, column in zip(batch.schema.names, batch.columns):
        digest.update(name.encode())
        for value in column.to_pylist():
            digest.update(b"\x00" if value is None else b"\x01" + value.encode())
    return digest.hexdigest()[:16]


def test_the_rows_of_a_seed_are_pinned_byte_for_byte():
    """Same seed, same bytes: a refactoring of the vocabulary, the draws, the simulator or the row
    rendering must not move one. Change the digests only for a deliberate change of the generated
    data (it changes every warehouse built on the default shop), and say so in the change."""
    cfg = GenerateConfig(events=3_000, items=150, mess=PINNED_MESS)
    plan = P.plan_events(cfg, 7)
    events = events_to_arrow(S.simulate_user_events(np.arange(plan.n_users + plan.n_bots), plan), plan,
                             with_labels=True)
    items = items_to_arrow(np.arange(cfg.items), plan.catalog, with_labels=True)
    assert set(events.column("planted").to_pylist()) == {None, *V.EVENT_LABELS}  # every path is covered
    assert set(items.column("planted").to_pylist()) == {None, *V.ITEM_LABELS}
    assert set(events.column("event_type").to_pylist()) == set(EVENT_TYPES)
    assert {"events": (events.num_rows, _digest(events)), "items": (items.num_rows, _digest(items))} == PINNED


# ---------------------------------------------------------------------------------------------
# Spark: one labelled generation, collected once


@pytest.fixture(scope="module")
def cfg() -> GenerateConfig:
    return GenerateConfig(events=EVENTS, partitions=3)


@pytest.fixture(scope="module")
def labelled(spark, cfg):
    events = gen.generate_events(spark, cfg, SEED, with_labels=True).toPandas()
    items = gen.generate_items(spark, cfg, SEED, with_labels=True).toPandas()
    events["time"] = pd.to_datetime(events["ts"], format=TS_FORMAT, errors="coerce", utc=True)
    return events, items


@pytest.fixture(scope="module")
def organic(labelled):
    """Rows with no planted mess (organic events and returns), with their item's category."""
    events, items = labelled
    clean = events[events["planted"].isna()]
    return clean.merge(items[["item_id", "category"]], on="item_id", how="left", validate="many_to_one")


def test_same_rows_whatever_the_partitioning(spark, cfg, labelled):
    two = gen.generate_events(spark, cfg.model_copy(update={"partitions": 2}), SEED)
    five = gen.generate_events(spark, cfg.model_copy(update={"partitions": 5}), SEED)
    assert two.rdd.getNumPartitions() == 2 and five.rdd.getNumPartitions() == 5
    rows_two = _sorted_rows(two.collect())
    assert rows_two == _sorted_rows(five.collect())
    events, _ = labelled  # partitions=3, with labels
    frame = events[list(RAW_EVENT_FIELDS)]
    assert _sorted_rows(frame.astype(object).where(frame.notna(), None).itertuples(index=False)) == rows_two


def _sorted_rows(rows) -> list[tuple]:
    """Rows as tuples in a total order (None sorts first)."""
    return sorted((tuple(r) for r in rows), key=lambda row: tuple((v is not None, v or "") for v in row))


def test_the_seed_changes_the_rows():
    cfg = GenerateConfig(events=5_000)
    one = S.simulate_user_events(np.arange(100), P.plan_events(cfg, SEED))
    other = S.simulate_user_events(np.arange(100), P.plan_events(cfg, SEED + 1))
    assert len(np.intersect1d(one["session"], other["session"])) == 0
    assert not np.array_equal(one["item"][:50], other["item"][:50])


def test_items_do_not_depend_on_batching():
    catalog = P.plan_catalog(GenerateConfig(items=1_000), SEED)
    whole = items_to_arrow(np.arange(1_000), catalog, with_labels=True)
    pieces = [items_to_arrow(np.arange(i, min(i + 333, 1_000)), catalog, with_labels=True)
              for i in range(0, 1_000, 333)]
    assert pa.Table.from_batches(pieces).equals(pa.Table.from_batches([whole]))


def test_columns_are_the_raw_fields_as_strings(spark, cfg, labelled):
    events = gen.generate_events(spark, cfg, SEED)
    items = gen.generate_items(spark, cfg, SEED)
    assert tuple(events.columns) == RAW_EVENT_FIELDS
    assert tuple(items.columns) == RAW_ITEM_FIELDS
    assert {f.dataType.simpleString() for f in [*events.schema, *items.schema]} == {"string"}
    frame, catalog = labelled
    assert set(frame["event_type"]) == set(EVENT_TYPES)
    assert frame["ts"].dropna().str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").mean() > 0.99
    assert len(catalog) == cfg.items and catalog["item_id"].is_unique
    attributes = catalog["attributes"].map(json.loads)
    assert all(set(a) == {"brand", "color", "material", "size"} for a in attributes)
    assert catalog["category"].nunique() == cfg.categories


def test_event_count_lands_near_the_target(labelled):
    events, _ = labelled
    assert abs(len(events) - EVENTS) <= 0.1 * EVENTS


def test_timestamps_stay_in_the_window(organic, cfg):
    start = pd.Timestamp(cfg.start_date, tz="UTC")
    assert organic["time"].notna().all()
    assert organic["time"].min() >= start
    assert organic["time"].max() < start + pd.Timedelta(days=cfg.days)


def test_item_popularity_is_skewed(organic, cfg):
    views = organic[organic["event_type"] == "view"]["item_id"].value_counts()
    top = views.iloc[: cfg.items // 10].sum()
    assert top / views.sum() > 0.4  # uniform popularity would give ~0.1


def test_user_activity_is_heavy_tailed(organic):
    per_user = organic["user_id"].value_counts()
    assert per_user.max() > 10 * per_user.median()
    assert per_user.iloc[: len(per_user) // 10].sum() / per_user.sum() > 0.3  # top 10% of users


def test_catalog_prices_are_lognormal_per_category(labelled, cfg):
    _, items = labelled
    priced = items[items["price"].notna()].assign(price=lambda f: f["price"].astype(float))
    assert (priced["price"] > 0).all()
    by_category = {c.name: c for c in V.CATEGORIES}
    for name, group in priced.groupby("category"):
        logs = np.log(group["price"])
        spec = by_category[name]
        assert np.exp(logs.median()) == pytest.approx(spec.price_median, rel=0.3), name
        assert logs.std() == pytest.approx(spec.price_sigma, abs=0.15), name


def test_valid_event_prices_are_positive_and_near_the_catalog_price(organic, labelled):
    _, items = labelled
    prices = organic.merge(items[["item_id", "price"]].rename(columns={"price": "list"}), on="item_id")
    prices = prices[prices["list"].notna()]
    ratio = prices["price"].astype(float) / prices["list"].astype(float)
    assert (prices["price"].astype(float) > 0).all()
    assert ratio.between(0.59, 1.0001).all()  # list price, or a 10-40% discount
    assert (ratio < 0.999).mean() == pytest.approx(S._DISCOUNT_RATE, abs=0.05)


def test_sessions_stay_mostly_in_one_category_and_follow_the_funnel(organic):
    sessions = organic[organic["session_id"].notna() & (organic["event_type"] != "return")]
    share = sessions.groupby("session_id")["category"].agg(lambda c: c.value_counts().iloc[0] / len(c))
    assert share.mean() > 0.85
    assert sessions.groupby("session_id")["user_id"].nunique().max() == 1
    # Every purchase follows a view and a cart of the same item in the same session (unless a
    # planted bad row replaced that view or cart: those rows are not in `organic`).
    first = sessions.groupby(["session_id", "item_id", "event_type"])["time"].min().unstack()
    bought = first[first["purchase"].notna()]
    complete = bought.dropna()
    assert len(complete) > 0.97 * len(bought) > 0
    assert (complete["view"] <= complete["cart"]).all() and (complete["cart"] <= complete["purchase"]).all()
    # Purchases of one session share one order id.
    assert sessions[sessions["event_type"] == "purchase"].groupby("session_id")["order_id"].nunique().max() == 1


def test_activity_peaks_in_the_local_evening(organic):
    offsets = {code: offset for code, _, offset in V.COUNTRIES}
    local = organic["time"] + pd.to_timedelta(organic["country"].map(offsets), unit="h")
    hours = local.dt.hour.value_counts()
    assert hours.reindex(range(18, 23)).sum() > 5 * hours.reindex(range(2, 6), fill_value=0).sum()


def test_planted_labels_match_the_rows(labelled):
    events, _ = labelled
    labels = events["planted"].value_counts()
    assert labels["duplicate"] > 0 and labels["near_duplicate"] > 0 and labels["bot"] > 0
    bots = events[events["planted"] == "bot"]
    assert set(bots["event_type"]) == {"view"}
    assert events[events["planted"] == "ts_future"]["ts"].str.startswith("2096").all()
    assert events[events["planted"] == "user_id_missing"]["user_id"].isna().all()


# ---------------------------------------------------------------------------------------------
# The stage: run_generate into a temporary warehouse


@pytest.fixture(scope="module")
def stage(spark, tmp_path_factory):
    warehouse = tmp_path_factory.mktemp("warehouse")
    config = load_config(overrides=[f"run.warehouse={warehouse}", f"generate.events={EVENTS}",
                                    "generate.partitions=3"])
    ctx = RunContext.create(spark, config, run_id="t1")
    result = gen.run_generate(ctx)
    events = read_arrow(ctx.warehouse.uri("generated_events")).to_pandas()
    items = read_arrow(ctx.warehouse.uri("generated_items")).to_pandas()
    return ctx, result, events, items


def test_run_generate_writes_both_tables_and_reports_them(stage):
    ctx, result, events, items = stage
    assert result.stage == "generate" and result.rows_in == 0 and not result.skipped
    assert tuple(events.columns) == RAW_EVENT_FIELDS and tuple(items.columns) == RAW_ITEM_FIELDS
    assert result.counts["events"] == len(events) and result.counts["items"] == len(items)
    assert result.rows_out == len(events) + len(items)
    assert result.tables == {"generated_events": 0, "generated_items": 0}
    assert sum(result.counts[f"events.{t}"] for t in EVENT_TYPES) == len(events)
    assert abs(len(events) - EVENTS) <= 0.1 * EVENTS


def test_second_run_with_the_same_run_id_is_skipped(stage):
    ctx, _, _, _ = stage
    again = gen.run_generate(RunContext.create(ctx.spark, ctx.cfg, run_id="t1"))
    assert again.skipped and again.rows_out == 0
    assert again.tables == {"generated_events": 0, "generated_items": 0}
    assert ctx.warehouse.version("generated_events") == 0 and ctx.warehouse.version("generated_items") == 0


def test_reported_mess_is_found_in_the_written_rows(stage):
    _, result, events, items = stage
    counts = result.counts
    numeric_price = pd.to_numeric(events["price"], errors="coerce")
    numeric_quantity = pd.to_numeric(events["quantity"], errors="coerce")
    parsed = pd.to_datetime(events["ts"], format=TS_FORMAT, errors="coerce", utc=True)
    catalog = set(items["item_id"])
    found = {
        "ts_unparsable": parsed.isna() & events["ts"].notna(),
        "ts_future": parsed.dt.year == 2096,
        "ts_too_old": parsed.dt.year == 1972,
        "user_id_missing": events["user_id"].isna(),
        "item_id_missing": events["item_id"].isna(),
        "item_id_unknown": events["item_id"].notna() & ~events["item_id"].isin(catalog),
        "price_not_positive": numeric_price <= 0,
        "price_not_numeric": events["price"].notna() & numeric_price.isna(),
        "quantity_negative": numeric_quantity < 0,
        "quantity_not_numeric": events["quantity"].notna() & numeric_quantity.isna(),
    }
    for kind, mask in found.items():
        assert int(mask.sum()) == counts[f"planted.bad.{kind}"], kind
    assert counts["planted.bad_rows"] == sum(counts[f"planted.bad.{k}"] for k in gen.BAD_KINDS) > 0
    assert counts["planted.bad_rows"] == pytest.approx(0.002 * EVENTS, rel=0.6)

    assert len(events) - len(events.drop_duplicates()) == counts["planted.duplicate"] > 0

    valid = events[parsed.notna() & events["user_id"].notna() & events["item_id"].notna()].assign(time=parsed)
    valid = valid.drop_duplicates().sort_values(["user_id", "item_id", "event_type", "time"])
    gap = valid.groupby(["user_id", "item_id", "event_type"])["time"].diff().dt.total_seconds()
    assert int(gap.between(1, 10).sum()) == counts["planted.near_duplicate"] > 0

    per_minute = valid.groupby(["user_id", valid["time"].dt.floor("min")]).size()
    machine_rate = per_minute[per_minute > 30].index.get_level_values("user_id").unique()
    assert len(machine_rate) == counts["bot_users"] == 3
    assert events["user_id"].isin(machine_rate).sum() == counts["planted.bot"]

    assert items["price"].isna().sum() == counts["planted.items_missing_price"] > 0
    assert counts["planted.items_messy_text"] > 0
    assert events["session_id"].isna().sum() == counts["events.session_id_null"]


def test_returns_refer_to_an_earlier_purchase_of_the_same_order(stage):
    _, result, events, _ = stage
    time = pd.to_datetime(events["ts"], format=TS_FORMAT, errors="coerce", utc=True)
    events = events.assign(time=time)
    returns = events[events["event_type"] == "return"]
    purchases = events[events["event_type"] == "purchase"].drop_duplicates(["user_id", "item_id", "order_id"])
    assert len(returns) == result.counts["events.return"] > 0
    assert returns["order_id"].notna().all() and returns["session_id"].isna().all()
    matched = returns.merge(purchases, on=["user_id", "item_id", "order_id"], suffixes=("", "_purchase"))
    assert len(matched) == len(returns)
    assert (matched["time"] > matched["time_purchase"]).all()
    assert (events[events["event_type"].isin(["view", "cart"])]["order_id"].isna()).all()
