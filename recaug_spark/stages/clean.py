"""Clean stage: bronze ``events_raw``/``items_raw`` → silver ``events``, ``items``, ``sequences``,
``sequence_targets``.

The per-user steps are pure functions of Arrow tables (:mod:`recaug_spark.stages.clean_steps`),
testable without Spark on a handful of rows. Removed events are never dropped along the way: they
carry a reason in the ``_reason`` column (null = kept), so the stage reconciles exactly
(``rows_in = rows_out + Σ removed.<reason>``) from one ``groupBy`` at the end, and each event is
counted under exactly one reason.

Reasons, in precedence order: a step only looks at the events that no earlier step removed.

==================  =========================================================================
exact_duplicate     all ``events_raw`` columns equal to another event's (the first copy stays)
near_duplicate      same user, item and event type at most ``clean.near_duplicate_seconds`` after
                    the previous such event (chains collapse onto their first event; 0 disables)
bot_user            every event of a user with more than ``bots.max_events_per_minute`` events in
                    some 60-second span of one UTC day, or more than ``bots.max_events_per_day``
                    in one UTC day (counted after de-duplication)
returned            a purchase whose whole quantity was netted away by later returns
return_netted       a return fully netted against the user's earlier purchases of the item
unmatched_return    a return with nothing, or not enough, bought before it to net against
kcore               a user or item left with fewer than ``clean.kcore`` interactions
==================  =========================================================================

Returns netting is **oldest purchase first** (FIFO): a return of ``q`` units consumes the user's
earliest not-yet-netted purchases of the same item that happened before it (a purchase at the
same timestamp counts as before). A partly matched return still nets what it can; the return row
itself is counted as ``unmatched_return``. Null quantities count as 1, negative ones (online-retail
credit notes) by their absolute value. Netting is a queue per (user, item), run only for the pairs
that have a return.

Event order (sequences, sessions, the split) is ``ts`` then a deterministic tie-breaker: item_id,
event type (view < cart < purchase < return), order_id, quantity, price, source session id,
country, device, source, dt. Sessions: a new session after a gap of more than
``clean.session_gap_minutes`` between consecutive kept events of a user (any type);
``session_id = "<user_id>-<n>"`` with ``n`` the session's ordinal (1-based) in the user's history.

Split (decided here, before any augmentation): a user's sequence is their kept events whose type
is in ``clean.sequence_event_types``, capped to the most recent ``clean.max_sequence_length``.

* ``leave_one_out``: last event → ``test``, second-to-last → ``valid``, the rest → ``train``; users
  with fewer than ``split.min_train_items + 2`` sequence events keep everything in ``train``.
* ``time_fraction``: two global cut-offs on the **time range** [first, last] of all kept sequence
  events: ``test`` = events at or after ``last − test_fraction·range``, ``valid`` = events at or
  after ``last − (test_fraction + valid_fraction)·range``, the rest ``train``. (A time-range cut is
  exact and deterministic from one min/max; ingest already drops absurd timestamps.) Users with
  fewer than ``split.min_train_items`` training events are not evaluated: their later events get
  no split and no target.

``sequences`` holds the training part only; the held-out events go to ``sequence_targets``, a
separate table, so that later stages cannot read a target by accident.

Performance: the events are shuffled once (hash of user_id) and sorted once within partitions,
in time order; one vectorized Arrow pass over each partition's whole users
(:mod:`recaug_spark.stages.clean_steps`: numpy and pyarrow compute, no per-row Python except the
netting queue of (user, item) pairs with a return) computes duplicates, bots, netting, sessions
and the split's counts. The annotated frame (needed columns only) is materialized once (a reliable
checkpoint under the warehouse that survives a lost executor, :func:`materialize`) and feeds all
the counts (one aggregation, :func:`_per_user_counts`) and the four tables; ``events`` is
rebalanced by ``dt`` before its write (one file per day instead of tasks × days small files) and
``sequences`` are collected by Spark (arrays sorted by sequence position, no Python round trip).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager

from pyspark.sql import Column, DataFrame, Row, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recaug_spark.checkpoints import checkpoint, stage_checkpoints
from recaug_spark.config import CleanConfig
from recaug_spark.delta import Warehouse, WriteResult
from recaug_spark.runs import RunContext, StageResult
from recaug_spark.schemas import (
    EVENTS,
    ITEMS,
    ITEMS_RAW,
    SEQUENCE_TARGETS,
    SEQUENCES,
)
from recaug_spark.stages import clean_steps as steps

STAGE = "clean"
log = logging.getLogger(__name__)
REASONS = steps.REASONS
REASON, _SESSION = steps.REASON, steps.SESSION
_POS = "_seq_pos"  # 1-based position in the user's (capped) sequence
OUTPUT_TABLES = ("events", "items", "sequences", "sequence_targets")
# What the outputs need from the annotated events (the materialized frame holds only these).
_KEPT_COLUMNS = (*[c for c in steps.RAW_COLUMNS if c != "session_id"], REASON, _SESSION, "split", _POS)


def _alive() -> Column:
    return F.col(REASON).isNull()


def _ts_us() -> Column:
    return F.unix_micros(F.col("ts"))


# --------------------------------------------------------------------------------------------
# 1–3, 6. the per-user steps: one shuffle, one sort, one vectorized Python pass
# --------------------------------------------------------------------------------------------

def _type_rank() -> Column:
    ranks = list(steps.TYPE_RANKS.items())
    rank = F.when(F.col("event_type") == ranks[0][0], ranks[0][1])
    for event_type, value in ranks[1:]:
        rank = rank.when(F.col("event_type") == event_type, value)
    return rank.otherwise(len(ranks))


def time_order(df: DataFrame) -> list[Column]:
    """The sort key of the per-user pass (``steps.sort_in_time_order`` is the same order)."""
    tiebreak = [F.col(c) for c in steps.TIEBREAK if c in df.columns]
    return [F.col("user_id"), F.col("ts"), F.col("item_id"), _type_rank(), F.col("event_type"), *tiebreak]


def _per_user_pass(df: DataFrame, cfg: CleanConfig, *, remove: bool, partitions: int | None) -> DataFrame:
    """Shuffle by user, sort in time order, run :func:`steps.annotate` on whole users."""
    df = df.repartition(partitions, "user_id") if partitions else df.repartition("user_id")
    df = df.sortWithinPartitions(*time_order(df))
    outputs = [
        T.StructField(REASON, T.StringType()), T.StructField(_SESSION, T.StringType()),
        T.StructField(steps.SEQUENCE_EVENTS, T.LongType()), T.StructField(steps.SEQUENCE_RANK, T.LongType()),
    ]
    schema = T.StructType([f for f in df.schema if f.name not in {f.name for f in outputs}] + outputs)

    def annotate_partition(batches):
        for table in steps.whole_users(batches):
            yield from steps.annotate(table, cfg, remove=remove).to_batches()

    return df.mapInArrow(annotate_partition, schema)


# --------------------------------------------------------------------------------------------
# 7. k-core (iterative: one small aggregation per round)
# --------------------------------------------------------------------------------------------

def kcore_pairs(interactions: DataFrame, k: int) -> DataFrame:
    """(user_id, item_id, n) pairs left once every user and item has at least ``k`` interactions.

    Iterates to a fixed point; each round is checkpointed (:func:`recaug_spark.checkpoints.checkpoint`,
    reliable: it survives a lost executor) so the plan stays short.
    """
    pairs = checkpoint(interactions.groupBy("user_id", "item_id").agg(F.count(F.lit(1)).alias("n")))
    size = pairs.count()
    while size > 0:
        users = pairs.groupBy("user_id").agg(F.sum("n").alias("_u")).where(F.col("_u") >= k).select("user_id")
        items = pairs.groupBy("item_id").agg(F.sum("n").alias("_i")).where(F.col("_i") >= k).select("item_id")
        kept = checkpoint(pairs.join(users, "user_id", "left_semi").join(items, "item_id", "left_semi"))
        kept_size = kept.count()
        pairs = kept.select("user_id", "item_id", "n")
        if kept_size == size:
            break
        size = kept_size
    return pairs


def mark_kcore(df: DataFrame, k: int, event_types: Sequence[str]) -> DataFrame:
    """Label the kept events of users and items outside the ``k``-core of interactions.

    Interactions are the kept events whose type is in ``event_types`` (counted with
    multiplicity). Every kept event (of any type) of a dropped user or item is labelled.
    """
    if REASON not in df.columns:
        df = df.withColumn(REASON, F.lit(None).cast(T.StringType()))
    if k <= 0:
        return df
    pairs = kcore_pairs(df.where(_alive() & F.col("event_type").isin(*event_types)).select("user_id", "item_id"), k)
    users = pairs.select("user_id").distinct().withColumn("_core_user", F.lit(True))
    items = pairs.select("item_id").distinct().withColumn("_core_item", F.lit(True))
    df = df.join(users, "user_id", "left").join(items, "item_id", "left")
    outside = _alive() & (F.col("_core_user").isNull() | F.col("_core_item").isNull())
    return df.withColumn(REASON, F.when(outside, F.lit("kcore")).otherwise(F.col(REASON))).drop(
        "_core_user", "_core_item")


# --------------------------------------------------------------------------------------------
# 8. sequences and the split
# --------------------------------------------------------------------------------------------

def time_cutoffs(df: DataFrame, cfg: CleanConfig) -> tuple[int, int] | None:
    """``(valid_start_us, test_start_us)`` for ``time_fraction``: cuts of the kept sequence events'
    time range. ``None`` when there is no such event. One small aggregation (an action)."""
    row = (
        df.where(_alive() & F.col("event_type").isin(*cfg.sequence_event_types))
        .agg(F.min(_ts_us()).alias("lo"), F.max(_ts_us()).alias("hi"))
        .first()
    )
    if row is None or row.lo is None:
        return None
    span = row.hi - row.lo
    test_start = row.hi - round(cfg.split.test_fraction * span)
    valid_start = test_start - round(cfg.split.valid_fraction * span)
    return valid_start, test_start


def _is_sequence_event(cfg: CleanConfig) -> Column:
    return (_alive() & F.col("event_type").isin(*cfg.sequence_event_types)).cast("int")


def _split_labels(df: DataFrame, cfg: CleanConfig, cutoffs: tuple[int, int] | None) -> DataFrame:
    """``split`` and ``_seq_pos`` from ``_n`` and ``_k`` (a projection, plus one pass for time_fraction)."""
    split_cfg = cfg.split
    length = F.least(F.col("_n"), F.lit(cfg.max_sequence_length))
    from_end = F.col("_n") - F.col("_k") + 1  # 1 = the user's last sequence event
    in_sequence = (_is_sequence_event(cfg) == 1) & (from_end <= F.lit(cfg.max_sequence_length))
    df = df.withColumn(_POS, F.when(in_sequence, (F.col("_k") - (F.col("_n") - length)).cast("int")))
    if split_cfg.strategy == "leave_one_out":
        held_out = length >= F.lit(split_cfg.min_train_items + 2)
        split = (
            F.when(~in_sequence, F.lit(None).cast("string"))
            .when(held_out & (from_end == 1), "test")
            .when(held_out & (from_end == 2), "valid")
            .otherwise("train")
        )
        return df.withColumn("split", split).drop("_n", "_k")
    if cutoffs is None:
        raise ValueError("clean.split.strategy is 'time_fraction': pass cutoffs=time_cutoffs(df, cfg)")
    valid_start, test_start = cutoffs
    raw_split = (
        F.when(~in_sequence, F.lit(None).cast("string"))
        .when(_ts_us() >= F.lit(test_start), "test")
        .when(_ts_us() >= F.lit(valid_start), "valid")
        .otherwise("train")
    )
    df = df.withColumn("split", raw_split)
    train_events = F.sum((F.col("split") == "train").cast("int")).over(
        Window.partitionBy("user_id")
    )
    not_evaluated = F.col("split").isin("valid", "test") & (train_events < F.lit(split_cfg.min_train_items))
    df = df.withColumn("split", F.when(not_evaluated, F.lit(None).cast("string")).otherwise(F.col("split")))
    return df.withColumn(_POS, F.when(F.col("split").isNotNull(), F.col(_POS))).drop("_n", "_k")


def build_sequences(df: DataFrame, *, session_column: str = "session_id") -> DataFrame:
    """One row per user with a training part: the time-ordered arrays of their 'train' events.

    ``df``: :func:`split_events`' output (or a filter or projection of it), in any layout. Spark
    builds the arrays itself (no Python round trip): each user's 'train' events are collected as
    structs led by ``_seq_pos`` (their position in the sequence, unique and increasing in time order)
    and sorted by it, so the order is the time order whatever the order of collection. The rows equal
    :func:`recaug_spark.stages.clean_steps.sequences_of` on the same events
    (tests/test_clean_speed_digest.py).
    """
    fields = [(name, session_column if source == "session_id" else source) for name, source in steps.SEQUENCE_FIELDS]
    structs = F.struct(F.col(_POS), *[F.col(source).alias(name) for name, source in fields])
    events = F.sort_array(F.collect_list(structs))
    sequences = df.where(F.col("split") == "train").groupBy("user_id").agg(events.alias("_events")).select(
        "user_id", *[F.col(f"_events.{name}").alias(name) for name, _ in fields], F.size("_events").alias("length"),
    )
    return conform(sequences, SEQUENCES)


def build_targets(df: DataFrame) -> DataFrame:
    """The held-out events: user_id, split ('valid'/'test'), item_id, ts, event_type."""
    return conform(df.where(F.col("split").isin("valid", "test")), SEQUENCE_TARGETS)


# --------------------------------------------------------------------------------------------
# 4–5. items: canonical text and prices
# --------------------------------------------------------------------------------------------

def normalize_text(column: Column | str) -> Column:
    """Collapse every run of whitespace to one space, trim, lower-case; empty → null."""
    column = F.col(column) if isinstance(column, str) else column
    text = F.lower(F.trim(F.regexp_replace(column, r"[\s\p{Z}]+", " ")))
    return F.when(text != "", text)


def valid_price(column: Column | str) -> Column:
    """The price when it is a finite number > 0, else null."""
    column = F.col(column) if isinstance(column, str) else column
    return F.when((column > 0) & ~F.isnan(column) & (column < float("inf")), column)


def canonical_items(items_raw: DataFrame, events: DataFrame) -> DataFrame:
    """One row per item_id found in ``items_raw`` or ``events`` (the kept events).

    Title, description and category: normalized (:func:`normalize_text`), then the most frequent
    value among the item's ``items_raw`` rows, ties → the lexicographically smallest; attributes:
    the most frequent JSON string likewise. Price: the median of the item's valid prices from
    ``items_raw`` rows and events (each row one observation); else the median of its category's
    item prices (``price_imputed`` = true); else null.

    Example::

        # spellings "  White  Mug ", "white mug", "WHITE\tMUG", "Red mug" → title "white mug"
        canonical_items(items_raw, events).select("item_id", "title", "price", "price_imputed")
    """
    text = items_raw.groupBy("item_id").agg(
        F.mode(normalize_text("title"), True).alias("title"),
        F.mode(normalize_text("description"), True).alias("description"),
        F.mode(normalize_text("category"), True).alias("category"),
        F.mode(F.when(F.trim("attributes") != "", F.col("attributes")), True).alias("attributes"),
    )
    # Every price observation, counted per (item, price) first: a fast hash aggregation shrinks the
    # events to their distinct prices before the exact median (an object aggregation that falls
    # back to sorting its input when a task sees many items). Yields every item seen anywhere.
    observed = (
        events.select("item_id", valid_price("price").alias("price"))
        .groupBy("item_id", "price").agg(F.count(F.lit(1)).alias("n"))
        .unionByName(items_raw.select("item_id", valid_price("price").alias("price"), F.lit(1).cast("long").alias("n")))
    )
    median = F.percentile(F.col("price"), F.lit(0.5), F.col("n"))  # = the median of the expanded list
    prices = observed.groupBy("item_id").agg(median.alias("price"))
    per_item = prices.join(text, "item_id", "left")
    category_price = F.when(
        F.col("category").isNotNull(), F.median("price").over(Window.partitionBy("category"))
    )
    items = per_item.withColumn("_category_price", category_price).select(
        "item_id", "title", "description", "category",
        F.coalesce("price", "_category_price").alias("price"),
        (F.col("price").isNull() & F.col("_category_price").isNotNull()).alias("price_imputed"),
        "attributes",
    )
    return conform(items, ITEMS)


# --------------------------------------------------------------------------------------------
# Counts, schemas
# --------------------------------------------------------------------------------------------

def conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """Select ``schema``'s columns in order, cast to its types (absent ones as nulls)."""
    return df.select(*[
        (F.col(f.name) if f.name in df.columns else F.lit(None)).cast(f.dataType).alias(f.name) for f in schema
    ])


