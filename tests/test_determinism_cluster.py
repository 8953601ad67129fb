"""Determinism on a real standalone cluster: the augmented rows are the same with 1 or 2 executors
and after a task whose Python worker died mid-way was retried (docs/architecture.md, determinism)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _process import run_in_own_group
from _process import two_worker_cluster as start_two_worker_cluster

from recaug_spark.cluster import spark_home

APP = Path(__file__).resolve().parent / "apps" / "augment_app.py"


@pytest.fixture(scope="module")
def two_worker_cluster(tmp_path_factory):
    with start_two_worker_cluster(tmp_path_factory.mktemp("cluster2")) as status:
        yield status


def run_app(master_url: str, cores_max: int, output: Path, *extra: str) -> str:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_LOCAL_IP="127.0.0.1", SPARK_HOME=str(spark_home()))
    job = run_in_own_group([sys.executable, str(APP), master_url, str(cores_max), str(output), *extra],
                           timeout_s=240, env=env)
    assert job.returncode == 0, f"{job.stdout[-3000:]}\n{job.stderr[-6000:]}"
    return job.stdout


def rows_of(output: Path) -> list[tuple]:
    table = pq.read_table(output)
    return sorted(tuple(str(v) for v in row.values()) for row in table.to_pylist())


def test_same_rows_with_one_or_two_executors_and_after_a_killed_task(two_worker_cluster, tmp_path):
    assert two_worker_cluster.alive_workers == 2
    url = two_worker_cluster.master_url

    # Given the same sequences, config and seed, augmented with 1 executor, then with 2
    one = run_app(url, 1, tmp_path / "one")
    two = run_app(url, 2, tmp_path / "two")
    assert "executors=1" in one and "executors=2" in two

    # And once more with 2 executors where partition 0's Python worker dies in its first attempt
    marker = tmp_path / "killed"
    run_app(url, 2, tmp_path / "retried", "--kill-once", str(marker))
    assert marker.exists(), "the first attempt was never killed, so nothing was retried"

    # Then all three outputs hold exactly the same rows
    expected = rows_of(tmp_path / "one")
    assert len(expected) > 400 and any("augmented" in row for row in expected)
    assert rows_of(tmp_path / "two") == expected
    assert rows_of(tmp_path / "retried") == expected
