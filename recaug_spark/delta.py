"""Delta tables behind one interface, with two backends.

* ``native``: Spark's own ``format("delta")``, used when the JVM class ``io.delta.tables.DeltaTable``
  is loadable (a cluster started with ``--packages io.delta:delta-spark_2.13:4.0.0``).
* ``deltalake``: for machines without the Delta jar. Spark writes plain Parquet into a staging
  folder (its output committer makes task retries leave no orphans), the files move into their
  partition folders, their footers give per-file statistics, and one atomic commit with the
  ``deltalake`` (delta-rs) library makes them visible. Until that commit nothing is visible, so a
  failed job leaves no partial data; the staging folder is removed either way.

Idempotence: a write may carry ``txn=(app_id, version)``. When the table already records that
application transaction at that version or later, the write is skipped: re-running a stage with
the same run id adds no rows (delta-rs itself would accept the duplicate commit, so we check).
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Mapping, Sequence
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from recaug_spark.session import ensure_driver

WriteMode = Literal["error", "append", "overwrite"]
Backend = Literal["auto", "native", "deltalake"]
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_STATS_MAX_STRING = 32


class DeltaError(RuntimeError):
    """A table operation that cannot proceed; the message says which table and why."""


class TableExistsError(DeltaError):
    pass


class TableNotFoundError(DeltaError):
    pass


@dataclass(frozen=True)
class WriteResult:
    table: str
    uri: str
    version: int  # the table version after the write (the existing one when skipped)
    files: int
    rows: int
    skipped: bool  # True when the txn had already been committed


def native_delta_available(spark: SparkSession) -> bool:
    """True when the Delta Lake JVM classes are on the session's classpath."""
    try:
        spark._jvm.java.lang.Thread.currentThread().getContextClassLoader().loadClass("io.delta.tables.DeltaTable")
        return True
    except Exception:
        return False


def is_uri(name_or_uri: str) -> bool:
    return "/" in name_or_uri or "\\" in name_or_uri or ":" in name_or_uri


def resolve_uri(name_or_uri: str, warehouse: str | None) -> str:
    """A table name resolves inside the warehouse; a path or URI is used as it is."""
    if is_uri(name_or_uri):
        target = name_or_uri
    elif warehouse is None:
        raise DeltaError(f"table '{name_or_uri}' is a bare name but no warehouse was given")
    else:
        target = f"{warehouse.rstrip('/')}/{name_or_uri}"
    if "://" in target:
        return target.rstrip("/")
    return str(Path(target).expanduser().resolve())


def table_exists(uri: str) -> bool:
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(uri)


def table_version(uri: str) -> int:
    from deltalake import DeltaTable

    if not table_exists(uri):
        raise TableNotFoundError(f"no Delta table at {uri}")
    return DeltaTable(uri).version()


def rows_by_partition(uri: str, column: str, version: int | None = None) -> dict[str | None, int]:
    """Row counts per value of a partition column, from the Delta log alone (no data is read)."""
    from deltalake import DeltaTable

    actions = pa.table(DeltaTable(uri, version=version).get_add_actions(flatten=True))
    counts: dict[str | None, int] = {}
    for value, rows in zip(actions.column(f"partition.{column}").to_pylist(), actions.column("num_records").to_pylist()):
        counts[value] = counts.get(value, 0) + int(rows)
    return counts


def committed_txn_version(uri: str, app_id: str) -> int | None:
    from deltalake import DeltaTable

    if not table_exists(uri):
        return None
    return DeltaTable(uri).transaction_version(app_id)


