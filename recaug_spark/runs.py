"""A pipeline run: its id, config, warehouse, and the ``runs`` table that records each stage."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass, field

from pyspark.sql import SparkSession

from recaug_spark.config import Config
from recaug_spark.delta import Warehouse
from recaug_spark.schemas import RUNS


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class RunContext:
    """What every stage receives: the session, the validated config, the warehouse and the run id."""

    spark: SparkSession
    cfg: Config
    warehouse: Warehouse
    run_id: str

    @classmethod
    def create(cls, spark: SparkSession, cfg: Config, run_id: str | None = None) -> "RunContext":
        warehouse = Warehouse(spark, cfg.run.warehouse, cfg.delta.backend)
        return cls(spark, cfg, warehouse, run_id or cfg.run.run_id or new_run_id())

    @property
    def models_dir(self) -> str:
        """Where generator artifacts live: ``run.models``, else a ``models`` folder beside the warehouse."""
        if self.cfg.run.models:
            return self.cfg.run.models
        root = self.warehouse.root.rstrip("/")
        parent = root.rsplit("/", 1)[0] if "/" in root else "."
        return f"{parent}/models"

    def txn(self, stage: str) -> tuple[str, int]:
        """The Delta application transaction of one stage of this run: committing it twice is a no-op."""
        return (f"recaug/{self.run_id}/{stage}", 0)


@dataclass
class StageResult:
    """What a stage reports: rows in and out, quarantined rows, counts by reason, versions written."""

    stage: str
    rows_in: int
    rows_out: int
    rows_quarantined: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    skipped: bool = False  # the run id had already committed this stage

    def progress_line(self) -> str:
        rows = max(self.rows_in, self.rows_out)
        rate = rows / self.duration_s if self.duration_s > 0 else 0.0
        tail = " (already committed by this run id: nothing written)" if self.skipped else ""
        return (
            f"[{self.stage}] rows in {self.rows_in:,} → out {self.rows_out:,}"
            f" (quarantined {self.rows_quarantined:,}) in {self.duration_s:.1f}s, {rate:,.0f} rows/s{tail}"
        )


def record_stage(ctx: RunContext, result: StageResult, started_at: dt.datetime) -> int:
    """Append one row to the ``runs`` table (idempotent per run id and stage); returns its version."""
    row = (
        ctx.run_id, result.stage, started_at, float(result.duration_s), int(result.rows_in), int(result.rows_out),
        int(result.rows_quarantined), json.dumps(result.counts, sort_keys=True),
        json.dumps(result.tables, sort_keys=True), ctx.cfg.hash, ctx.cfg.to_json(),
    )
    df = ctx.spark.createDataFrame([row], RUNS).coalesce(1)
    written = ctx.warehouse.write("runs", df, mode="append", txn=ctx.txn(f"runs/{result.stage}"))
    return written.version


def timed(stage_fn, ctx: RunContext) -> StageResult:
    """Run a stage, time it, record it in ``runs`` and return its result."""
    started_at = dt.datetime.now(dt.timezone.utc)
    clock = time.perf_counter()
    result = stage_fn(ctx)
    result.duration_s = time.perf_counter() - clock
    result.tables["runs"] = record_stage(ctx, result, started_at)
    return result
