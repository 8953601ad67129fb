"""The real driver process killed (SIGKILL) on a two-worker standalone cluster, then retried with the same
run id: the retry must finish within a bound and the tables must equal an undisturbed run's.

``recaug run --until clean`` runs as a subprocess (generate → ingest → clean on 3,000 generated events).
``$RECAUG_FAULT_KILL_AFTER_COMMIT`` (``recaug_spark/runs.py``: ``with_fault_hook``) makes the driver
SIGKILL itself right after it commits the named table, a deterministic ``kill -9`` at that point:

* **after ingest commits ``events_raw``** (before ``items_raw`` and ``quarantine``): the retry used to
  hang forever, waiting on the ``Observation`` of a write it skipped;
* **between two of clean's commits** (``events`` and ``items`` committed, ``sequences`` and
  ``sequence_targets`` not): readers must not see a silver layer mixed from two attempts, and
  ``recaug runs`` must show clean as started and never finished until the retry finishes it.

The undisturbed run uses the same warehouse path (moved aside after it ran): the path is part of the
config hash, which a retry of a run id must keep. Digests: sha256 over each table's rows at the version
the stage markers name (``runs.pinned_version``), sorted, so they compare content, not file layout.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path

import pytest
from _process import run_to_exit
from _process import two_worker_cluster as start_two_worker_cluster

from recaug_spark.cluster import spark_home
from recaug_spark.delta.arrow_reader import read_arrow
from recaug_spark.runs import (
    FINISHED,
    KILL_AFTER_COMMIT,
    STARTS,
    UNFINISHED,
    pinned_version,
    stage_listing,
    stage_records,
    start_records,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.spark]

RUN_ID = "driver-kill"
TABLES = ("events_raw", "items_raw", "quarantine", "events", "items", "sequences", "sequence_targets")
RETRY_BOUND_S = 420  # an undisturbed run takes ~1-3 min on a busy 2-core machine; the old retry never ended
CONFIG = """
spark: {shuffle_partitions: 4, driver_memory: 1g,
        conf: {spark.executor.cores: "1", spark.executor.memory: 1g, spark.task.maxFailures: "4"}}
generate: {events: 3000, items: 200, partitions: 4}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with start_two_worker_cluster(tmp_path_factory.mktemp("driver-kill-cluster")) as status:
        yield status


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    import yaml

    from recaug_spark.config import load_config

    folder = tmp_path_factory.mktemp("driver-kill")
    (folder / "layer.yaml").write_text(CONFIG)
    # The whole effective config, frozen: a retry of a run id must keep its config hash even if
    # conf/base.yaml changes while the test runs (else the retry is refused, rightly)
    effective = load_config([str(folder / "layer.yaml")]).model_dump(mode="json")
    (folder / "config.yaml").write_text(yaml.safe_dump(effective, sort_keys=False))
    return folder


def recaug_run(master_url: str, root: Path, log: str, kill_after: str | None = None) -> tuple[int, str, float]:
    """``recaug run --until clean`` on the cluster into ``root/wh``; (exit code, output, seconds)."""
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_LOCAL_IP="127.0.0.1", SPARK_HOME=str(spark_home()), RECAUG_PSEUDONYM_KEY="fault-test-key")
    env.pop(KILL_AFTER_COMMIT, None)
    if kill_after:
        env[KILL_AFTER_COMMIT] = kill_after
    command = [str(Path(sys.executable).parent / "recaug"), "run", "--until", "clean", "--config",
               str(root / "config.yaml"), "--warehouse", str(root / "wh"), "--run-id", RUN_ID, "--master", master_url]
    return run_to_exit(command, timeout_s=RETRY_BOUND_S, log=root / log, env=env, cwd=root)


def digests(warehouse: Path) -> dict[str, str]:
    """Table → sha256 of its sorted rows at the version the stage markers name."""
    records = stage_records(str(warehouse / "runs"))
    out = {}
    for table in TABLES:
        rows = read_arrow(str(warehouse / table), version=pinned_version(records, table)).to_pylist()
        lines = sorted(repr(sorted(row.items())) for row in rows)
        assert lines or table == "quarantine", f"{table} is empty"
        out[table] = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    return out


def statuses(warehouse: Path) -> dict[str, tuple[str, int]]:
    """Stage → (status, attempts) of this run id, as ``recaug runs`` lists them."""
    entries = stage_listing(stage_records(str(warehouse / "runs")), start_records(str(warehouse / STARTS)))
    return {e["stage"]: (e["status"], e["attempts"]) for e in entries if e["run_id"] == RUN_ID}


@pytest.fixture(scope="module")
def undisturbed(cluster, root) -> dict[str, str]:
    code, output, seconds = recaug_run(cluster.master_url, root, "undisturbed.log")
    assert code == 0, output[-6000:]
    expected = digests(root / "wh")
    (root / "wh").rename(root / "undisturbed")
    print(f"undisturbed run: {seconds:.0f}s, digests {expected}")
    return expected


def killed_then_retried(cluster, root: Path, table: str) -> tuple[dict, dict, float]:
    """Kill the driver after it commits ``table``, then retry; (statuses after the kill, after the
    retry, retry seconds). Asserts the kill happened where it should."""
    import shutil

    shutil.rmtree(root / "wh", ignore_errors=True)
    code, output, _ = recaug_run(cluster.master_url, root, f"killed-{table}.log", kill_after=table)
    assert code == -signal.SIGKILL, f"exit {code}, expected a SIGKILL\n{output[-6000:]}"
    assert f"after committing {table} v" in output, output[-3000:]
    after_kill = statuses(root / "wh")
    code, output, seconds = recaug_run(cluster.master_url, root, f"retry-{table}.log")
    assert code == 0, output[-6000:]
    return after_kill, statuses(root / "wh"), seconds


def test_driver_killed_after_ingest_commits_events_raw(cluster, root, undisturbed):
    after_kill, after_retry, seconds = killed_then_retried(cluster, root, "events_raw")

    assert after_kill == {"generate": (FINISHED, 1), "ingest": (UNFINISHED, 1)}
    assert after_retry == {"generate": (FINISHED, 1), "ingest": (FINISHED, 2), "clean": (FINISHED, 1)}
    assert seconds < RETRY_BOUND_S
    assert digests(root / "wh") == undisturbed
    print(f"driver killed after events_raw: retry {seconds:.0f}s, digests equal to the undisturbed run's")


def test_driver_killed_between_two_commits_of_clean(cluster, root, undisturbed):
    after_kill, after_retry, seconds = killed_then_retried(cluster, root, "items")

    assert after_kill == {"generate": (FINISHED, 1), "ingest": (FINISHED, 1), "clean": (UNFINISHED, 1)}
    warehouse = root / "wh"
    assert after_retry == {"generate": (FINISHED, 1), "ingest": (FINISHED, 1), "clean": (FINISHED, 2)}
    assert seconds < RETRY_BOUND_S
    assert digests(warehouse) == undisturbed
    assert not list((warehouse / "_checkpoints").glob(f"{RUN_ID}/clean/*")), "checkpoint files left behind"
    print(f"driver killed between clean's commits: retry {seconds:.0f}s, digests equal to the undisturbed run's")