def removal_counts(per_user: Row) -> dict[str, int]:
    """``{"rows": all events, "kept": kept events, "removed.<reason>": n for every reason}`` from the
    one aggregation :func:`_per_user_counts` makes (no action of its own). Rows with a reason outside
    :data:`REASONS` are in ``rows`` only: :func:`_reconciled_counts` refuses them."""
    return {"rows": int(per_user.rows), "kept": int(per_user.kept),
            **{f"removed.{reason}": int(per_user[f"removed_{reason}"]) for reason in REASONS}}


def annotate_events(df: DataFrame, cfg: CleanConfig, *, partitions: int | None = None) -> DataFrame:
    """The removal steps and sessions on ``events_raw`` rows: every input row comes out once, with
    ``_reason``, the computed session id in ``_session`` (null for removed rows), and ``_n``/``_k``
    for :func:`split_events`.

    One shuffle (hash of user_id), one sort within partitions and one vectorized pass over whole
    users (:func:`recaug_spark.stages.clean_steps.annotate`). ``clean.kcore`` > 0 adds the k-core
    rounds and a second per-user pass for the sessions and counts of the events left.
    """
    df = _per_user_pass(df, cfg, remove=True, partitions=partitions)
    if cfg.kcore > 0:
        df = mark_kcore(df.drop(_SESSION, steps.SEQUENCE_EVENTS, steps.SEQUENCE_RANK), cfg.kcore,
                        cfg.sequence_event_types)
        df = _per_user_pass(df, cfg, remove=False, partitions=partitions)
    return df


