"""The local standalone cluster manager against a real master and worker on free ports.

Jobs run in a subprocess: the suite's own SparkSession lives in this process, and one process
cannot hold a second SparkContext.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest
from _process import run_in_own_group

from recaug_spark.cluster import (
    ClusterError,
    ClusterStatus,
    cluster_status,
    default_work_dir,
    format_status,
    format_stopped,
    free_port,
    master_json,
    start_cluster,
    stop_cluster,
)
from recaug_spark.config import ClusterConfig, ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parent.parent

JOB = """
import sys
from recaug_spark.config import SparkConfig
from recaug_spark.session import get_session

spark = get_session(SparkConfig(master=sys.argv[1], app_name="recaug-cluster-test", driver_memory="1g",
                                conf={"spark.executor.memory": "512m"}))
assert spark.sparkContext.master == sys.argv[1], spark.sparkContext.master
print("COUNT", spark.range(1000).count())
# a Python function on the executors: the worker found PYSPARK_PYTHON
print("PYSUM", spark.sparkContext.parallelize(range(100), 2).map(lambda x: x * 2).sum())
spark.stop()
"""


def _two_free_ports() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


def _cfg(work_dir: Path, **changes) -> ClusterConfig:
    master_port, webui_port = _two_free_ports()
    settings = dict(work_dir=str(work_dir), master_port=master_port, master_webui_port=webui_port,
                    workers=1, cores_per_worker=2, memory_per_worker="2g", start_timeout_s=150, stop_timeout_s=20)
    return ClusterConfig(**(settings | changes))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:  # a zombie waiting to be reaped is dead
        return stat.read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


@pytest.fixture
def cluster_cfg(tmp_path):
    cfg = _cfg(tmp_path / "cluster")
    yield cfg
    stop_cluster(cfg)  # always, even when the test failed half-way


def test_start_run_job_stop(cluster_cfg: ClusterConfig):
    # Given stale PID files of a cluster that died (a PID that is not a Spark daemon)
    work = Path(cluster_cfg.work_dir)
    work.mkdir(parents=True)
    (work / "master.pid").write_text(f"{os.getpid()}\n")
    (work / "worker-1.pid").write_text("999999999\n")
    stale = cluster_status(cluster_cfg)
    assert (stale.master_pid, stale.master_alive, stale.workers_alive) == (os.getpid(), False, (False,))

    # When the cluster starts
    started = time.monotonic()
    status = start_cluster(cluster_cfg)
    start_s = time.monotonic() - started

    # Then the master answers and reports its one worker ALIVE
    assert isinstance(status, ClusterStatus)
    assert status.running and status.reachable and status.master_state == "ALIVE"
    assert status.master_url == f"spark://127.0.0.1:{cluster_cfg.master_port}"
    assert status.alive_workers == 1 and len(status.workers) == 1 and status.workers_alive == (True,)
    pids = [status.master_pid, *status.worker_pids]
    assert all(_pid_alive(pid) for pid in pids) and os.getpid() not in pids
    assert (work / "logs" / "master.log").is_file() and (work / "logs" / "worker-1.log").is_file()
    text = format_status(cluster_status(cluster_cfg))
    assert status.master_url in text and "1 worker(s) ALIVE" in text and f"pid {status.worker_pids[0]} running" in text
    # each worker's own state as the master reports it, found by the port it was started on
    [worker] = status.workers
    assert worker.state == "ALIVE" and worker.address == f"127.0.0.1:{(work / 'worker-1.port').read_text().strip()}"
    assert f"worker-1  pid {worker.pid} running  {worker.address}  master says ALIVE" in text

    # And a second start is refused while it runs, naming the live daemons
    with pytest.raises(ClusterError, match="already running") as refused:
        start_cluster(cluster_cfg)
    assert f"master pid {status.master_pid}" in str(refused.value)
    # And another cluster on the same ports fails early, naming the key
    with pytest.raises(ClusterError, match="cluster.master_port.*in use"):
        start_cluster(cluster_cfg.model_copy(update={"work_dir": str(work.parent / "other")}))
    assert cluster_status(cluster_cfg).running

    # When a job runs against it from another process
    job = run_in_own_group([sys.executable, "-c", JOB, status.master_url], timeout_s=240, cwd=REPO_ROOT)
    assert job.returncode == 0, job.stderr[-4000:]
    assert "COUNT 1000" in job.stdout and "PYSUM 9900" in job.stdout

    # Then the master lists it as a completed application
    apps = _completed_apps(cluster_cfg)
    assert [app["name"] for app in apps] == ["recaug-cluster-test"]
    assert apps[0]["state"] == "FINISHED"
    assert list((work / "work").glob("app-*")), "the executor ran in the worker's --work-dir"

    # When it stops
    stopped = stop_cluster(cluster_cfg)

    # Then workers went first, then the master; the processes and PID files are gone
    assert [(s.name, s.pid) for s in stopped] == [("worker-1", status.worker_pids[0]), ("master", status.master_pid)]
    assert {s.outcome for s in stopped} <= {"terminated", "killed"}
    assert not any(_pid_alive(pid) for pid in pids)
    assert not list(work.glob("*.pid")) and not list(work.glob("*.port"))
    assert master_json(cluster_cfg) is None
    after = cluster_status(cluster_cfg)
    assert not after.running and after.master_pid is None and after.workers == ()
    # And stopping again is a no-op
    assert stop_cluster(cluster_cfg) == []
    assert "no cluster was running" in format_stopped([])
    print(f"cluster started in {start_s:.1f}s")


def _completed_apps(cfg: ClusterConfig, timeout_s: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        state = master_json(cfg) or {}
        if state.get("completedapps") or time.monotonic() > deadline:
            return state.get("completedapps", [])
        time.sleep(0.25)


def test_start_timeout_names_logs_and_cleans_up(tmp_path):
    cfg = _cfg(tmp_path / "cluster", start_timeout_s=0.5)
    try:
        with pytest.raises(ClusterError) as failed:
            start_cluster(cfg)
        message = str(failed.value)
        assert "cluster.start_timeout_s" in message and str(tmp_path / "cluster" / "logs" / "master.log") in message
        # what was started is stopped again
        assert not list((tmp_path / "cluster").glob("*.pid"))
        assert not cluster_status(cfg).master_alive
    finally:
        stop_cluster(cfg)


def test_port_in_use_fails_before_launching(tmp_path):
    cfg = _cfg(tmp_path / "cluster")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", cfg.master_webui_port))
        busy.listen()
        with pytest.raises(ClusterError, match=f"cluster.master_webui_port: port {cfg.master_webui_port}"):
            start_cluster(cfg)
    assert not list((tmp_path / "cluster").glob("*.pid"))


def test_stop_and_status_without_a_cluster(tmp_path):
    cfg = _cfg(tmp_path / "never-started")
    assert stop_cluster(cfg) == []
    status = cluster_status(cfg)
    assert not status.running and not status.reachable and status.master_pid is None
    assert "not started" in format_status(status)

    # stale PID files are reported, then removed by stop
    work = tmp_path / "stale"
    work.mkdir()
    (work / "master.pid").write_text("999999999\n")
    cfg = cfg.model_copy(update={"work_dir": str(work)})
    assert "stale PID file" in format_status(cluster_status(cfg))
    assert [(s.name, s.outcome) for s in stop_cluster(cfg)] == [("master", "not running")]
    assert not (work / "master.pid").exists()


def test_cluster_config_validation():
    with pytest.raises(ConfigError, match="master_port and master_webui_port"):
        load_config(overrides=["cluster.master_port=9000", "cluster.master_webui_port=9000"])
    with pytest.raises(ConfigError, match="cluster.memory_per_worker"):
        load_config(overrides=["cluster.memory_per_worker=lots"])
    with pytest.raises(ConfigError, match="cluster.master_port"):
        load_config(overrides=["cluster.master_port=70000"])
    assert load_config(overrides=["cluster.memory_per_worker=2G"]).cluster.memory_per_worker == "2g"


def test_default_work_dir_is_absolute_and_overridable(monkeypatch, tmp_path):
    monkeypatch.delenv("RECAUG_CLUSTER_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_work_dir() == tmp_path / "home" / ".local" / "state" / "recaug" / "cluster"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_work_dir() == tmp_path / "state" / "recaug" / "cluster"
    monkeypatch.setenv("RECAUG_CLUSTER_DIR", str(tmp_path / "mine"))
    assert default_work_dir() == tmp_path / "mine"
    # the config default is that folder; an explicit cluster.work_dir still wins
    assert load_config().cluster.work_dir is None
    assert cluster_status(load_config().cluster).work_dir == str(tmp_path / "mine")
    assert cluster_status(ClusterConfig(work_dir=str(tmp_path / "x"))).work_dir == str(tmp_path / "x")


def test_cluster_status_and_stop_find_the_cluster_from_any_directory(monkeypatch, tmp_path):
    """`recaug cluster status|stop` from two unrelated folders see the same PID files (the old default,
    ./.recaug/cluster, made each folder see its own, and stop left a running cluster up)."""
    from click.testing import CliRunner

    from recaug_spark.cli import main

    state = tmp_path / "state"
    monkeypatch.delenv("RECAUG_CLUSTER_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    work = state / "recaug" / "cluster"
    work.mkdir(parents=True)
    (work / "master.pid").write_text("999999999\n")  # a cluster that died: stale PID file
    (work / "worker-1.pid").write_text("999999998\n")
    outputs = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        result = CliRunner().invoke(main, ["cluster", "status"])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert outputs[0] == outputs[1]
    assert "pid 999999999 NOT RUNNING (stale PID file)" in outputs[0] and f"work dir  {work}" in outputs[0]
    assert "worker-1  pid 999999998 NOT RUNNING" in outputs[0]
    stopped = CliRunner().invoke(main, ["cluster", "stop"])
    assert stopped.exit_code == 0 and "master    pid 999999999 not running" in stopped.output, stopped.output
    assert not list(work.glob("*.pid"))
