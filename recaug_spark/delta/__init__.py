"""Delta tables behind one interface, with two backends.

* ``native`` (:mod:`~recaug_spark.delta.native`): Spark's own ``format("delta")``, used when the
  JVM class ``io.delta.tables.DeltaTable`` is loadable (a cluster started with
  ``--packages io.delta:delta-spark_2.13:4.0.0``).
* ``deltalake`` (:mod:`~recaug_spark.delta.delta_rs`): for machines without the Delta jar. Spark
  writes plain Parquet into a staging folder (:mod:`~recaug_spark.delta.staging`), the files move
  into their partition folders, their footers give per-file statistics
  (:mod:`~recaug_spark.delta.stats`), and one atomic commit with the ``deltalake`` (delta-rs)
  library makes them visible. Until that commit nothing is visible, so a failed job leaves no
  partial data; the staging folder is removed either way.

``auto`` (the default) picks ``native`` when the jar is loadable, else ``deltalake``
(:func:`choose_backend`). The log is read without Spark by :mod:`~recaug_spark.delta.log`.

Idempotence: a write may carry ``txn=(app_id, version)``. When the table already records that
application transaction at that version or later (:func:`committed`, :meth:`Warehouse.committed`),
the write is skipped: re-running a stage with the same run id adds no rows. The check and the
commit are one step for concurrent writers (:mod:`~recaug_spark.delta.commit`): the commit carries
the transaction and is made on top of the version the check read, so of two concurrent writers with
the same transaction exactly one commits and the other gets :class:`CommittedByConcurrentRun`; a
different writer's conflicting commit gives :class:`ConcurrentWriteError`, never a lost update.

Orphans of crashed writes are swept by :mod:`~recaug_spark.delta.vacuum` (``recaug vacuum``).

Example::

    wh = Warehouse(spark, "./warehouse")
    wh.write("events", df, mode="overwrite", partition_by=["dt"], txn=("run-1/clean", 0))
    wh.read("events", version=0).count()
"""

from recaug_spark.delta.base import (
    Backend,
    CommittedByConcurrentRun,
    ConcurrentWriteError,
    DeltaError,
    TableExistsError,
    TableNotFoundError,
    Txn,
    WriteMode,
    WriteResult,
)
from recaug_spark.delta.log import (
    FileListing,
    TableFile,
    commit_metadata,
    committed,
    committed_txn_version,
    data_files,
    rows_by_partition,
    table_exists,
    table_version,
    txn_commit_version,
)
from recaug_spark.delta.native import native_delta_available
from recaug_spark.delta.vacuum import VacuumReport, sweep, vacuum_table, warehouse_tables
from recaug_spark.delta.warehouse import (
    Warehouse,
    choose_backend,
    is_table_path,
    read_table,
    replace_rows_by_key,
    resolve_uri,
    write_table,
)

__all__ = [
    "Backend", "CommittedByConcurrentRun", "ConcurrentWriteError", "DeltaError", "FileListing", "TableExistsError",
    "TableFile", "TableNotFoundError", "Txn",
    "Warehouse", "WriteMode", "WriteResult", "choose_backend", "commit_metadata", "committed", "committed_txn_version",
    "data_files", "is_table_path", "native_delta_available", "read_table", "replace_rows_by_key", "resolve_uri",
    "rows_by_partition", "table_exists", "table_version", "txn_commit_version", "VacuumReport", "sweep", "vacuum_table",
    "warehouse_tables", "write_table",
]
