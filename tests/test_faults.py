"""Fault injection on a real two-worker standalone cluster (small data): an executor SIGKILLed in the
middle of ingest, clean and augment, and the tables must come out identical to an undisturbed run's.

One undisturbed run (generate → ingest → clean → augment, run id ``faults``) snapshots the warehouse
after generate, after ingest and after clean, and is then moved aside; each fault test puts the snapshot its stage
starts from back at the same path (the warehouse is part of the config hash, which a retry of a run
id must keep) and re-runs that stage, with ``tests/apps/fault_app.py`` killing an executor:

* **mid-ingest**: the task of partition 0 of the job that writes ``events_raw`` (the one that also
  observes the count of every quarantine reason) kills its own executor JVM after its first batch;
  the counts must still reconcile and ``events_raw``, ``items_raw``, ``quarantine`` equal the
  undisturbed run's;
* **mid-clean**: right after the annotated events are materialized, before they are counted and
  written. With the old ``localCheckpoint`` the blocks died with the executor and the stage failed
  with ``CHECKPOINT_RDD_BLOCK_ID_NOT_FOUND``; the reliable checkpoint files outlive it;
* **mid-augment**: the task of partition 0 kills its own executor JVM after its first batch, so
  Spark must rerun the lost tasks on the other executor.

Digests: sha256 over each table's rows (read with ``recaug_spark.delta.arrow_reader``), sorted, so
they compare content and not file layout.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest
from _process import run_in_own_group
from _process import two_worker_cluster as start_two_worker_cluster

from recaug_spark.cluster import spark_home
from recaug_spark.delta.arrow_reader import read_arrow

APP = Path(__file__).resolve().parent / "apps" / "fault_app.py"
RUN_ID = "faults"
CLEAN_TABLES = ("events", "items", "sequences", "sequence_targets")
INGEST_TABLES = ("events_raw", "items_raw", "quarantine")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with start_two_worker_cluster(tmp_path_factory.mktemp("fault-cluster")) as status:
        yield status


def run_app(master_url: str, warehouse: Path, stages: str, *extra: str, expect_ok: bool = True):
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_LOCAL_IP="127.0.0.1", SPARK_HOME=str(spark_home()), RECAUG_PSEUDONYM_KEY="fault-test-key")
    job = run_in_own_group([sys.executable, str(APP), master_url, str(warehouse), RUN_ID, stages, *extra],
                           timeout_s=480, env=env)
    if expect_ok:
        assert job.returncode == 0, f"{job.stdout[-3000:]}\n{job.stderr[-6000:]}"
        assert "EXECUTORS 2" in job.stdout, job.stdout
    return job


def digest(warehouse: Path, table: str) -> str:
    rows = read_arrow(str(warehouse / table)).to_pylist()
    lines = sorted(repr(sorted(row.items())) for row in rows)
    assert lines, f"{table} is empty"
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def undisturbed(cluster, tmp_path_factory):
    """(snapshots folder, the undisturbed warehouse) after generate → ingest → clean → augment."""
    root = tmp_path_factory.mktemp("faults")
    run_app(cluster.master_url, root / "wh", "generate,ingest,clean,augment",
            "--save-config", str(root / "config.json"),
            "--copy-after", "generate", str(root / "after-generate"),
            "--copy-after", "ingest", str(root / "after-ingest"), "--copy-after", "clean", str(root / "after-clean"))
    (root / "wh").rename(root / "baseline")
    return root, root / "baseline"


def restored(root: Path, snapshot: str) -> Path:
    """The warehouse path of the undisturbed run, holding a copy of ``snapshot``."""
    warehouse = root / "wh"
    shutil.rmtree(warehouse, ignore_errors=True)
    shutil.copytree(root / snapshot, warehouse)
    return warehouse


def test_executor_killed_mid_ingest_gives_the_same_tables(cluster, undisturbed):
    root, baseline = undisturbed
    warehouse = restored(root, "after-generate")
    marker = root / "killed-in-ingest"

    job = run_app(cluster.master_url, warehouse, "ingest", "--load-config", str(root / "config.json"),
                  "--kill-in-ingest", str(marker))

    assert marker.exists(), f"no executor was killed\n{job.stdout[-3000:]}"
    expected = {t: digest(baseline, t) for t in INGEST_TABLES}
    assert {t: digest(warehouse, t) for t in INGEST_TABLES} == expected
    print(f"mid-ingest kill: digests {expected} equal to the undisturbed run's")


def test_executor_killed_mid_clean_gives_the_same_tables(cluster, undisturbed):
    root, baseline = undisturbed
    warehouse = restored(root, "after-ingest")
    marker = root / "killed-in-clean"

    job = run_app(cluster.master_url, warehouse, "clean", "--load-config", str(root / "config.json"),
                  "--kill-after-materialize", str(marker))

    assert marker.exists() and "KILLED executor" in job.stdout, "no executor was killed"
    expected = {t: digest(baseline, t) for t in CLEAN_TABLES}
    assert {t: digest(warehouse, t) for t in CLEAN_TABLES} == expected
    assert not list((warehouse / "_checkpoints").glob(f"{RUN_ID}/clean/*")), "checkpoint files left behind"
    print(f"mid-clean kill: digests {expected} equal to the undisturbed run's")


def test_executor_killed_mid_augment_gives_the_same_rows(cluster, undisturbed):
    root, baseline = undisturbed
    warehouse = restored(root, "after-clean")
    marker = root / "killed-in-augment"

    run_app(cluster.master_url, warehouse, "augment", "--load-config", str(root / "config.json"),
            "--kill-in-task", str(marker))

    assert marker.exists(), "no executor was killed"
    expected = digest(baseline, "augmented_sequences")
    assert digest(warehouse, "augmented_sequences") == expected
    print(f"mid-augment kill: augmented_sequences digest {expected} equal to the undisturbed run's")