class Warehouse:
    """Delta tables by name under one root folder, written and read through one backend.

    Example::

        wh = Warehouse(spark, "./warehouse")
        wh.write("events", df, mode="overwrite", partition_by=["dt"], txn=("run-1/clean", 0))
        wh.read("events", version=0).count()
    """

    def __init__(self, spark: SparkSession, root: str, backend: Backend = "auto"):
        self.spark = spark
        self.root = root
        if backend == "auto":
            backend = "native" if native_delta_available(spark) else "deltalake"
        elif backend == "native" and not native_delta_available(spark):
            raise DeltaError(
                "delta.backend is 'native' but io.delta.tables.DeltaTable is not on the classpath; "
                "start Spark with --packages io.delta:delta-spark_2.13:4.0.0 or use backend 'auto'"
            )
        self.backend: Literal["native", "deltalake"] = backend

    def uri(self, name_or_uri: str) -> str:
        return resolve_uri(name_or_uri, self.root)

    def exists(self, name_or_uri: str) -> bool:
        return table_exists(self.uri(name_or_uri))

    def version(self, name_or_uri: str) -> int:
        return table_version(self.uri(name_or_uri))

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
    txn: tuple[str, int] | None = None,
    backend: Backend = "auto",
) -> WriteResult:
    """Write ``df`` as a Delta table version in one atomic commit.

    ``mode``: ``error`` (the default: refuse an existing table), ``append`` or ``overwrite``.
    ``replace_partitions={"dt": [...]}`` with ``mode="overwrite"`` replaces only those partitions.
    ``txn=(app_id, version)`` makes the write idempotent (see the module docstring).
    """
    ensure_driver("write_table")
    if mode not in ("error", "append", "overwrite"):
        raise DeltaError(f"mode must be 'error', 'append' or 'overwrite', not {mode!r}")
    if replace_partitions is not None and mode != "overwrite":
        raise DeltaError("replace_partitions needs mode='overwrite'")
    missing = [c for c in partition_by if c not in df.columns]
    if missing:
        raise DeltaError(f"partition column(s) {missing} not in the DataFrame's columns {df.columns}")
    if replace_partitions and set(replace_partitions) - set(partition_by):
        raise DeltaError(f"replace_partitions keys {sorted(replace_partitions)} must be partition columns {list(partition_by)}")
    uri = resolve_uri(name_or_uri, warehouse)
    name = name_or_uri if not is_uri(name_or_uri) else uri
    if backend == "auto":
        backend = "native" if native_delta_available(df.sparkSession) else "deltalake"

    exists = table_exists(uri)
    if txn is not None and exists:
        done = committed_txn_version(uri, txn[0])
        if done is not None and done >= txn[1]:
            return WriteResult(name, uri, table_version(uri), files=0, rows=0, skipped=True)
    if mode == "error" and exists:
        raise TableExistsError(f"table {name} already exists at {uri}; use mode 'append' or 'overwrite'")
    if backend == "native":
        return _write_native(df, name, uri, mode, partition_by, replace_partitions, txn)
    return _write_with_deltalake(df, name, uri, mode, exists, partition_by, replace_partitions, txn)


def _write_native(df, name, uri, mode, partition_by, replace_partitions, txn) -> WriteResult:
    writer = df.write.format("delta").mode("overwrite" if mode == "overwrite" else mode)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if replace_partitions:
        writer = writer.option("replaceWhere", _replace_where(replace_partitions))
    if txn is not None:
        writer = writer.option("txnAppId", txn[0]).option("txnVersion", txn[1])
    writer.save(uri)
    return WriteResult(name, uri, table_version(uri), files=-1, rows=-1, skipped=False)


def _replace_where(partitions: Mapping[str, Iterable]) -> str:
    clauses = []
    for column, values in partitions.items():
        quoted = ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)
        clauses.append(f"`{column}` IN ({quoted})")
    return " AND ".join(clauses)


def _write_with_deltalake(df, name, uri, mode, exists, partition_by, replace_partitions, txn) -> WriteResult:
    from deltalake import DeltaTable
    from deltalake.transaction import create_table_with_add_actions

    arrow_schema = _arrow_schema(df.schema)
    with _staged(df, uri, partition_by, arrow_schema) as actions:
        schema = _delta_schema(arrow_schema)
        with _commit_errors(name):
            if not exists:
                create_table_with_add_actions(
                    uri, schema, actions, mode="error", partition_by=list(partition_by) or None,
                    commit_properties=_commit_properties(txn),
                )
            else:
                table = DeltaTable(uri)
                _check_compatible(name, table, arrow_schema, partition_by, mode)
                filters = None
                if replace_partitions:
                    filters = [(col, "in", [str(v) for v in values]) for col, values in replace_partitions.items()]
                table.create_write_transaction(
                    actions, mode, schema, partition_by=list(partition_by) or None,
                    partition_filters=filters, commit_properties=_commit_properties(txn),
                )
    rows = sum(json.loads(a.stats)["numRecords"] for a in actions)
    return WriteResult(name, uri, table_version(uri), files=len(actions), rows=rows, skipped=False)


