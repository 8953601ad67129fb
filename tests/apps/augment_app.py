"""A Spark application for the cluster determinism test: augment fixed sequences, write Parquet.

Usage: python augment_app.py MASTER CORES_MAX OUTPUT [--kill-once MARKER]

With ``--kill-once`` the Python worker running partition 0 exits abruptly in the task's first
attempt (after producing output), so Spark must retry that task; MARKER records that it happened.
"""

from __future__ import annotations

import datetime as dt
import os
import sys

from recaug_spark.augment.engine import augment_sequences
from recaug_spark.config import AugmentConfig, BranchConfig, SparkConfig
from recaug_spark.schemas import SEQUENCES
from recaug_spark.session import get_session

BRANCHES = (
    BranchConfig(chain="crop > mask", copies=2),
    BranchConfig(chain="insert > reorder", params={"insert": {"rate": 0.3}}),
    BranchConfig(chain="prefixes", max_length=8),
)


def rows(users: int = 400):
    t0 = dt.datetime(2024, 3, 1)
    out = []
    for u in range(users):
        n = 1 + (u * 11) % 17
        items = [f"i{(u * 7 + k * 13) % 97}" for k in range(n)]
        stamps = [t0 + dt.timedelta(minutes=u * 50 + 3 * k) for k in range(n)]
        out.append((f"user-{u}", items, stamps, ["view"] * n, [f"user-{u}-1"] * n, ["DE"] * n, ["web"] * n, n))
    return out


def kill_first_attempt(marker: str):
    def passthrough(batches):
        from pyspark import TaskContext

        context = TaskContext.get()
        for index, batch in enumerate(batches):
            yield batch
            if context.partitionId() == 0 and context.attemptNumber() == 0 and index == 0:
                open(marker, "w").close()
                os._exit(1)  # the worker dies mid-task: Spark retries the task elsewhere

    return passthrough


def main(argv: list[str]) -> None:
    master, cores_max, output = argv[:3]
    spark = get_session(SparkConfig(master=master, shuffle_partitions=4, conf={
        "spark.cores.max": cores_max, "spark.executor.cores": "1", "spark.executor.memory": "1g",
        "spark.task.maxFailures": "4",
    }))
    try:
        spark.sparkContext.parallelize(range(100), 4).count()  # wait until executors registered
        executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
        sequences = spark.createDataFrame(rows(), SEQUENCES)
        out = augment_sequences(sequences, AugmentConfig(partitions=6, arrow_batch_rows=32, branches=BRANCHES),
                                11, "run", "hash")
        if "--kill-once" in argv:
            out = out.mapInArrow(kill_first_attempt(argv[argv.index("--kill-once") + 1]), out.schema)
        out.write.parquet(output)
        print(f"executors={executors}")
    finally:
        spark.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
