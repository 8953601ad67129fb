"""The generate stage: the embedded default shop, generated inside Spark and written as Delta tables.

Why: every later stage needs data with the shape of a real shop (popular and long-tail items,
heavy and light users, coherent sessions, a view → cart → purchase funnel, returns) and with the
mess real sources carry (duplicates, bots, unparsable values), in known quantities, at any size
from 10^4 to 10^8 events, without downloading anything. The shop's model and its planted mess are
described in :mod:`recaug_spark.synthetic.simulator`; its words in
:mod:`recaug_spark.synthetic.vocabulary`.

How it scales: nothing is generated on the driver. ``spark.range`` lays out user ids (or item
ids) over ``cfg.partitions`` partitions and ``mapInArrow`` turns each batch of ids into rows with
vectorized numpy (:func:`~recaug_spark.synthetic.simulator.simulate_user_events`, then
:mod:`recaug_spark.synthetic.rows`): one user's whole history is built in the batch holding that
user. The driver only computes the plan (:mod:`recaug_spark.synthetic.plan`): one scalar (the
activity scale that makes the event count land on ``cfg.events``) and small tables.

Determinism: every draw is keyed by (seed, stream, entity id, draw index)
(:mod:`recaug_spark.synthetic.draws`): users by their index, sessions by (user, session index),
events by (user, event index), items by item index. No draw depends on a partition or batch, so
the same seed gives the same rows whatever ``cfg.partitions`` or Arrow batch size.

Example::

    cfg = load_config(overrides=["generate.events=20000"])
    events = generate_events(spark, cfg.generate, seed=cfg.run.seed)
    items = generate_items(spark, cfg.generate, seed=cfg.run.seed)
    result = run_generate(RunContext.create(spark, cfg))  # writes generated_events, generated_items
"""

from __future__ import annotations

import functools
import uuid
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recaug_spark.config import GenerateConfig
from recaug_spark.runs import RunContext, StageResult
from recaug_spark.schemas import EVENT_TYPES, RAW_EVENT_FIELDS, RAW_ITEM_FIELDS
from recaug_spark.synthetic.plan import CatalogPlan, EventPlan, plan_catalog, plan_events
from recaug_spark.synthetic.rows import events_to_arrow, items_to_arrow
from recaug_spark.synthetic.simulator import simulate_user_events
from recaug_spark.synthetic.vocabulary import BAD_KINDS, EVENT_LABELS, ITEM_LABELS

# Re-exported: callers and tests import the generator's vocabulary and plans from this stage.
__all__ = [
    "BAD_KINDS", "EVENTS_TABLE", "EVENT_LABELS", "ITEMS_TABLE", "ITEM_LABELS", "CatalogPlan", "EventPlan",
    "events_to_arrow", "generate_events", "generate_items", "generated_tables", "items_to_arrow", "plan_catalog",
    "plan_events", "run_generate", "simulate_user_events",
]

EVENTS_TABLE = "generated_events"
ITEMS_TABLE = "generated_items"
_EVENTS_PER_CHUNK = 250_000  # bounds worker memory whatever the Arrow batch size


# --------------------------------------------------------------------------------------------
# Events (the numpy simulation is recaug_spark.synthetic.simulator)


