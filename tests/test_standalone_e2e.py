"""End to end on a real Spark standalone cluster: spark-submit jobs/pipeline.py with --py-files.

The test starts a one-worker cluster on free ports, submits the whole pipeline (generate → ingest
→ clean → augment → train) as a user would, checks the Delta tables it wrote with ``deltalake`` (no Spark), and asks
the master whether the application ran there (not in local mode). Then it stops the cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from _process import run_in_own_group

from recaug_spark.cluster import free_port, master_json, spark_home, start_cluster, stop_cluster
from recaug_spark.config import ClusterConfig
from recaug_spark.delta.arrow_reader import read_arrow

REPO_ROOT = Path(__file__).resolve().parent.parent
JOB = REPO_ROOT / "jobs" / "pipeline.py"
TABLES = ("events", "items", "sequences", "sequence_targets", "quarantine", "runs", "augmented_sequences",
          "augmented_items", "metrics")


@pytest.fixture
def cluster(tmp_path):
    master_port = free_port()
    webui_port = free_port()
    while webui_port == master_port:
        webui_port = free_port()
    cfg = ClusterConfig(work_dir=str(tmp_path / "cluster"), master_port=master_port, master_webui_port=webui_port,
                        workers=1, cores_per_worker=2, memory_per_worker="2g", start_timeout_s=120)
    try:
        yield cfg, start_cluster(cfg)
    finally:
        stop_cluster(cfg)


def package_zip(dest: Path) -> Path:
    """recaug_spark as a zip for --py-files (sources only, no caches)."""
    package = REPO_ROOT / "recaug_spark"
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(package.rglob("*.py")):
            archive.write(path, path.relative_to(REPO_ROOT).as_posix())
    return dest


def submit_command(master_url: str, py_files: Path, warehouse: Path) -> list[str]:
    return [
        str(spark_home() / "bin" / "spark-submit"),
        "--master", master_url,
        "--conf", "spark.driver.host=127.0.0.1",
        "--conf", "spark.driver.bindAddress=127.0.0.1",
        "--conf", "spark.ui.enabled=false",
        "--driver-memory", "1g",
        "--executor-memory", "1g",
        "--py-files", str(py_files),
        str(JOB),
        "--config", "conf/standalone.yaml",
        "--set", "spark.master=submit",
        "--set", f"run.warehouse={warehouse}",
        "--set", "generate.events=5000",
        "--set", "generate.items=300",
        # the generators are trained for real, briefly: this test is about running on a cluster
        "--set", "fit.reverse_transformer.epochs=3", "--set", "fit.forward_transformer.epochs=3",
        "--set", "fit.item_attributes.epochs=20",
    ]


def failure_report(command: list[str], job: subprocess.CompletedProcess) -> str:
    """The command and the job's output without JVM stack frames, plan dumps or INFO chatter."""

    def trim(text: str, limit: int) -> str:
        kept = [line if len(line) <= 800 else line[:800] + " …" for line in text.splitlines()
                if not line.lstrip().startswith(("at ", "+- ", ":- ")) and " INFO " not in line]
        return "\n".join(kept)[-limit:]

    return f"$ {' '.join(command)}\n--- stdout\n{trim(job.stdout, 4000)}\n--- stderr\n{trim(job.stderr, 6000)}"


def test_pipeline_on_standalone_cluster(cluster, tmp_path):
    cfg, status = cluster
    assert status.running and status.alive_workers == 1
    warehouse = tmp_path / "wh"
    command = submit_command(status.master_url, package_zip(tmp_path / "recaug_spark.zip"), warehouse)
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_LOCAL_IP="127.0.0.1", SPARK_HOME=str(spark_home()),
               RECAUG_PSEUDONYM_KEY="standalone-e2e-test-key")

    # When the pipeline is submitted to the cluster
    started = time.monotonic()
    job = run_in_own_group(command, timeout_s=480, cwd=REPO_ROOT, env=env)
    duration = time.monotonic() - started
    logs = failure_report(command, job)

    # Then it succeeds and every table exists and has rows
    assert job.returncode == 0, logs
    rows = {}
    for name in TABLES:
        path = warehouse / name
        assert (path / "_delta_log").is_dir(), f"table {name} missing at {path}\n{logs}"
        rows[name] = read_arrow(str(path)).num_rows
    assert all(count > 0 for count in rows.values()), rows

    # And the generators were fitted into the warehouse's own models folder and used on the executors
    for name in ("reverse_transformer", "forward_transformer", "item_attributes", "description_index"):
        assert (warehouse / "models" / name / "v1" / "manifest.json").is_file(), name
    generators = {r["generator"] for r in read_arrow(str(warehouse / "augmented_sequences"),
                                                    columns=["generator"]).to_pylist()}
    assert {"reverse_transformer@v1", "forward_transformer@v1"} <= generators, generators

    # And `runs` holds one row per stage of this run
    runs = read_arrow(str(warehouse / "runs")).to_pylist()
    assert sorted(r["stage"] for r in runs) == ["augment", "clean", "fit", "generate", "ingest", "train"], runs
    assert len({r["run_id"] for r in runs}) == 1

    # And the application ran on the standalone master, not in local mode
    state = master_json(cfg) or {}
    deadline = time.monotonic() + 20
    while not state.get("completedapps") and time.monotonic() < deadline:
        time.sleep(0.25)
        state = master_json(cfg) or {}
    assert not state.get("activeapps"), state.get("activeapps")
    apps = state.get("completedapps", [])
    assert len(apps) == 1 and apps[0]["state"] == "FINISHED", apps
    assert list((Path(cfg.work_dir) / "work").glob(f"{apps[0]['id']}/*/stderr")), "no executor ran on the worker"
    print(f"pipeline on the standalone cluster took {duration:.1f}s; rows {rows}")
