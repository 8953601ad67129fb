"""Reliable checkpoints: intermediate results that survive the loss of the executor that computed them.

A *local* checkpoint (``DataFrame.localCheckpoint``) keeps its blocks in the executors' block stores
only, and truncates the lineage: when an executor dies, its blocks are gone and nothing can recompute
them, so the next job fails with ``CHECKPOINT_RDD_BLOCK_ID_NOT_FOUND``. A *reliable* checkpoint
(``DataFrame.checkpoint``) writes every partition to the SparkContext's checkpoint directory, a folder
every executor can read (here: under the warehouse), so a lost executor only costs its running tasks.

:func:`stage_checkpoints` points the checkpoint directory at
``<warehouse>/_checkpoints/<run id>/<stage>`` for one stage and deletes that folder afterwards (Spark
does not delete checkpoint files on its own); :func:`checkpoint` checkpoints a DataFrame there,
keeping its partitioning and the row order within partitions, like ``localCheckpoint`` did.

Example::

    with stage_checkpoints(spark, ctx.warehouse.root, ctx.run_id, "clean"):
        pairs = checkpoint(interactions.groupBy("user_id", "item_id").count())
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from pyspark.sql import DataFrame, SparkSession

from recaug_spark.paths import file_uri, is_uri

log = logging.getLogger(__name__)
CHECKPOINTS = "_checkpoints"  # the folder under the warehouse; never a table (no _delta_log)


def stage_checkpoint_dir(warehouse_root: str, run_id: str, stage: str) -> str:
    """``<warehouse>/_checkpoints/<run id>/<stage>`` as a URI Spark and every executor resolve alike."""
    import os

    root = warehouse_root.rstrip("/") if is_uri(warehouse_root) else os.path.abspath(warehouse_root)
    return file_uri(f"{root}/{CHECKPOINTS}/{run_id}/{stage}")


def delete_dir(spark: SparkSession, uri: str) -> bool:
    """Delete ``uri`` recursively through Hadoop's FileSystem (local, s3a, hdfs alike); True if it existed."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    filesystem = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return bool(filesystem.delete(path, True))


@contextmanager
def stage_checkpoints(spark: SparkSession, warehouse_root: str, run_id: str, stage: str) -> Iterator[str]:
    """Checkpoint into this stage's folder while the block runs; delete the folder when it ends
    (failed or not: a retry recomputes, it never reads an old run's checkpoint). Yields the folder."""
    context = spark.sparkContext
    previous = context.getCheckpointDir()
    folder = stage_checkpoint_dir(warehouse_root, run_id, stage)
    context.setCheckpointDir(folder)  # Spark adds a folder of its own (a UUID) under it
    try:
        yield folder
    finally:
        try:
            delete_dir(spark, folder)
        except Exception as error:  # noqa: BLE001 - leftover files must not hide the stage's outcome
            log.warning("could not delete the checkpoint folder %s: %s", folder, error)
        if previous is not None:
            context.setCheckpointDir(previous)


def checkpoint(df: DataFrame) -> DataFrame:
    """``df`` computed once and written to the checkpoint directory (one job), its plan truncated.

    Without a checkpoint directory (a library call outside a stage), a local-mode session gets a
    local checkpoint: there the driver is the only executor, so nothing can be lost that a reliable
    checkpoint would keep. On a cluster that is an error: the result would not survive an executor.
    """
    context = df.sparkSession.sparkContext
    if context.getCheckpointDir() is not None:
        return df.checkpoint(eager=True)
    if context.master.startswith("local"):
        return df.localCheckpoint(eager=True)
    raise RuntimeError(
        "no checkpoint directory is set on this cluster session: run the step inside "
        "recaug_spark.checkpoints.stage_checkpoints(...) or call SparkContext.setCheckpointDir"
    )