def replace_rows_by_key(
    df: DataFrame,
    name_or_uri: str,
    *,
    key: str,
    keys: DataFrame,
    warehouse: str | None = None,
    txn: tuple[str, int] | None = None,
    backend: Backend = "auto",
) -> WriteResult:
    """Replace every row whose ``key`` is in ``keys`` by the rows of ``df``, in one commit.

    A copy-on-write merge by key (what ``MERGE ... WHEN MATCHED DELETE`` + insert does): only the
    files holding at least one affected key are rewritten, without those keys' old rows; every
    other file, and so every other row, stays exactly as it was. ``df`` must hold rows for the
    affected keys only. Keys in ``keys`` without rows in ``df`` end up with no rows (deletion).
    The native backend runs a Delta ``MERGE`` delete and an append (two commits).
    """
    ensure_driver("replace_rows_by_key")
    uri = resolve_uri(name_or_uri, warehouse)
    name = name_or_uri if not is_uri(name_or_uri) else uri
    if not table_exists(uri):
        raise TableNotFoundError(f"no Delta table '{name_or_uri}' at {uri}")
    if txn is not None:
        done = committed_txn_version(uri, txn[0])
        if done is not None and done >= txn[1]:
            return WriteResult(name, uri, table_version(uri), files=0, rows=0, skipped=True)
    spark = df.sparkSession
    keys = keys.select(key).distinct()
    if backend == "auto":
        backend = "native" if native_delta_available(spark) else "deltalake"
    if backend == "native":
        from delta.tables import DeltaTable as NativeDeltaTable

        table = NativeDeltaTable.forPath(spark, uri)
        table.alias("t").merge(keys.alias("s"), f"t.`{key}` = s.`{key}`").whenMatchedDelete().execute()
        return _write_native(df, name, uri, "append", [], None, txn)

    from deltalake import DeltaTable
    from deltalake.transaction import RemoveAction
    from pyspark.sql import functions as F

    table = DeltaTable(uri)
    partition_by = list(table.metadata().partition_columns)
    base = uri if "://" in uri else f"file://{uri}"
    current = read_table(spark, uri, version=table.version(), backend="deltalake")
    _, root = pafs.FileSystem.from_uri(uri)
    touched = sorted(
        _local_path(row.file)[len(root.rstrip("/")) + 1:]
        for row in current.select(key, F.input_file_name().alias("file"))
        .join(F.broadcast(keys), key, "left_semi").select("file").distinct().collect()
    )
    kept = None
    if touched:
        files = [f"{base.rstrip('/')}/{relative}" for relative in touched]
        kept = (spark.read.option("basePath", base).schema(current.schema).parquet(*files)
                .join(F.broadcast(keys), key, "left_anti").select(*current.columns))
    rows = df.select(*current.columns) if kept is None else kept.unionByName(df.select(*current.columns))
    arrow_schema = _arrow_schema(current.schema)
    actions_by_path = {unquote(a["path"]): a for a in pa.table(table.get_add_actions(flatten=False)).to_pylist()}
    removed = []
    for relative in touched:
        action = actions_by_path[relative]
        removed.append(RemoveAction(path=relative, data_change=True, deletion_timestamp=int(time.time() * 1000),
                                    size=action["size_bytes"],
                                    partition_values=action.get("partition_values")))
    with _staged(rows, uri, partition_by, arrow_schema) as added:
        with _commit_errors(name):
            table.create_write_transaction(added + removed, "append", _delta_schema(arrow_schema),
                                           partition_by=partition_by or None,
                                           commit_properties=_commit_properties(txn))
    written = sum(json.loads(a.stats)["numRecords"] for a in added)
    return WriteResult(name, uri, table_version(uri), files=len(added), rows=written, skipped=False)


