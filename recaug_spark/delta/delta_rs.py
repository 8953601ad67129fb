"""The deltalake backend, for machines without the Delta jar: Spark writes and reads plain Parquet,
the ``deltalake`` (delta-rs) library keeps the log.

A write stages its files (:mod:`recaug_spark.delta.staging`) and makes them visible in one atomic
commit on top of the version it read (:mod:`recaug_spark.delta.commit`); until that commit nothing
is visible, so a failed job leaves no partial data. A read lists
the version's files from the log (skipping files by partition values and statistics) and hands
them to Spark's Parquet reader.
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping, Sequence
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import DeltaTable, Schema
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recaug_spark.delta.base import DeltaError, Txn, WriteMode, WriteResult
from recaug_spark.delta.commit import commit_actions
from recaug_spark.delta.filters import Filters, apply_filters, partition_filters
from recaug_spark.delta.staging import added_rows, staged
from recaug_spark.delta.stats import arrow_schema as to_arrow_schema
from recaug_spark.paths import decoded_path, file_uri, local_path


def write(df: DataFrame, name: str, uri: str, mode: WriteMode, snapshot: DeltaTable | None, partition_by: Sequence[str],
          replace_partitions: Mapping[str, Iterable] | None, txn: Txn | None,
          metadata: Mapping[str, str] | None = None) -> WriteResult:
    """Stage ``df``'s files and commit them as one table version on top of ``snapshot`` (the table as
    this write read it, before any file was written; None: create the table) — see
    :mod:`recaug_spark.delta.commit` for what a concurrent writer does to it."""
    schema_arrow = to_arrow_schema(df.schema)
    if snapshot is not None:
        snapshot = _add_new_columns(name, uri, snapshot, schema_arrow, mode)
        _check_compatible(name, snapshot, schema_arrow, partition_by, mode)
    filters = partition_filters(replace_partitions) if (replace_partitions and snapshot is not None) else None
    with staged(df, uri, partition_by, schema_arrow) as actions:
        version = commit_actions(uri, snapshot, actions, mode=mode, schema=Schema.from_arrow(schema_arrow),
                                 partition_by=partition_by, partition_filters=filters, txn=txn, name=name,
                                 metadata=metadata)
    return WriteResult(name, uri, version, files=len(actions), rows=added_rows(actions), skipped=False)


def replace_rows(df: DataFrame, name: str, uri: str, key: str, keys: DataFrame, txn: Txn | None,
                 metadata: Mapping[str, str] | None = None) -> WriteResult:
    """Copy-on-write merge by key in one commit: the files holding a key of ``keys`` are rewritten
    without those keys' rows, ``df``'s rows are added, every other file stays as it is. The commit
    is made on top of the version read, so a concurrent change to those files fails it."""
    from deltalake.transaction import RemoveAction

    spark = df.sparkSession
    table = DeltaTable(uri)
    partition_by = list(table.metadata().partition_columns)
    base = file_uri(uri)
    current = read(spark, uri, table.version(), None)
    _, root = pafs.FileSystem.from_uri(uri)
    touched = sorted(
        decoded_path(row.file)[len(root.rstrip("/")) + 1:]
        for row in current.select(key, F.input_file_name().alias("file"))
        .join(F.broadcast(keys), key, "left_semi").select("file").distinct().collect()
    )
    kept = None
    if touched:
        files = [f"{base.rstrip('/')}/{relative}" for relative in touched]
        kept = (spark.read.option("basePath", base).schema(current.schema).parquet(*files)
                .join(F.broadcast(keys), key, "left_anti").select(*current.columns))
    rows = df.select(*current.columns) if kept is None else kept.unionByName(df.select(*current.columns))
    schema_arrow = to_arrow_schema(current.schema)
    actions_by_path = {unquote(a["path"]): a for a in pa.table(table.get_add_actions(flatten=False)).to_pylist()}
    removed = []
    for relative in touched:
        action = actions_by_path[relative]
        removed.append(RemoveAction(path=relative, data_change=True, deletion_timestamp=int(time.time() * 1000),
                                    size=action["size_bytes"],
                                    partition_values=action.get("partition_values")))
    with staged(rows, uri, partition_by, schema_arrow) as added:
        version = commit_actions(uri, table, added + removed, mode="append", schema=Schema.from_arrow(schema_arrow),
                                 partition_by=partition_by, txn=txn, name=name, metadata=metadata)
    return WriteResult(name, uri, version, files=len(added), rows=added_rows(added), skipped=False)


def read(spark: SparkSession, uri: str, version: int | None, filters: Filters) -> DataFrame:
    """The table's files at ``version`` (pruned by ``filters`` from the log) read by Spark, filtered."""
    from pyspark.sql.pandas.types import from_arrow_schema

    table = DeltaTable(uri, version=version)
    spark_schema = from_arrow_schema(pa.schema(table.schema().to_arrow()))
    relative = _relative_paths(table, table.file_uris(file_pruning_predicate=filters))
    if not relative:
        return spark.createDataFrame([], spark_schema)
    base = file_uri(uri)
    files = [f"{base.rstrip('/')}/{path}" for path in relative]
    df = spark.read.option("basePath", base).schema(spark_schema).parquet(*files)
    return apply_filters(df.select(*[f"`{name}`" for name in spark_schema.fieldNames()]), filters)


def _relative_paths(table: DeltaTable, file_uris: list[str]) -> list[str]:
    """Data files relative to the table root, as on the filesystem (deltalake reports the root
    percent-encoded, ``by%20key/``, and the rest decoded)."""
    prefix = table.table_uri.rstrip("/") + "/"
    local = local_path(prefix)
    out = []
    for uri in file_uris:
        for start in (prefix, local):
            if uri.startswith(start):
                out.append(uri[len(start):])
                break
        else:
            raise DeltaError(f"data file {uri} is outside its table {table.table_uri}")
    return out


def _add_new_columns(name: str, uri: str, table: DeltaTable, schema_arrow: pa.Schema, mode: str) -> DeltaTable:
    """Schema evolution for appends, additive only: when the new rows have the table's columns (same
    names and types, same order) followed by new nullable ones — e.g. ``quarantine`` rows written by
    a newer recaug into a warehouse an older one created — the columns are added to the table first
    (a metadata-only commit; older rows read them as null). Anything else is left to
    ``_check_compatible`` to refuse. Returns the table as it is now."""
    if mode != "append":
        return table
    current = [(f.name, f.type) for f in pa.schema(table.schema().to_arrow())]
    new = Schema.from_arrow(schema_arrow).fields
    head = [(f.name, f.type) for f in pa.schema(Schema(new[:len(current)]).to_arrow())]
    if len(new) <= len(current) or head != current:
        return table
    extra = new[len(current):]
    if not all(f.nullable for f in extra):
        return table
    table.alter.add_columns(extra)
    return DeltaTable(uri)


def _check_compatible(name: str, table: DeltaTable, schema_arrow: pa.Schema, partition_by, mode) -> None:
    existing_partitions = list(table.metadata().partition_columns)
    if mode == "append":
        current = pa.schema(table.schema().to_arrow())
        if [(f.name, f.type) for f in current] != [(f.name, f.type) for f in Schema.from_arrow(schema_arrow).to_arrow()]:
            raise DeltaError(
                f"cannot append to {name}: its schema is {current} but the new rows have {schema_arrow}"
            )
    if list(partition_by) != existing_partitions and mode == "append":
        raise DeltaError(f"cannot append to {name}: partitioned by {existing_partitions}, not {list(partition_by)}")
