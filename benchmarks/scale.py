"""Scale run: generate → ingest → clean → augment on a local standalone cluster, at growing sizes.

The script starts a Spark standalone cluster on 127.0.0.1 (``recaug_spark.cluster``: one master,
``--workers`` workers, stopped by their PIDs at the end, whatever happens), then runs the four stages
once per size of ``--sizes``, each size in its own driver process (so that the driver's figures are
that size's alone) and its own warehouse. Per stage and size it reports:

* seconds, input events/s per core and cost per event (core-ns = seconds × cores ÷ events);
* peak executor memory: the largest JVM heap any executor reported during the stage's jobs
  (``peakExecutorMetrics`` of Spark's status store, from executor heartbeats);
* spill: memory and disk bytes spilled by the stage's tasks (status store);
* the driver: its JVM heap in use after a full GC at the end of the stage, and the Python
  driver's peak RSS over the whole size.

Across sizes it gives each stage's cost per event at the largest size ÷ the smallest (flat = within
1.3×) and checks that nothing grows on the driver with the data: the driver's JVM heap after GC and
its Python peak RSS at the largest size must stay within ``--driver-growth`` × the smallest's
(+ 64 MB for noise); the script exits non-zero when they do not.

The augment stage runs the default pipeline's random branches (crop, mask, reorder, as
``benchmarks/augment_throughput.py``) and the item branches synonym_replace and price_noise: the
generator-backed branches need a fitted models folder (``benchmarks/generator_inference.py``).

Usage: python benchmarks/scale.py [--sizes 1e5,1e6] [--workers 2] [--cores-per-worker 1]
       [--memory-per-worker 3g] [--executor-memory 2g] [--driver-memory 2g] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STAGES = ("generate", "ingest", "clean", "augment")
AUGMENT = ("augment.branches=[{chain: crop, params: {crop: {eta: 0.6}}}, {chain: mask, params: {mask: {gamma: 0.3}}},"
           " {chain: reorder, params: {reorder: {beta: 0.2}}}]",
           "augment.items.branches=[{chain: synonym_replace}, {chain: price_noise}]")
SLACK_BYTES = 64 * 2**20


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e5,1e6", help="comma-separated generated event counts")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores-per-worker", type=int, default=1)
    parser.add_argument("--memory-per-worker", default="3g")
    parser.add_argument("--executor-memory", default="2g")
    parser.add_argument("--driver-memory", default="2g")
    parser.add_argument("--driver-growth", type=float, default=1.5,
                        help="largest size's driver memory ÷ smallest's above which the run fails")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, removed)")
    parser.add_argument("--json", default=None, help="also save the figures to this JSON file")
    parser.add_argument("--size-run", default=None, help=argparse.SUPPRESS)  # internal: one size, in a child
    parser.add_argument("--master", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.size_run:
        return size_run(args)
    from recaug_spark.cluster import free_port, master_url, start_cluster, stop_cluster
    from recaug_spark.config import ClusterConfig

    sizes = sorted({int(float(s)) for s in args.sizes.split(",") if s.strip()})
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="recaug-scale-"))
    cluster = ClusterConfig(work_dir=str(workdir / "cluster"), master_port=free_port(), master_webui_port=free_port(),
                            workers=args.workers, cores_per_worker=args.cores_per_worker,
                            memory_per_worker=args.memory_per_worker)
    results = []
    try:
        start_cluster(cluster)
        for size in sizes:
            results.append(run_child(args, size, master_url(cluster), workdir))
    finally:
        stop_cluster(cluster)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report = summarize(results, args.workers * args.cores_per_worker, args.driver_growth)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, sort_keys=True))
    if not report["driver_flat"]:
        raise SystemExit("driver memory grew with the data (see 'driver' above)")


def run_child(args: argparse.Namespace, size: int, master: str, workdir: Path) -> dict:
    """One size in its own driver process; its figures come back as JSON."""
    out = workdir / f"size_{size}.json"
    command = [sys.executable, __file__, "--size-run", str(size), "--master", master, "--workdir", str(workdir),
               "--json", str(out), "--executor-memory", args.executor_memory, "--driver-memory", args.driver_memory]
    print(f"size {size:,}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------------ one size

def size_run(args: argparse.Namespace) -> None:
    """Run the four stages on ``--size-run`` events against ``--master``; write the figures to ``--json``."""
    from recaug_spark.config import load_config
    from recaug_spark.pipeline import stage_function
    from recaug_spark.runs import RunContext, timed
    from recaug_spark.session import get_session

    size = int(args.size_run)
    warehouse = Path(args.workdir) / f"wh_{size}"
    shutil.rmtree(warehouse, ignore_errors=True)
    cfg = load_config(overrides=[
        f"run.warehouse={warehouse}", f"generate.events={size}", f"generate.items={max(2_000, size // 200)}",
        f"spark.master={args.master}", f"spark.driver_memory={args.driver_memory}", "spark.app_name=recaug-scale",
        f"spark.shuffle_partitions={max(8, size // 500_000)}", f"augment.partitions={max(8, size // 500_000)}",
        f"spark.conf={{spark.executor.memory: {args.executor_memory}}}", *AUGMENT])
    spark = get_session(cfg.spark)
    figures = {"events": size, "stages": {}}
    try:
        ctx = RunContext.create(spark, cfg, run_id=f"scale-{size}")
        for name in STAGES:
            spark.sparkContext.setJobGroup(f"scale-{name}", name)
            result = timed(stage_function(name), ctx)
            figures["stages"][name] = {"seconds": result.duration_s, "rows_in": result.rows_in,
                                       "rows_out": result.rows_out, **stage_metrics(spark, f"scale-{name}"),
                                       "driver_heap_after_gc": driver_heap_after_gc(spark)}
        figures["driver_python_peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    finally:
        spark.stop()
    Path(args.json).write_text(json.dumps(figures))


def stage_metrics(spark, group: str) -> dict:
    """Spill bytes and peak executor JVM heap of the jobs of ``group``, from Spark's status store.

    Peak metrics come with executor heartbeats: a job shorter than the heartbeat interval may
    report none (0 here)."""
    from py4j.protocol import Py4JError

    time.sleep(1.0)  # let the listener bus deliver the last task-end events
    sc = spark.sparkContext
    tracker, store = sc.statusTracker(), sc._jsc.sc().statusStore()
    spilled_memory = spilled_disk = peak_heap = 0
    for job in tracker.getJobIdsForGroup(group):
        info = tracker.getJobInfo(job)
        for stage_id in (info.stageIds if info else ()):
            try:
                data = store.lastStageAttempt(stage_id)
            except Py4JError:  # a stage that never ran (skipped: its shuffle output was reused)
                continue
            spilled_memory += data.memoryBytesSpilled()
            spilled_disk += data.diskBytesSpilled()
            peak = data.peakExecutorMetrics()
            if peak.isDefined():
                peak_heap = max(peak_heap, peak.get().getMetricValue("JVMHeapMemory"))
    return {"spill_memory_bytes": spilled_memory, "spill_disk_bytes": spilled_disk, "executor_peak_heap": peak_heap}


def driver_heap_after_gc(spark) -> int:
    """Bytes of the driver JVM's heap in use after a full garbage collection."""
    jvm = spark.sparkContext._jvm
    jvm.java.lang.System.gc()
    time.sleep(0.5)
    return int(jvm.java.lang.management.ManagementFactory.getMemoryMXBean().getHeapMemoryUsage().getUsed())