def _local_path(uri: str) -> str:
    """A file URI as Spark reports it (``file:/a%20b/c``) → the path on its filesystem (``/a b/c``)."""
    return unquote(urlparse(uri).path) if uri.startswith("file:") else uri


@contextmanager
def _staged(df: DataFrame, uri: str, partition_by, arrow_schema: pa.Schema):
    """Write ``df`` with Spark into a staging folder, move the files into place, yield add actions.

    The staging folder is removed afterwards whatever happens; files already moved but never
    committed are invisible to readers (Delta reads only committed files).
    """
    fs, root = pafs.FileSystem.from_uri(uri)
    staging = f"{root}/_staging/{uuid.uuid4().hex}"
    writer = df.write.mode("error")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    try:
        writer.parquet(_spark_path(uri, staging))
        yield [_publish(fs, root, staging, relative, arrow_schema) for relative in _data_files(fs, staging)]
    finally:
        fs.delete_dir_contents(staging, missing_dir_ok=True)
        try:
            fs.delete_dir(staging)
        except (FileNotFoundError, OSError):
            pass


def _commit_properties(txn: tuple[str, int] | None):
    from deltalake import CommitProperties, Transaction

    if txn is None:
        return None
    return CommitProperties(
        app_transactions=[Transaction(app_id=txn[0], version=txn[1])],
        custom_metadata={"recaug.txn": f"{txn[0]}@{txn[1]}"},
    )


@contextmanager
def _commit_errors(name: str):
    from deltalake.exceptions import CommitFailedError

    try:
        yield
    except CommitFailedError as error:
        raise DeltaError(f"commit to {name} failed (another writer committed first?): {error}") from error


def _spark_path(uri: str, path: str) -> str:
    return path if "://" in uri else f"file://{path}"


def _data_files(fs: pafs.FileSystem, staging: str) -> list[str]:
    selector = pafs.FileSelector(staging, recursive=True, allow_not_found=True)
    files = []
    for info in fs.get_file_info(selector):
        relative = info.path[len(staging) + 1:]
        if info.type == pafs.FileType.File and relative.endswith(".parquet") and not any(
            part.startswith(("_", ".")) for part in relative.split("/")
        ):
            files.append(relative)
    return sorted(files)


def _publish(fs, root: str, staging: str, relative: str, arrow_schema: pa.Schema):
    """Move one staged file into its partition folder and describe it as a Delta add action."""
    from deltalake.transaction import AddAction

    destination = f"{root}/{relative}"
    parent = destination.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    fs.move(f"{staging}/{relative}", destination)
    partition_values = {}
    for part in relative.split("/")[:-1]:
        key, _, value = part.partition("=")
        value = unquote(value)
        partition_values[unquote(key)] = None if value == _HIVE_NULL else value
    info = fs.get_file_info(destination)
    with fs.open_input_file(destination) as handle:
        metadata = pq.read_metadata(handle)
    return AddAction(
        path=relative,
        size=info.size,
        partition_values=partition_values,
        modification_time=int(time.time() * 1000),
        data_change=True,
        stats=json.dumps(_file_stats(metadata, arrow_schema)),
    )


def _file_stats(metadata: pq.FileMetaData, arrow_schema: pa.Schema) -> dict:
    """Delta per-file statistics (numRecords, minValues, maxValues, nullCount) from a footer."""
    mins: dict = {}
    maxs: dict = {}
    nulls: dict = {}
    schema = metadata.schema.to_arrow_schema()
    for index, field in enumerate(schema):
        if pa.types.is_nested(field.type):
            continue
        low = high = None
        null_count = 0
        complete = True
        for group in range(metadata.num_row_groups):
            stats = metadata.row_group(group).column(index).statistics
            if stats is None:
                complete = False
                break
            null_count += stats.null_count or 0
            if stats.has_min_max:
                low = stats.min if low is None else min(low, stats.min)
                high = stats.max if high is None else max(high, stats.max)
        if not complete:
            continue
        nulls[field.name] = null_count
        for target, value in ((mins, low), (maxs, high)):
            encoded = _stat_value(value, field.type)
            if encoded is not None:
                target[field.name] = encoded
    return {"numRecords": metadata.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}


