"""The native backend: Spark's own Delta data source (``format("delta")``), usable when the JVM
class ``io.delta.tables.DeltaTable`` is loadable (a cluster started with
``--packages io.delta:delta-spark_2.13:4.0.0``)."""

from __future__ import annotations

import json
from typing import Iterable, Mapping, Sequence

from pyspark.sql import DataFrame, SparkSession

from recaug_spark.delta.base import Txn, WriteMode, WriteResult
from recaug_spark.delta.commit import committed_version, conflict_error
from recaug_spark.delta.filters import Filters, apply_filters, replace_where


def native_delta_available(spark: SparkSession) -> bool:
    """True when the Delta Lake JVM classes are on the session's classpath."""
    try:
        spark._jvm.java.lang.Thread.currentThread().getContextClassLoader().loadClass("io.delta.tables.DeltaTable")
        return True
    except Exception:
        return False


def write(df: DataFrame, name: str, uri: str, mode: WriteMode, partition_by: Sequence[str],
          replace_partitions: Mapping[str, Iterable] | None, txn: Txn | None,
          metadata: Mapping[str, str] | None = None) -> WriteResult:
    """One Delta commit by Spark's writer (``replaceWhere`` for a partition overwrite, ``txnAppId`` /
    ``txnVersion`` for idempotence, ``metadata`` as JSON in the commit's ``userMetadata``). Delta checks
    the transaction and the conflicts inside the commit, as :mod:`recaug_spark.delta.commit` does for
    delta-rs, and its conflict exceptions become the same two errors. Files and rows are not reported (-1)."""
    writer = df.write.format("delta").mode(mode)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if replace_partitions:
        writer = writer.option("replaceWhere", replace_where(replace_partitions))
    if txn is not None:
        writer = writer.option("txnAppId", txn[0]).option("txnVersion", txn[1])
    if metadata:
        writer = writer.option("userMetadata", json.dumps(dict(metadata), sort_keys=True))
    try:
        writer.save(uri)
    except Exception as error:  # noqa: BLE001 - Delta's conflict exceptions arrive as Py4J/captured errors
        if not is_conflict(error):
            raise
        raise conflict_error(name, uri, None, txn, error) from error
    return WriteResult(name, uri, committed_version(uri, txn), files=-1, rows=-1, skipped=False)


# Delta Lake's optimistic-concurrency exceptions (io.delta.exceptions.*): the commit lost a race.
_CONFLICTS = ("ConcurrentTransactionException", "ConcurrentAppendException", "ConcurrentDeleteReadException",
              "ConcurrentDeleteDeleteException", "MetadataChangedException", "ProtocolChangedException",
              "ConcurrentWriteException", "DELTA_CONCURRENT_")


def is_conflict(error: Exception) -> bool:
    """True for Delta's conflict exceptions, whatever wrapper (Py4J, PySpark's captured errors) they come in."""
    text = f"{type(error).__name__}: {error}"
    return any(marker in text for marker in _CONFLICTS)


def delete_keys(spark: SparkSession, uri: str, key: str, keys: DataFrame) -> None:
    """Delete every row whose ``key`` is in ``keys`` (one column, distinct): a Delta ``MERGE`` delete."""
    from delta.tables import DeltaTable as NativeDeltaTable

    table = NativeDeltaTable.forPath(spark, uri)
    table.alias("t").merge(keys.alias("s"), f"t.`{key}` = s.`{key}`").whenMatchedDelete().execute()


def read(spark: SparkSession, uri: str, version: int | None, filters: Filters) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return apply_filters(reader.load(uri), filters)
