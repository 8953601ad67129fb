"""A pipeline run: its id, config, warehouse, and the ``runs`` table that records each stage."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field

from pyspark.sql import SparkSession
from pyspark.sql import types as T

from recaug_spark.config import Config, ConfigError
from recaug_spark.delta import CommittedByConcurrentRun, Warehouse
from recaug_spark.schemas import RUNS

STARTS = "stage_starts"  # the table of stage starts: one row per attempt, written before the stage does anything
STAGE_STARTS = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("stage", T.StringType(), False),
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("config_hash", T.StringType(), False),
    T.StructField("input_versions", T.StringType(), False),  # JSON: table -> version the stage markers named
    T.StructField("driver", T.StringType(), False),  # host:pid of the driver that started it
])
FINISHED, UNFINISHED = "finished", "started, never finished"
# Fault injection (tests only, see tests/test_fault_driver.py): the driver SIGKILLs itself right after
# committing the named table, to test a crash between two commits with a real dead process.
KILL_AFTER_COMMIT = "RECAUG_FAULT_KILL_AFTER_COMMIT"


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
        warehouse = with_fault_hook(Warehouse(spark, cfg.run.warehouse, cfg.delta.backend))
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
    # A stage whose input is counted in several units (ingest: lines, events, items) states each here,
    # e.g. "lines: 4 in = 3 accepted + 1 quarantined; ..."; the progress line shows it instead of one
    # sum over units.
    units: str = ""


    def progress_line(self) -> str:
        rows = max(self.rows_in, self.rows_out)
        rate = rows / self.duration_s if self.duration_s > 0 else 0.0
        tail = " (already committed by this run id: nothing written)" if self.skipped else ""
        if self.concurrent:
            return f"[{self.stage}] {self.concurrent}"
        if self.units and not self.skipped:
            return f"[{self.stage}] {self.units} in {self.duration_s:.1f}s"
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
    config_hash), read with delta-rs alone: no Spark. Empty when there is no ``runs`` table.
    These are the *finished* stages: a row is written only once every table of its stage committed."""
    columns = ["run_id", "stage", "started_at", "duration_s", "tables", "config_hash"]
    return _table_rows(runs_uri, columns, json_column="tables")


def start_records(starts_uri: str) -> list[dict]:
    """Every row of the ``stage_starts`` table (run_id, stage, started_at, config_hash, input_versions
    as a dict, driver): one per attempt of a stage, finished or not, oldest first. Empty when there is none."""
    columns = ["run_id", "stage", "started_at", "config_hash", "input_versions", "driver"]
    return sorted(_table_rows(starts_uri, columns, json_column="input_versions"), key=lambda r: _utc(r["started_at"]))


def _table_rows(uri: str, columns: list[str], json_column: str) -> list[dict]:
    from deltalake import DeltaTable

    from recaug_spark.delta.arrow_reader import read_arrow

    if not DeltaTable.is_deltatable(uri):
        return []
    rows = read_arrow(uri, columns=columns).to_pylist()  # not to_pyarrow_table: see arrow_reader
    for row in rows:
        row[json_column] = json.loads(row[json_column] or "{}")
    return rows


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment


def _finished_at(record: dict) -> float:
    return _utc(record["started_at"]).timestamp() + float(record["duration_s"] or 0.0)


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
    a retry must run the config it started with, or be a new run. ``records``: finished stages and
    stage starts alike (a stage that crashed may have committed tables a retry would skip)."""
    earlier = sorted({r["config_hash"] for r in records if r["run_id"] == run_id} - {config_hash})
    if earlier:
        stages = sorted({r["stage"] for r in records if r["run_id"] == run_id})
        raise RunConfigMismatch(
            f"run id {run_id!r} already ran {', '.join(stages)} with config hash {', '.join(earlier)}, "
            f"but this config hashes to {config_hash}: a retry must use the same config. Either rerun with "
            f"the config of that run (`recaug config` prints a config's hash) or give a new --run-id "
            f"(or none, for a fresh one)."
        )


def consistent_versions(records: list[dict]) -> dict[str, int]:
    """Table → the version the stage markers name (:func:`pinned_version`), for every table a finished
    stage wrote: the one consistent set every stage reads its inputs from."""
    tables = {t for r in last_records(records).values() for t in r["tables"] if ":" not in t and t != "runs"}
    return {table: pinned_version(records, table) for table in sorted(tables)}


def stage_listing(finished: list[dict], starts: list[dict]) -> list[dict]:
    """One entry per (run id, stage), in order of first start: ``status`` (:data:`FINISHED` when a
    ``runs`` record exists, else :data:`UNFINISHED`: it crashed, or it still runs), ``started_at``
    (the first attempt), ``attempts`` (rows in ``stage_starts``), ``duration_s`` (finished only),
    ``config_hash`` and ``driver`` (of the last attempt)."""
    entries: dict[tuple[str, str], dict] = {}
    for start in sorted(starts, key=lambda r: _utc(r["started_at"])):
        entry = entries.setdefault((start["run_id"], start["stage"]), {
            "run_id": start["run_id"], "stage": start["stage"], "status": UNFINISHED, "started_at": start["started_at"],
            "attempts": 0, "duration_s": None, "config_hash": start["config_hash"], "driver": None})
        entry["attempts"] += 1
        entry["driver"] = start["driver"]
    for record in finished:
        entry = entries.setdefault((record["run_id"], record["stage"]), {
            "run_id": record["run_id"], "stage": record["stage"], "started_at": record["started_at"], "attempts": 0,
            "config_hash": record["config_hash"], "driver": None})  # a record older than stage_starts
        entry |= {"status": FINISHED, "duration_s": float(record["duration_s"] or 0.0)}
    return sorted(entries.values(), key=lambda e: _utc(e["started_at"]))


def listing_line(entry: dict) -> str:
    """One line of ``recaug runs``."""
    took = f"{entry['duration_s']:.1f}s" if entry["duration_s"] is not None else "-"
    driver = f"  driver {entry['driver']}" if entry["status"] == UNFINISHED and entry["driver"] else ""
    return (f"{entry['run_id']:<26} {entry['stage']:<9} {entry['status']:<23} "
            f"{_utc(entry['started_at']):%Y-%m-%d %H:%M:%S}Z  {took:>8}  attempts {entry['attempts']}  "
            f"config {entry['config_hash']}{driver}")


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


def record_start(ctx: RunContext, stage: str, started_at: dt.datetime) -> int | None:
    """Append this attempt of ``stage`` to ``stage_starts`` (run id, stage, start, config hash, the
    versions the stage markers name, driver host:pid) before the stage does anything, so that a
    crashed stage shows as started and never finished (``recaug runs``). Nothing when this run id
    already finished the stage (the retry is a no-op). Returns the version written, or None."""
    finished = stage_records(ctx.warehouse.uri("runs"))
    if any(r["run_id"] == ctx.run_id and r["stage"] == stage for r in finished):
        return None
    row = (ctx.run_id, stage, started_at, ctx.cfg.hash, json.dumps(consistent_versions(finished), sort_keys=True),
           f"{socket.gethostname()}:{os.getpid()}")
    df = ctx.spark.createDataFrame([row], STAGE_STARTS).coalesce(1)
    return ctx.warehouse.write(STARTS, df, mode="append").version


def stage_name(stage_fn) -> str:
    """``run_clean`` → ``clean``."""
    return getattr(stage_fn, "__name__", "stage").removeprefix("run_")


def timed(stage_fn, ctx: RunContext) -> StageResult:
    """Run a stage, time it, record it in ``runs`` (the stage marker: written only once every table
    of the stage committed) and return its result. Its start is recorded first (:func:`record_start`).
    When a concurrent run with the same run id committed this stage first, the result says so
    (``concurrent``) and nothing more is recorded."""
    stage = stage_name(stage_fn)
    started_at = dt.datetime.now(dt.timezone.utc)
    clock = time.perf_counter()
    record_start(ctx, stage, started_at)
    try:
        result = stage_fn(ctx)
    except CommittedByConcurrentRun as error:
        return StageResult(stage, rows_in=0, rows_out=0, duration_s=time.perf_counter() - clock, skipped=True,
                           concurrent=str(error))
    result.duration_s = time.perf_counter() - clock
    try:
        result.tables["runs"] = record_stage(ctx, result, started_at)
    except CommittedByConcurrentRun as error:
        result.concurrent = str(error)
    return result


def with_fault_hook(warehouse: Warehouse) -> Warehouse:
    """``warehouse`` itself; when ``$RECAUG_FAULT_KILL_AFTER_COMMIT`` names a table (fault-injection
    tests only), its ``write`` SIGKILLs this process right after committing that table (a skipped
    write does not), as an operator's ``kill -9`` between two commits of a stage would."""
    table = os.environ.get(KILL_AFTER_COMMIT)
    if not table:
        return warehouse
    write = warehouse.write

    def write_then_die(name_or_uri, df, **options):
        result = write(name_or_uri, df, **options)
        if result.table == table and not result.skipped:
            print(f"{KILL_AFTER_COMMIT}: killing the driver (pid {os.getpid()}) after committing "
                  f"{table} v{result.version}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    warehouse.write = write_then_die
    return warehouse