def _stat_value(value, arrow_type: pa.DataType):
    if value is None:
        return None
    if pa.types.is_timestamp(arrow_type):
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if pa.types.is_date(arrow_type):
        return value.isoformat()
    if isinstance(value, bytes):
        return None
    if isinstance(value, str):
        return value if len(value) <= _STATS_MAX_STRING else None  # a truncated max would lie
    if isinstance(value, float) and value != value:
        return None
    return value


def _arrow_schema(schema: T.StructType) -> pa.Schema:
    """Spark schema → Arrow schema with every field nullable (Parquet files from Spark are)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    arrow = to_arrow_schema(schema)
    return pa.schema([field.with_nullable(True) for field in arrow])


def _delta_schema(arrow_schema: pa.Schema):
    from deltalake import Schema

    return Schema.from_arrow(arrow_schema)


def _check_compatible(name, table, arrow_schema: pa.Schema, partition_by, mode) -> None:
    existing_partitions = list(table.metadata().partition_columns)
    if mode == "append":
        current = pa.schema(table.schema().to_arrow())
        if [(f.name, f.type) for f in current] != [(f.name, f.type) for f in _delta_schema(arrow_schema).to_arrow()]:
            raise DeltaError(
                f"cannot append to {name}: its schema is {current} but the new rows have {arrow_schema}"
            )
    if list(partition_by) != existing_partitions and mode == "append":
        raise DeltaError(f"cannot append to {name}: partitioned by {existing_partitions}, not {list(partition_by)}")


def read_table(
    spark: SparkSession,
    name_or_uri: str,
    *,
    warehouse: str | None = None,
    version: int | None = None,
    filters: str | list[tuple[str, str, object]] | None = None,
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
    if backend == "auto":
        backend = "native" if native_delta_available(spark) else "deltalake"
    if backend == "native":
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return _apply_filters(reader.load(uri), filters)
    from deltalake import DeltaTable
    from pyspark.sql.pandas.types import from_arrow_schema

    table = DeltaTable(uri, version=version)
    arrow_schema = pa.schema(table.schema().to_arrow())
    spark_schema = from_arrow_schema(arrow_schema)
    relative = _relative_paths(table, table.file_uris(file_pruning_predicate=filters))
    if not relative:
        return spark.createDataFrame([], spark_schema)
    base = uri if "://" in uri else f"file://{uri}"
    files = [f"{base.rstrip('/')}/{path}" for path in relative]
    df = spark.read.option("basePath", base).schema(spark_schema).parquet(*files)
    return _apply_filters(df.select(*[f"`{name}`" for name in spark_schema.fieldNames()]), filters)


def _relative_paths(table, file_uris: list[str]) -> list[str]:
    """Data files relative to the table root, as on the filesystem (deltalake reports the root
    percent-encoded, ``by%20key/``, and the rest decoded)."""
    prefix = table.table_uri.rstrip("/") + "/"
    local = prefix[len("file://"):] if prefix.startswith("file://") else prefix
    out = []
    for uri in file_uris:
        for start in (prefix, local):
            if uri.startswith(start):
                out.append(uri[len(start):])
                break
        else:
            raise DeltaError(f"data file {uri} is outside its table {table.table_uri}")
    return out


def _apply_filters(df: DataFrame, filters) -> DataFrame:
    if not filters:
        return df
    if isinstance(filters, str):
        return df.filter(filters)
    from pyspark.sql import functions as F

    for column, op, value in filters:
        df = df.filter(_filter_expression(F.col(column), op, value))
    return df


def _filter_expression(column, op: str, value):
    ops = {
        "=": lambda: column == value, "!=": lambda: column != value, "<": lambda: column < value,
        "<=": lambda: column <= value, ">": lambda: column > value, ">=": lambda: column >= value,
        "in": lambda: column.isin(list(value)), "not in": lambda: ~column.isin(list(value)),
    }
    if op not in ops:
        raise DeltaError(f"unknown filter operator {op!r}; allowed: {sorted(ops)}")
    return ops[op]()