def split_events(df: DataFrame, cfg: CleanConfig, *, cutoffs: tuple[int, int] | None = None) -> DataFrame:
    """Add ``split`` ('train' / 'valid' / 'test', null for events outside sequences) and ``_seq_pos``
    to :func:`annotate_events`' output. ``cutoffs`` (from :func:`time_cutoffs`) is required for
    ``time_fraction``.

    Example::

        # leave_one_out: a user with 5 view events → 3 train, the 4th valid, the 5th test
        split_events(annotate_events(events_raw, CleanConfig()), CleanConfig()).select("ts", "split")
    """
    return _split_labels(df, cfg, cutoffs)


def clean_events(df: DataFrame, cfg: CleanConfig, *, partitions: int | None = None) -> DataFrame:
    """All event steps: :func:`annotate_events` then the split (``split``, ``_seq_pos``).

    ``time_fraction`` runs one action for the time range; :func:`run_clean` materializes before it.
    """
    df = annotate_events(df, cfg, partitions=partitions)
    cutoffs = (time_cutoffs(df, cfg) or (0, 0)) if cfg.split.strategy == "time_fraction" else None
    return split_events(df, cfg, cutoffs=cutoffs)


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------

def materialize(df: DataFrame) -> DataFrame:
    """``df`` computed once into the stage's checkpoint folder, its partitioning and row order kept
    (so :func:`build_sequences` can still cut users without a shuffle).

    A reliable checkpoint into the stage's folder under the warehouse
    (:func:`recaug_spark.checkpoints.checkpoint`), not a local one: a local checkpoint's blocks die
    with their executor and the stage then failed with ``CHECKPOINT_RDD_BLOCK_ID_NOT_FOUND``; these
    files outlive it, and the plan stays truncated (``persist`` would keep it whole). Cost against
    the local checkpoint: see docs/pipeline.md ("Executor loss").
    """
    return checkpoint(df)


