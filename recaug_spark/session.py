"""The one place a SparkSession is built: local, standalone or whatever spark-submit set.

Library code never creates a session behind the caller's back: stages receive one. Locally every
service binds to 127.0.0.1 and the UI is off unless asked for.
"""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from recaug_spark.config import SparkConfig


def ensure_driver(what: str) -> None:
    """Raise when driver-only code (sessions, table commits) is called inside a Spark task."""
    from pyspark import TaskContext

    if TaskContext.get() is not None:
        raise RuntimeError(f"{what} must run on the Spark driver, not inside a task")


def session_builder(cfg: SparkConfig) -> SparkSession.Builder:
    """A configured builder (so callers can compose it further, e.g. with Delta's pip helper)."""
    ensure_driver("building a SparkSession")
    local = cfg.master.startswith(("local", "spark://127.", "spark://localhost"))
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", cfg.local_ip)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(cfg.app_name)
    if cfg.master != "submit":
        builder = builder.master(cfg.master)
    settings = {
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.ui.enabled": str(cfg.ui).lower(),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",  # else no timestamp stats
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.ui.showConsoleProgress": "false",
        # Python workers allocate Arrow buffers from glibc's heap, which they share with numpy's
        # temporaries and reuse batch after batch; pyarrow's default (mimalloc) maps and returns
        # fresh pages per batch: the augmenters' vectorized pass is ~1.25x faster (docs/benchmarks.md).
        "spark.executorEnv.ARROW_DEFAULT_MEMORY_POOL": "system",
    }
    if local:
        settings |= {
            "spark.driver.host": cfg.local_ip,
            "spark.driver.bindAddress": cfg.local_ip,
            "spark.driver.memory": cfg.driver_memory,
        }
    settings |= cfg.conf
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder


def get_session(cfg: SparkConfig) -> SparkSession:
    """The process's SparkSession, built from ``cfg``; a session whose SparkContext was stopped or
    whose JVM died is discarded first, so that a crash in one job never leaves the process
    (a notebook, a later stage) stuck with a dead session."""
    discard_dead_session()
    spark = session_builder(cfg).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def session_is_alive(spark: SparkSession) -> bool:
    """False when the session's SparkContext is stopped or its JVM cannot be reached."""
    try:
        return not spark.sparkContext._jsc.sc().isStopped()
    except Exception:  # Py4JError / Py4JNetworkError: the gateway (the JVM) is gone
        return False


def discard_dead_session() -> bool:
    """Forget the active session when it is dead, so that ``getOrCreate`` builds a new one.

    ``getOrCreate`` alone hands back a stopped session (and, when the JVM died, a gateway that no
    longer answers). Returns True when a dead session was discarded.
    """
    from pyspark import SparkContext

    try:
        spark = SparkSession.getActiveSession() or SparkSession._instantiatedSession
    except Exception:  # getActiveSession asks the JVM: a killed JVM refuses the connection
        spark = SparkSession._instantiatedSession
    context = SparkContext._active_spark_context
    if spark is None and context is None:
        return False
    if spark is not None and session_is_alive(spark):
        return False
    gateway_alive = True
    try:
        SparkContext._jvm.java.lang.System.currentTimeMillis()
    except Exception:
        gateway_alive = False
    if gateway_alive and context is not None:
        try:
            context.stop()
        except Exception:  # already stopped on the JVM side
            pass
    SparkSession._instantiatedSession = None
    SparkSession._activeSession = None
    SparkContext._active_spark_context = None
    if not gateway_alive:  # the next context launches a new JVM
        SparkContext._gateway = None
        SparkContext._jvm = None
    return True