def _event_batches(batches: Iterator[pa.RecordBatch], plan: EventPlan, with_labels: bool) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: user ids in, their events out, in chunks of ~_EVENTS_PER_CHUNK rows."""
    per_user = max(plan.organic_target / max(plan.n_users, 1), 1.0)
    chunk = max(1, int(_EVENTS_PER_CHUNK / per_user))
    for batch in batches:
        ids = batch.column(0).to_numpy(zero_copy_only=False).astype(np.int64)
        for begin in range(0, len(ids), chunk):
            events = simulate_user_events(ids[begin:begin + chunk], plan)
            if len(events["ts"]):
                yield events_to_arrow(events, plan, with_labels)


def _string_schema(fields, extra: tuple[str, ...] = ()) -> T.StructType:
    return T.StructType([T.StructField(name, T.StringType(), True) for name in (*fields, *extra)])


def generate_events(spark: SparkSession, cfg: GenerateConfig, seed: int, *, with_labels: bool = False) -> DataFrame:
    """The shop's clickstream as a lazy DataFrame of :data:`RAW_EVENT_FIELDS`, all strings.

    ``with_labels=True`` adds a ``planted`` column naming each row's planted mess (one of
    :data:`EVENT_LABELS`, null for organic rows and returns): ground truth for testing ingest and
    clean. Rows are identical for the same ``cfg`` (less ``partitions``) and ``seed``.

    Example::

        events = generate_events(spark, GenerateConfig(events=10_000), seed=7)
        events.groupBy("event_type").count().show()
    """
    plan = plan_events(cfg, seed)
    schema = _string_schema(RAW_EVENT_FIELDS, ("planted",) if with_labels else ())
    users = spark.range(0, plan.n_users + plan.n_bots, numPartitions=cfg.partitions)
    return users.mapInArrow(functools.partial(_event_batches, plan=plan, with_labels=with_labels), schema)


# --------------------------------------------------------------------------------------------
# Items


def _item_batches(batches: Iterator[pa.RecordBatch], catalog: CatalogPlan,
                  with_labels: bool) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        yield items_to_arrow(batch.column(0).to_numpy(zero_copy_only=False), catalog, with_labels)


def generate_items(spark: SparkSession, cfg: GenerateConfig, seed: int, *, with_labels: bool = False) -> DataFrame:
    """The shop's catalog as a lazy DataFrame of :data:`RAW_ITEM_FIELDS`, all strings.

    ``with_labels=True`` adds ``planted`` (``missing_price``, ``messy_text`` or null).

    Example::

        items = generate_items(spark, GenerateConfig(items=500), seed=7)
        items.select("title", "category", "price").show(3, truncate=False)
    """
    catalog = plan_catalog(cfg, seed)
    partitions = max(1, min(cfg.partitions, -(-cfg.items // 200_000)))
    schema = _string_schema(RAW_ITEM_FIELDS, ("planted",) if with_labels else ())
    ids = spark.range(0, cfg.items, numPartitions=partitions)
    return ids.mapInArrow(functools.partial(_item_batches, catalog=catalog, with_labels=with_labels), schema)


# --------------------------------------------------------------------------------------------
# The stage


def generated_tables(cfg: GenerateConfig) -> tuple[str, str]:
    """Where the generator writes (events, items): warehouse table names, or folders under ``output``."""
    if cfg.output:
        root = cfg.output.rstrip("/")
        return f"{root}/{EVENTS_TABLE}", f"{root}/{ITEMS_TABLE}"
    return EVENTS_TABLE, ITEMS_TABLE


def _label_counts(prefix: str, labels: tuple[str, ...]) -> list:
    return [F.sum(F.when(F.col("planted") == label, 1).otherwise(0)).alias(f"{prefix}{label}") for label in labels]


def run_generate(ctx: RunContext) -> StageResult:
    """Write ``generated_events`` and ``generated_items`` (Delta, overwrite, idempotent per run id).

    The counts are observed while the tables are written (one pass, exact for the rows written):
    ``events``, ``items``, ``events.<type>``, ``events.session_id_null``, ``users``, ``bot_users``
    and the planted mess: ``planted.duplicate``, ``planted.near_duplicate``, ``planted.bot``,
    ``planted.bad_rows`` with ``planted.bad.<kind>`` for each of :data:`BAD_KINDS`, and
    ``planted.items_missing_price``, ``planted.items_messy_text``. A re-run with the same run id
    writes nothing and returns ``skipped=True`` with no counts.
    """
    from pyspark.sql import Observation

    cfg, seed = ctx.cfg.generate, ctx.cfg.run.seed
    events_name, items_name = generated_tables(cfg)
    plan = plan_events(cfg, seed)
    tag = uuid.uuid4().hex[:8]

    event_obs = Observation(f"generate_events_{tag}")
    events = generate_events(ctx.spark, cfg, seed, with_labels=True).observe(
        event_obs, F.count(F.lit(1)).alias("events"),
        *[F.sum(F.when(F.col("event_type") == t, 1).otherwise(0)).alias(f"events.{t}") for t in EVENT_TYPES],
        F.sum(F.when(F.col("session_id").isNull(), 1).otherwise(0)).alias("events.session_id_null"),
        *_label_counts("planted.", ("duplicate", "near_duplicate", "bot")),
        *_label_counts("planted.bad.", BAD_KINDS),
    ).select(*RAW_EVENT_FIELDS)
    item_obs = Observation(f"generate_items_{tag}")
    items = generate_items(ctx.spark, cfg, seed, with_labels=True).observe(
        item_obs, F.count(F.lit(1)).alias("items"),
        *_label_counts("planted.items_", ITEM_LABELS),
    ).select(*RAW_ITEM_FIELDS)

    txn = ctx.txn("generate")
    written_events = ctx.warehouse.write(events_name, events, mode="overwrite", txn=txn)
    written_items = ctx.warehouse.write(items_name, items, mode="overwrite", txn=txn)
    tables = {EVENTS_TABLE: written_events.version, ITEMS_TABLE: written_items.version}
    counts: dict[str, int] = {}
    if not written_events.skipped:
        counts |= {name: int(value or 0) for name, value in event_obs.get.items()}
        counts["planted.bad_rows"] = sum(counts[f"planted.bad.{kind}"] for kind in BAD_KINDS)
        counts["users"] = plan.n_users
        counts["bot_users"] = plan.n_bots
    if not written_items.skipped:
        counts |= {name: int(value or 0) for name, value in item_obs.get.items()}
    return StageResult(
        stage="generate", rows_in=0, rows_out=counts.get("events", 0) + counts.get("items", 0), counts=counts,
        tables=tables, skipped=written_events.skipped and written_items.skipped,
    )