def release(materialized: DataFrame) -> None:
    """Free a :func:`materialize` result's cached blocks now, not at the driver's next garbage collection
    (its files go with the stage's checkpoint folder)."""
    materialized._jdf.logicalPlan().rdd().unpersist(False)


def _per_user_counts(events: DataFrame, cfg: CleanConfig) -> Row:
    """users (with a kept event), sequences (users with a training part), valid and test targets, and
    the users whose history ``clean.max_sequence_length`` capped (``capped``) with the oldest events it
    left out of their sequence (``beyond_cap``; their held-out targets are the last events either way);
    and, over every row of ``events``: ``rows``, ``kept``, one ``removed_<reason>`` per :data:`REASONS`
    and ``unknown`` (rows with a reason not in it). One aggregation (an action), so the stage reads
    its annotated events once for all its counts."""
    cap = F.lit(cfg.max_sequence_length)
    total = lambda name: F.coalesce(F.sum(name), F.lit(0)).alias(name)  # noqa: E731
    reasons = {f"removed_{reason}": F.col(REASON) == reason for reason in REASONS}
    reasons["unknown"] = F.col(REASON).isNotNull() & ~F.col(REASON).isin(*REASONS)
    return events.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("rows"), F.sum(_alive().cast("long")).alias("kept"),
        *[F.sum(when.cast("long")).alias(name) for name, when in reasons.items()],
        F.max((F.col("split") == "train").cast("int")).alias("seq"),
        F.sum((F.col("split") == "valid").cast("int")).alias("valid"),
        F.sum((F.col("split") == "test").cast("int")).alias("test"),
        F.sum(_is_sequence_event(cfg)).alias("n_seq"),
    ).agg(
        F.coalesce(F.sum((F.col("kept") > 0).cast("long")), F.lit(0)).alias("users"),
        F.coalesce(F.sum("seq"), F.lit(0)).alias("sequences"), total("valid"), total("test"),
        F.sum((F.col("n_seq") > cap).cast("long")).alias("capped"),
        F.coalesce(F.sum(F.greatest(F.col("n_seq") - cap, F.lit(0))), F.lit(0)).alias("beyond_cap"),
        *[total(name) for name in ("rows", "kept", *reasons)],
    ).first()


