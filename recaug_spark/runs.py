"""A pipeline run: its id, config, warehouse, and the ``runs`` table that records each stage."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass, field

from pyspark.sql import SparkSession

from recaug_spark.config import Config, ConfigError
from recaug_spark.delta import CommittedByConcurrentRun, Warehouse
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
        """Where generator artifacts live: ``run.models``, else the warehouse's own ``models`` folder
        (one per warehouse: two warehouses in one folder never publish over each other's models)."""
        return models_dir(self.cfg.run.models, self.warehouse.root)

    def input_version(self, table: str) -> int | None:
        """The version of ``table`` a stage must read: the one named by the last complete stage record
        that wrote it (see :func:`pinned_version`); None when no record names it (read the latest)."""
        return pinned_version(stage_records(self.warehouse.uri("runs")), table)

    def read_version(self, table: str) -> int:
        """:meth:`input_version`, or the latest version when no stage record names the table."""
        pinned = self.input_version(table)
        return self.warehouse.version(table) if pinned is None else pinned

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
    concurrent: str | None = None  # why a concurrent run with this run id committed it instead


    def progress_line(self) -> str:
        rows = max(self.rows_in, self.rows_out)
        rate = rows / self.duration_s if self.duration_s > 0 else 0.0
        tail = " (already committed by this run id: nothing written)" if self.skipped else ""
        if self.concurrent:
            return f"[{self.stage}] {self.concurrent}"
        return (
            f"[{self.stage}] rows in {self.rows_in:,} → out {self.rows_out:,}"
            f" (quarantined {self.rows_quarantined:,}) in {self.duration_s:.1f}s, {rate:,.0f} rows/s{tail}"
        )


def models_dir(configured: str | None, warehouse_root: str) -> str:
    """``run.models`` when set, else ``<warehouse>/models``."""
    return configured or f"{warehouse_root.rstrip('/')}/models"


class RunConfigMismatch(ConfigError):
    """A run id retried with a config other than the one its recorded stages ran with."""


def stage_records(runs_uri: str) -> list[dict]:
    """Every row of the ``runs`` table (run_id, stage, started_at, duration_s, tables as a dict,
    config_hash), read with delta-rs alone: no Spark. Empty when there is no ``runs`` table."""
    from deltalake import DeltaTable

    from recaug_spark.delta.arrow_reader import read_arrow

    if not DeltaTable.is_deltatable(runs_uri):
        return []
    columns = ["run_id", "stage", "started_at", "duration_s", "tables", "config_hash"]
    rows = read_arrow(runs_uri, columns=columns).to_pylist()  # not to_pyarrow_table: see arrow_reader
    for row in rows:
        row["tables"] = json.loads(row["tables"] or "{}")
    return rows


def _finished_at(record: dict) -> float:
    started = record["started_at"]
    if started.tzinfo is None:
        started = started.replace(tzinfo=dt.timezone.utc)
    return started.timestamp() + float(record["duration_s"] or 0.0)


def last_records(records: list[dict]) -> dict[str, dict]:
    """Stage name → its last complete record (the one that finished last; a record is written only
    after every table of its stage committed, so it is the stage marker readers trust)."""
    last: dict[str, dict] = {}
    for record in sorted(records, key=_finished_at):
        last[record["stage"]] = record
    return last


def pinned_version(records: list[dict], table: str) -> int | None:
    """The version of ``table`` named by the last complete record of a stage that wrote it — never
    simply the latest version: a stage that crashed between its commits left newer versions of some
    of its tables, which no record names, and readers must not mix those with the others."""
    if ":" in table:  # "read:<table>" entries name versions a stage read, not tables it wrote
        return None
    writers = [r for r in last_records(records).values() if table in r["tables"]]
    if not writers:
        return None
    return int(max(writers, key=_finished_at)["tables"][table])


def check_run_config(records: list[dict], run_id: str, config_hash: str) -> None:
    """Raise :class:`RunConfigMismatch` when ``run_id`` already recorded stages under another config:
    a retry must run the config it started with, or be a new run."""
    earlier = sorted({r["config_hash"] for r in records if r["run_id"] == run_id} - {config_hash})
    if earlier:
        stages = sorted({r["stage"] for r in records if r["run_id"] == run_id})
        raise RunConfigMismatch(
            f"run id {run_id!r} already ran {', '.join(stages)} with config hash {', '.join(earlier)}, "
            f"but this config hashes to {config_hash}: a retry must use the same config. Either rerun with "
            f"the config of that run (`recaug config` prints a config's hash) or give a new --run-id "
            f"(or none, for a fresh one)."
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
    """Run a stage, time it, record it in ``runs`` (the stage marker: written only once every table
    of the stage committed) and return its result. When a concurrent run with the same run id
    committed this stage first, the result says so (``concurrent``) and nothing is recorded."""
    started_at = dt.datetime.now(dt.timezone.utc)
    clock = time.perf_counter()
    try:
        result = stage_fn(ctx)
    except CommittedByConcurrentRun as error:
        stage = getattr(stage_fn, "__name__", "stage").removeprefix("run_")
        return StageResult(stage, rows_in=0, rows_out=0, duration_s=time.perf_counter() - clock, skipped=True,
                           concurrent=str(error))
    result.duration_s = time.perf_counter() - clock
    try:
        result.tables["runs"] = record_stage(ctx, result, started_at)
    except CommittedByConcurrentRun as error:
        result.concurrent = str(error)
    return result
