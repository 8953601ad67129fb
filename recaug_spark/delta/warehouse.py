"""The tables' front door: write, read and merge a Delta table by name or URI, whatever the backend.

Checks the arguments, resolves table names inside the warehouse, skips a write whose application
transaction is already committed (see :mod:`recaug_spark.delta`), picks the backend and hands over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Literal, Mapping, Sequence

from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession

import recaug_spark.delta.delta_rs as delta_rs
import recaug_spark.delta.native as native
from recaug_spark.delta.base import (
    Backend,
    DeltaError,
    TableExistsError,
    TableNotFoundError,
    Txn,
    WriteMode,
    WriteResult,
)
from recaug_spark.delta.commit import committed_version
from recaug_spark.delta.filters import Filters
from recaug_spark.delta.log import committed, table_exists, table_version
from recaug_spark.delta.native import native_delta_available
from recaug_spark.delta.vacuum import needs_sweep, sweep
from recaug_spark.paths import is_uri
from recaug_spark.session import ensure_driver

ConcreteBackend = Literal["native", "deltalake"]


def choose_backend(spark: SparkSession, backend: Backend = "auto") -> ConcreteBackend:
    """The backend that runs: ``auto`` → ``native`` when the Delta jar is loadable, else ``deltalake``.

    Raises :class:`DeltaError` for ``native`` without the jar.
    """
    if backend == "auto":
        return "native" if native_delta_available(spark) else "deltalake"
    if backend == "native" and not native_delta_available(spark):
        raise DeltaError(
            "delta.backend is 'native' but io.delta.tables.DeltaTable is not on the classpath; "
            "start Spark with --packages io.delta:delta-spark_2.13:4.0.0 or use backend 'auto'"
        )
    return backend


def is_table_path(name_or_uri: str) -> bool:
    """True for a path or URI, false for a bare table name (resolved inside the warehouse)."""
    return "/" in name_or_uri or "\\" in name_or_uri or ":" in name_or_uri


def resolve_uri(name_or_uri: str, warehouse: str | None) -> str:
    """A table name resolves inside the warehouse; a path or URI is used as it is."""
    if is_table_path(name_or_uri):
        target = name_or_uri
    elif warehouse is None:
        raise DeltaError(f"table '{name_or_uri}' is a bare name but no warehouse was given")
    else:
        target = f"{warehouse.rstrip('/')}/{name_or_uri}"
    if is_uri(target):
        return target.rstrip("/")
    return str(Path(target).expanduser().resolve())


def _target(name_or_uri: str, warehouse: str | None) -> tuple[str, str]:
    """(the name used in messages and results, the table's URI)."""
    uri = resolve_uri(name_or_uri, warehouse)
    return (uri if is_table_path(name_or_uri) else name_or_uri), uri


def _skipped(name: str, uri: str, txn: Txn) -> WriteResult:
    """A write whose transaction is already in the table: its version is the one that transaction
    committed (not the latest: another run may have committed since)."""
    return WriteResult(name, uri, committed_version(uri, txn), files=0, rows=0, skipped=True)


class Warehouse:
    """Delta tables by name under one root folder, written and read through one backend.

    Example::

        wh = Warehouse(spark, "./warehouse")
        wh.write("events", df, mode="overwrite", partition_by=["dt"], txn=("run-1/clean", 0))
        wh.read("events", version=0).count()
        wh.committed("events", ("run-1/clean", 0))  # True: a retry of run-1 would write nothing
    """

    def __init__(self, spark: SparkSession, root: str, backend: Backend = "auto"):
        self.spark = spark
        self.root = root
        self.backend: ConcreteBackend = choose_backend(spark, backend)

    def uri(self, name_or_uri: str) -> str:
        return resolve_uri(name_or_uri, self.root)

    def exists(self, name_or_uri: str) -> bool:
        return table_exists(self.uri(name_or_uri))

    def version(self, name_or_uri: str) -> int:
        return table_version(self.uri(name_or_uri))

    def committed(self, name_or_uri: str, txn: Txn) -> bool:
        """True when the table already holds the application transaction ``txn`` (at that version or
        later): a write carrying it would be skipped. False when the table does not exist."""
        return committed(self.uri(name_or_uri), txn)

    def committed_version(self, name_or_uri: str, txn: Txn) -> int:
        """The table version that ``txn`` committed (the latest when the table does not record it)."""
        return committed_version(self.uri(name_or_uri), txn)

    def write(self, name_or_uri: str, df: DataFrame, **options) -> WriteResult:
        return write_table(df, name_or_uri, warehouse=self.root, backend=self.backend, **options)

    def read(self, name_or_uri: str, **options) -> DataFrame:
        return read_table(self.spark, name_or_uri, warehouse=self.root, backend=self.backend, **options)


def write_table(
    df: DataFrame,
    name_or_uri: str,
    *,
    warehouse: str | None = None,
    mode: WriteMode = "error",
    partition_by: Sequence[str] = (),
    replace_partitions: Mapping[str, Iterable] | None = None,
    txn: Txn | None = None,
    backend: Backend = "auto",
    metadata: Mapping[str, str] | None = None,
) -> WriteResult:
    """Write ``df`` as a Delta table version in one atomic commit.

    ``mode``: ``error`` (the default: refuse an existing table), ``append`` or ``overwrite``.
    ``replace_partitions={"dt": [...]}`` with ``mode="overwrite"`` replaces only those partitions.
    ``txn=(app_id, version)`` makes the write idempotent (see :mod:`recaug_spark.delta`).
    ``metadata`` (string keys and values) is recorded in the commit's ``commitInfo``, readable
    without Spark by :func:`recaug_spark.delta.commit_metadata`.
    """
    ensure_driver("write_table")
    _check_write_options(df, mode, partition_by, replace_partitions)
    name, uri = _target(name_or_uri, warehouse)
    backend = choose_backend(df.sparkSession, backend)
    if backend != "native" and needs_sweep(uri):  # a crashed write left files: delete them first
        sweep(uri)
    snapshot = DeltaTable(uri) if table_exists(uri) else None  # the version this write reads and commits on
    if txn is not None and snapshot is not None and committed(uri, txn, snapshot=snapshot):
        return _skipped(name, uri, txn)
    if mode == "error" and snapshot is not None:
        raise TableExistsError(f"table {name} already exists at {uri}; use mode 'append' or 'overwrite'")
    if backend == "native":
        return native.write(df, name, uri, mode, partition_by, replace_partitions, txn, metadata)
    return delta_rs.write(df, name, uri, mode, snapshot, partition_by, replace_partitions, txn, metadata)


def _check_write_options(df: DataFrame, mode: str, partition_by: Sequence[str],
                         replace_partitions: Mapping[str, Iterable] | None) -> None:
    if mode not in ("error", "append", "overwrite"):
        raise DeltaError(f"mode must be 'error', 'append' or 'overwrite', not {mode!r}")
    if replace_partitions is not None and mode != "overwrite":
        raise DeltaError("replace_partitions needs mode='overwrite'")
    missing = [c for c in partition_by if c not in df.columns]
    if missing:
        raise DeltaError(f"partition column(s) {missing} not in the DataFrame's columns {df.columns}")
    if replace_partitions and set(replace_partitions) - set(partition_by):
        raise DeltaError(f"replace_partitions keys {sorted(replace_partitions)} must be partition columns {list(partition_by)}")


def replace_rows_by_key(
    df: DataFrame,
    name_or_uri: str,
    *,
    key: str,
    keys: DataFrame,
    warehouse: str | None = None,
    txn: Txn | None = None,
    backend: Backend = "auto",
    metadata: Mapping[str, str] | None = None,
) -> WriteResult:
    """Replace every row whose ``key`` is in ``keys`` by the rows of ``df``, in one commit.

    A copy-on-write merge by key (what ``MERGE ... WHEN MATCHED DELETE`` + insert does): only the
    files holding at least one affected key are rewritten, without those keys' old rows; every
    other file, and so every other row, stays exactly as it was. ``df`` must hold rows for the
    affected keys only. Keys in ``keys`` without rows in ``df`` end up with no rows (deletion).
    The native backend runs a Delta ``MERGE`` delete and an append (two commits). ``metadata``: as in
    :func:`write_table` (the native backend records it on its append).
    """
    ensure_driver("replace_rows_by_key")
    name, uri = _target(name_or_uri, warehouse)
    if not table_exists(uri):
        raise TableNotFoundError(f"no Delta table '{name_or_uri}' at {uri}")
    if txn is not None and committed(uri, txn):
        return _skipped(name, uri, txn)
    spark = df.sparkSession
    keys = keys.select(key).distinct()
    if choose_backend(spark, backend) == "native":
        native.delete_keys(spark, uri, key, keys)
        return native.write(df, name, uri, "append", [], None, txn, metadata)
    return delta_rs.replace_rows(df, name, uri, key, keys, txn, metadata)


def read_table(
    spark: SparkSession,
    name_or_uri: str,
    *,
    warehouse: str | None = None,
    version: int | None = None,
    filters: Filters = None,
    backend: Backend = "auto",
) -> DataFrame:
    """Read a Delta table (at ``version``, default the latest) as a Spark DataFrame.

    ``filters`` — a SQL predicate (``"dt >= '2024-01-01'"``) or delta-rs tuples
    (``[("dt", ">=", "2024-01-01")]``) — skips whole files by partition values and per-file
    statistics before Spark lists anything, and is applied to the rows as well.
    """
    uri = resolve_uri(name_or_uri, warehouse)
    if not table_exists(uri):
        raise TableNotFoundError(f"no Delta table '{name_or_uri}' at {uri}")
    if choose_backend(spark, backend) == "native":
        return native.read(spark, uri, version, filters)
    return delta_rs.read(spark, uri, version, filters)