@contextmanager
def _timed(what: str):
    start = time.perf_counter()
    yield
    log.info("clean: %s in %.1fs", what, time.perf_counter() - start)


def _recorded_counts(ctx: RunContext) -> dict[str, int]:
    if not ctx.warehouse.exists("runs"):
        return {}
    rows = (ctx.warehouse.read("runs").where((F.col("run_id") == ctx.run_id) & (F.col("stage") == STAGE))
            .select("counts").collect())
    return json.loads(rows[0].counts) if rows else {}


def run_clean(ctx: RunContext) -> StageResult:
    """Read ``events_raw`` and ``items_raw``; write ``events`` (partitioned by ``dt``), ``items``,
    ``sequences`` (training part only) and ``sequence_targets`` (schemas in ``recaug_spark.schemas``),
    one Delta transaction per table carrying ``ctx.txn("clean")``: a second run with the same run
    id computes nothing and returns ``skipped=True``.

    ``counts``: ``removed.<reason>`` for every reason in :data:`REASONS`, ``users``, ``items``,
    ``sequences``, ``targets.valid``, ``targets.test``. Raises when ``rows_in`` ≠ ``rows_out`` +
    Σ ``removed.*`` or when the events table did not get exactly the kept rows.

    Example::

        ctx = RunContext.create(spark, load_config(overrides=["run.warehouse=/tmp/wh"]))
        result = run_clean(ctx)
        result.counts["removed.near_duplicate"], ctx.warehouse.read("sequences").count()
    """
    txn = ctx.txn(STAGE)
    raw = ctx.warehouse.read("events_raw", version=ctx.input_version("events_raw"))  # the last complete ingest's
    if all(ctx.warehouse.committed(name, txn) for name in OUTPUT_TABLES):  # a retry of a finished run
        return _skipped_result(ctx, raw)
    rows_in = raw.count()
    items_raw = _items_raw(ctx)
    partitions = int(ctx.spark.conf.get("spark.sql.shuffle.partitions"))

    with stage_checkpoints(ctx.spark, ctx.warehouse.root, ctx.run_id, STAGE):
        return _clean_outputs(ctx, raw, rows_in, items_raw, partitions)