# ------------------------------------------------------------------------------------ report

def summarize(results: list[dict], cores: int, growth: float) -> dict:
    """Per stage and size: events/s per core and core-ns per event; across sizes: cost and driver growth."""
    for size in results:
        for stage in size["stages"].values():
            stage["events_per_s_core"] = size["events"] / stage["seconds"] / cores
            stage["core_ns_per_event"] = stage["seconds"] * cores / size["events"] * 1e9
    first, last = results[0], results[-1]
    cost = {name: last["stages"][name]["core_ns_per_event"] / first["stages"][name]["core_ns_per_event"]
            for name in STAGES}
    heap = [max(s["driver_heap_after_gc"] for s in r["stages"].values()) for r in results]
    rss = [r["driver_python_peak_rss"] for r in results]
    flat = all(values[-1] <= growth * values[0] + SLACK_BYTES for values in (heap, rss))
    return {"cores": cores, "sizes": results, "cost_ratio_largest_over_smallest": cost,
            "driver_heap_after_gc": heap, "driver_python_peak_rss": rss, "driver_growth_limit": growth,
            "driver_flat": flat}


def print_report(report: dict) -> None:
    mb = 2**20
    print(f"\nScale run on a standalone cluster ({report['cores']} executor cores)")
    print(f"{'events':>12} {'stage':<9}{'seconds':>9}{'ev/s/core':>11}{'core-ns/ev':>12}{'exec peak MB':>14}"
          f"{'spill MB':>10}{'driver heap MB':>16}")
    for size in report["sizes"]:
        for name, s in size["stages"].items():
            spill = (s["spill_memory_bytes"] + s["spill_disk_bytes"]) / mb
            print(f"{size['events']:>12,} {name:<9}{s['seconds']:>9.1f}{s['events_per_s_core']:>11,.0f}"
                  f"{s['core_ns_per_event']:>12,.0f}{s['executor_peak_heap'] / mb:>14,.0f}{spill:>10,.1f}"
                  f"{s['driver_heap_after_gc'] / mb:>16,.0f}")
    if len(report["sizes"]) > 1:
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in report["cost_ratio_largest_over_smallest"].items())
        print(f"cost per event, largest ÷ smallest size: {ratios} (flat: ≤ 1.30)")
    heap = " → ".join(f"{b / mb:,.0f}" for b in report["driver_heap_after_gc"])
    rss = " → ".join(f"{b / mb:,.0f}" for b in report["driver_python_peak_rss"])
    print(f"driver: JVM heap after GC {heap} MB, Python peak RSS {rss} MB: "
          f"{'flat' if report['driver_flat'] else 'GROWS'} (limit {report['driver_growth_limit']} × + 64 MB)")


if __name__ == "__main__":
    main()
