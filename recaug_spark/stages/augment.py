"""The augment stage: real training sequences plus augmented copies, with provenance on every row.

The rows come from ``recaug_spark.augment.engine.augment_sequences``; this module reads and writes
the warehouse: all users at once, or incrementally only the users whose training sequence changed.
The item side (``augmented_items``) is written by ``recaug_spark.stages.augment_items`` in the
same stage.
"""

from __future__ import annotations

import json

from pyspark.sql import DataFrame

from recaug_spark.augment.batch import MASK_TOKEN
from recaug_spark.augment.engine import augment_sequences
from recaug_spark.delta import replace_rows_by_key, rows_by_partition
from recaug_spark.export import augmented_table_metadata
from recaug_spark.runs import RunContext, StageResult
from recaug_spark.schemas import REAL_CHAIN
from recaug_spark.stages.augment_items import write_augmented_items


def run_augment(ctx: RunContext) -> StageResult:
    """Write ``augmented_sequences`` (real ∪ augmented): all users, or with ``augment.incremental``
    only the users whose training sequence changed since the last augment run."""
    cfg = ctx.cfg.augment
    refuse_time_on_order_only(ctx, cfg.branches)
    sequences_version = ctx.read_version("sequences")  # the versions the last complete clean named
    sequences = ctx.warehouse.read("sequences", version=sequences_version)
    previous = _previous_augment(ctx) if cfg.incremental else None
    if previous is not None:
        written, changed = _augment_incrementally(ctx, sequences, previous)
    else:
        augmented = augment_sequences(sequences, cfg, ctx.cfg.run.seed, ctx.run_id, ctx.cfg.hash,
                                      items=ctx.warehouse.read("items", version=ctx.input_version("items")),
                                      models_dir=ctx.models_dir)
        written = ctx.warehouse.write("augmented_sequences", augmented, mode="overwrite",
                                      partition_by=["operator_chain"], txn=ctx.txn("augment"),
                                      metadata=augmented_table_metadata(MASK_TOKEN))
        changed = None
    tables = {"augmented_sequences": written.version, SEQUENCES_READ: sequences_version}
    items_version, items_per_chain = write_augmented_items(ctx)
    if items_version is not None:
        tables["augmented_items"] = items_version
    if written.skipped:
        return StageResult("augment", rows_in=0, rows_out=0, tables=tables, skipped=True)
    per_chain = rows_by_partition(written.uri, "operator_chain", written.version)
    counts_by_chain = {f"rows.{chain}": rows for chain, rows in sorted(per_chain.items())}
    real = counts_by_chain.get(f"rows.{REAL_CHAIN}", 0)
    total = sum(counts_by_chain.values())
    counts = {**counts_by_chain, "augmentation_factor_x1000": int(round(1000 * total / real)) if real else 0}
    counts |= {f"items.rows.{chain}": rows for chain, rows in items_per_chain.items()}
    if cfg.incremental:
        counts["incremental"] = int(changed is not None)  # 0: no comparable previous run, so all users
        counts["users_reaugmented"] = changed if changed is not None else real
    return StageResult("augment", rows_in=real, rows_out=total, counts=counts, tables=tables)


SEQUENCES_READ = "read:sequences"  # in the runs table: the sequences version an augment run read


def refuse_time_on_order_only(ctx: RunContext, branches) -> None:
    """Raise before any Spark job when the events came from an order-only source (ingest marked
    ``events_raw``; see ``sources.ORDER_ONLY_FORMATS``) and a branch would read their fabricated time."""
    from recaug_spark.augment.registry import time_based_uses
    from recaug_spark.delta import commit_metadata
    from recaug_spark.sources import ORDER_ONLY_KEY

    uses = time_based_uses(branches)
    if not uses:
        return
    marks = commit_metadata(ctx.warehouse.uri("events_raw"), ctx.input_version("events_raw"))
    if marks.get(ORDER_ONLY_KEY) == "true":
        raise AugmentConfigError(
            "the events of this warehouse come from an order-only source (its timestamps are positions, not "
            f"time), but {'; '.join(uses)}: remove them from augment.branches, or ingest a source with real "
            "timestamps")


class AugmentConfigError(ValueError):
    """An augment configuration the warehouse's data cannot support."""


def _augment_fingerprint(config: dict) -> str:
    """What must not change for an incremental run to extend the previous one: seed and augment config."""
    augment = {k: v for k, v in config["augment"].items() if k != "incremental"}
    return json.dumps({"seed": config["run"]["seed"], "augment": augment}, sort_keys=True)


def _previous_augment(ctx: RunContext) -> dict | None:
    """The sequences version read by the last augment run, if that run is comparable to this one."""
    from pyspark.sql import functions as F

    if not (ctx.warehouse.exists("runs") and ctx.warehouse.exists("augmented_sequences")):
        return None
    last = (ctx.warehouse.read("runs").where(F.col("stage") == "augment")
            .orderBy(F.col("started_at").desc()).limit(1).collect())
    if not last:
        return None
    tables, config = json.loads(last[0].tables), json.loads(last[0].config)
    if SEQUENCES_READ not in tables or _augment_fingerprint(config) != _augment_fingerprint(
            json.loads(ctx.cfg.to_json())):
        return None
    return {"sequences_version": tables[SEQUENCES_READ], "run_id": last[0].run_id}


def changed_users(before: DataFrame, after: DataFrame) -> DataFrame:
    """Users whose training sequence differs between two versions of ``sequences`` (new, changed or gone)."""
    from pyspark.sql import functions as F

    content = [c for c in before.columns if c != "user_id" and c in after.columns]
    old = before.select("user_id", F.struct(*content).alias("_old"))
    new = after.select("user_id", F.struct(*content).alias("_new"))
    return (old.join(new, "user_id", "full_outer")
            .where(~F.col("_old").eqNullSafe(F.col("_new"))).select("user_id"))


def _augment_incrementally(ctx: RunContext, sequences: DataFrame, previous: dict):
    """Re-augment the changed users and replace exactly their rows (one copy-on-write commit)."""
    from pyspark import StorageLevel

    before = ctx.warehouse.read("sequences", version=previous["sequences_version"])
    changed = changed_users(before, sequences).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        count = changed.count()
        targets = sequences.join(changed, "user_id", "left_semi")
        augmented = augment_sequences(targets, ctx.cfg.augment, ctx.cfg.run.seed, ctx.run_id, ctx.cfg.hash,
                                      items=ctx.warehouse.read("items", version=ctx.input_version("items")),
                                      fit_on=sequences, models_dir=ctx.models_dir)
        written = replace_rows_by_key(augmented, ctx.warehouse.uri("augmented_sequences"), key="user_id",
                                      keys=changed, txn=ctx.txn("augment"), backend=ctx.warehouse.backend,
                                      metadata=augmented_table_metadata(MASK_TOKEN))
    finally:
        changed.unpersist()
    return written, count