def _clean_outputs(ctx: RunContext, raw: DataFrame, rows_in: int, items_raw: DataFrame,
                   partitions: int) -> StageResult:
    """Annotate, reconcile and write the four tables (inside the stage's checkpoint folder)."""
    cfg, txn = ctx.cfg.clean, ctx.txn(STAGE)
    checkpoints: list[DataFrame] = []
    try:
        annotated = _annotated(raw, cfg, partitions, checkpoints)
        removal, per_user = _reconciled_counts(annotated, rows_in, cfg)
        kept_events = annotated.where(_alive())
        written = _write_outputs(ctx.warehouse, kept_events, canonical_items(items_raw, kept_events), txn)
    finally:
        for done in checkpoints:
            release(done)
    items = written["items"]
    item_count = items.rows if items.rows >= 0 and not items.skipped else ctx.warehouse.read("items").count()
    return _result(rows_in, removal, per_user, item_count, written)


def _skipped_result(ctx: RunContext, raw: DataFrame) -> StageResult:
    """A retry of a run whose outputs are all committed: the recorded counts, nothing computed."""
    warehouse = ctx.warehouse
    return StageResult(
        STAGE, rows_in=raw.count(), rows_out=warehouse.read("events").count(), counts=_recorded_counts(ctx),
        tables={name: warehouse.committed_version(name, ctx.txn(STAGE)) for name in OUTPUT_TABLES}, skipped=True,
    )


