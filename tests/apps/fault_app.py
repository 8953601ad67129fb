"""A Spark application for the fault-injection tests: run pipeline stages on a standalone cluster,
optionally SIGKILLing an executor JVM at a chosen moment.

Usage: python fault_app.py MASTER WAREHOUSE RUN_ID STAGE[,STAGE...] [options]

  --copy-after STAGE DEST     copy the warehouse to DEST once STAGE has committed (repeatable)
  --kill-after-materialize M  clean: once the annotated events are materialized (checkpointed),
                              SIGKILL one executor and wait until the driver has removed it; M records it
  --kill-in-task M            augment: the task of partition 0 SIGKILLs its own executor JVM in its
                              first attempt, after producing its first batch; M records it
  --kill-in-ingest M          ingest: the same, in the job that writes the accepted events (events_raw)
  --local-checkpoints         clean with today's old ``localCheckpoint`` (to show what the faults did before)
  --save-config F / --load-config F
                              write the effective config (JSON) / run with that exact config: a retry of a
                              run id must keep its config hash, even if the defaults changed meanwhile

Prints ``EXECUTORS <n>`` and one line per stage; exits non-zero when a stage fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from recaug_spark.config import SparkConfig, load_config, validate
from recaug_spark.pipeline import run_stages
from recaug_spark.runs import RunContext
from recaug_spark.session import get_session

EXECUTOR_CLASS = "CoarseGrainedExecutorBackend"
OVERRIDES = [
    "generate.events=3000", "generate.items=200", "generate.partitions=4", "augment.partitions=4",
    "augment.arrow_batch_rows=64", "augment.items.enabled=false",
]
BRANCHES = [{"chain": "crop", "params": {"crop": {"eta": 0.6}}}, {"chain": "mask", "params": {"mask": {"gamma": 0.3}}},
            {"chain": "reorder", "params": {"reorder": {"beta": 0.2}}}]


def executor_pids(app_id: str) -> list[int]:
    """PIDs of this application's executor JVMs on this machine, by executor id."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(EXECUTOR_CLASS in a for a in argv) and app_id in argv:
            executor_id = argv[argv.index("--executor-id") + 1] if "--executor-id" in argv else "?"
            found.append((executor_id, int(entry.name)))
    return [pid for _, pid in sorted(found)]


def live_executors(spark) -> int:
    return len(spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos()) - 1  # less the driver


def kill_one_executor(spark, marker: str) -> None:
    """SIGKILL the first executor JVM; return once the driver counts one executor fewer (≤ 60 s)."""
    before = live_executors(spark)
    pids = executor_pids(spark.sparkContext.applicationId)
    assert pids, "no executor JVM of this application found"
    os.kill(pids[0], signal.SIGKILL)
    Path(marker).write_text(f"{pids[0]}\n")
    deadline = time.monotonic() + 60
    while live_executors(spark) >= before and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"KILLED executor pid {pids[0]}; executors {before} -> {live_executors(spark)}", flush=True)


def kill_in_task(marker: str):
    """mapInArrow passthrough: partition 0's first attempt SIGKILLs its executor JVM after one batch."""

    def passthrough(batches):
        from pyspark import TaskContext

        context = TaskContext.get()
        for index, batch in enumerate(batches):
            yield batch
            if context.partitionId() == 0 and context.attemptNumber() == 0 and index == 0:
                pid = os.getpid()
                while pid > 1:  # up the process tree to the executor's JVM
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    pid = int(stat.rpartition(")")[2].split()[1])
                    if EXECUTOR_CLASS in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                        Path(marker).write_text(f"{pid}\n")
                        os.kill(pid, signal.SIGKILL)
                        time.sleep(30)  # the JVM is gone; this worker dies with its pipes

    return passthrough


def install_faults(spark, argv: list[str]) -> None:
    import recaug_spark.stages.augment as augment_stage
    import recaug_spark.stages.clean as clean_stage
    import recaug_spark.stages.ingest as ingest_stage

    if "--local-checkpoints" in argv:
        clean_stage.checkpoint = lambda df: df.localCheckpoint(eager=True)
    if "--kill-after-materialize" in argv:
        marker, original = argv[argv.index("--kill-after-materialize") + 1], clean_stage.materialize

        def materialize_then_kill(df):
            done = original(df)
            if not Path(marker).exists():
                kill_one_executor(spark, marker)
            return done

        clean_stage.materialize = materialize_then_kill
    if "--kill-in-task" in argv:
        marker, original = argv[argv.index("--kill-in-task") + 1], augment_stage.augment_sequences

        def augment_then_kill(*args, **kwargs):
            out = original(*args, **kwargs)
            return out.mapInArrow(kill_in_task(marker), out.schema)

        augment_stage.augment_sequences = augment_then_kill
    if "--kill-in-ingest" in argv:
        marker, original_rows = argv[argv.index("--kill-in-ingest") + 1], ingest_stage.accepted_rows

        def accepted_then_kill(checked, schema):
            out = original_rows(checked, schema)
            if schema is not ingest_stage.EVENTS_RAW:  # the items_raw write: untouched
                return out
            return out.mapInArrow(kill_in_task(marker), out.schema)

        ingest_stage.accepted_rows = accepted_then_kill


def main(argv: list[str]) -> None:
    master, warehouse, run_id, stages = argv[:4]
    spark = get_session(SparkConfig(master=master, shuffle_partitions=4, driver_memory="1g", conf={
        "spark.executor.cores": "1", "spark.executor.memory": "1g", "spark.task.maxFailures": "4",
    }))
    try:
        spark.sparkContext.parallelize(range(100), 4).count()  # wait until executors registered
        print(f"EXECUTORS {live_executors(spark)}", flush=True)
        install_faults(spark, argv)
        cfg = load_config(overrides=[f"run.warehouse={warehouse}", *OVERRIDES]).with_overrides(
            **{"augment.branches": BRANCHES})
        if "--load-config" in argv:
            cfg = validate(json.loads(Path(argv[argv.index("--load-config") + 1]).read_text()))
        if "--save-config" in argv:
            Path(argv[argv.index("--save-config") + 1]).write_text(cfg.to_json())
        print(f"CONFIG {cfg.hash}", flush=True)
        ctx = RunContext.create(spark, cfg, run_id=run_id)
        snapshots = {argv[i + 1]: argv[i + 2] for i, arg in enumerate(argv) if arg == "--copy-after"}
        for stage in stages.split(","):
            run_stages(ctx, [stage], echo=lambda line: print(line, flush=True))
            if stage in snapshots:
                shutil.copytree(warehouse, snapshots[stage])
    finally:
        spark.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