def _items_raw(ctx: RunContext) -> DataFrame:
    if ctx.warehouse.exists("items_raw"):
        return ctx.warehouse.read("items_raw", version=ctx.input_version("items_raw"))
    return ctx.spark.createDataFrame([], ITEMS_RAW)


def _annotated(raw: DataFrame, cfg: CleanConfig, partitions: int, checkpoints: list[DataFrame]) -> DataFrame:
    """Every event with its removal reason, session and split (only the columns the outputs need),
    materialized. The checkpoints made are appended to ``checkpoints`` for the caller to release."""
    tagged = annotate_events(raw, cfg, partitions=partitions)
    cutoffs = None
    if cfg.split.strategy == "time_fraction":  # the cut-offs need one pass: keep it for the split
        tagged = materialize(tagged)
        checkpoints.append(tagged)
        cutoffs = time_cutoffs(tagged, cfg) or (0, 0)
    annotated = split_events(tagged, cfg, cutoffs=cutoffs)
    annotated = annotated.select(*[c for c in annotated.columns if c in _KEPT_COLUMNS])
    with _timed("annotate events"):
        annotated = materialize(annotated)
        checkpoints.append(annotated)
    return annotated


def _reconciled_counts(annotated: DataFrame, rows_in: int, cfg: CleanConfig) -> tuple[dict[str, int], Row]:
    """(:func:`removal_counts`, per-user counts) of the annotated events,
    from one aggregation (:func:`_per_user_counts`); raises unless every input event is either kept
    or removed for exactly one reason."""
    with _timed("counts"):
        per_user = _per_user_counts(annotated, cfg)
    if per_user.unknown:
        bad = annotated.where(F.col(REASON).isNotNull() & ~F.col(REASON).isin(*REASONS)).first()[REASON]
        raise RuntimeError(f"unknown removal reason {bad!r}; known: {list(REASONS)}")
    removal = removal_counts(per_user)
    removed = sum(v for k, v in removal.items() if k.startswith("removed."))
    rows_out = removal["kept"]
    if removal["rows"] != rows_in or rows_in != rows_out + removed:
        raise RuntimeError(
            f"clean lost track of events: events_raw has {rows_in:,} rows, the annotated frame "
            f"{removal['rows']:,}, kept {rows_out:,} + removed {removed:,}"
        )
    return removal, per_user


def _write_outputs(warehouse: Warehouse, kept_events: DataFrame, items: DataFrame,
                   txn: tuple[str, int]) -> dict[str, WriteResult]:
    """Overwrite the four output tables, each in one commit carrying ``txn``; their write results by name."""
    # One task per day folder (AQE splits a heavy day): a write clustered by user would
    # leave tasks × days small files, several times slower to write and to read.
    events = conform(kept_events.withColumn("session_id", F.col(_SESSION)), EVENTS).hint("rebalance", "dt")
    sequences = build_sequences(kept_events, session_column=_SESSION)
    targets = build_targets(kept_events)
    written = {}
    for name, df, partition_by in (("events", events, ["dt"]), ("items", items, []),
                                   ("sequences", sequences, []), ("sequence_targets", targets, [])):
        with _timed(f"write {name}"):
            written[name] = warehouse.write(name, df, mode="overwrite", partition_by=partition_by, txn=txn)
    return written


def _result(rows_in: int, removal: dict[str, int], per_user: Row, item_count: int,
            written: dict[str, WriteResult]) -> StageResult:
    """The stage's result; raises when the events table did not get exactly the kept events."""
    rows_out = removal["kept"]
    events_written = written["events"]
    if not events_written.skipped and events_written.rows >= 0 and events_written.rows != rows_out:
        raise RuntimeError(f"events table got {events_written.rows:,} rows, expected {rows_out:,}")
    counts = {k: v for k, v in removal.items() if k.startswith("removed.")}
    counts |= {
        "users": int(per_user.users), "items": int(item_count), "sequences": int(per_user.sequences),
        "targets.valid": int(per_user.valid), "targets.test": int(per_user.test),
        "users_capped": int(per_user.capped or 0), "events_beyond_cap": int(per_user.beyond_cap or 0),
    }
    return StageResult(
        STAGE, rows_in=rows_in, rows_out=rows_out, counts=counts,
        tables={name: result.version for name, result in written.items()},
        skipped=all(result.skipped for result in written.values()),
    )
