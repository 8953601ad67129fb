"""Running a child process tree from a test, killed as a whole on timeout; a test's own standalone cluster."""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest


def run_in_own_group(command: list[str], *, timeout_s: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a new process group, killed as a whole (driver JVM and Python) on timeout."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **kwargs) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"{command[:3]}... did not finish within {timeout_s:.0f}s\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def run_to_exit(command: list[str], *, timeout_s: float, log: Path, **kwargs) -> tuple[int, str, float]:
    """Run ``command`` in a new process group, its output to ``log``; once it exits, SIGKILL whatever
    of its group is left (a killed driver's JVM), and on timeout the whole group, failing the test.
    Returns (exit code, output, seconds)."""
    import time

    started = time.monotonic()
    with log.open("w") as out, subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True, **kwargs) as proc:
        exited = None  # waited on without reaping: the leader's PID (the group id) cannot be reused meanwhile
        while exited is None and time.monotonic() - started < timeout_s:
            exited = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            if exited is None:
                time.sleep(0.5)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group's leftovers (a killed driver's JVM), or all on timeout
        except ProcessLookupError:
            pass
        code = proc.wait()
    seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    if exited is None:
        pytest.fail(f"{command[:3]}... did not finish within {timeout_s:.0f}s\n{text[-4000:]}")
    return code, text, seconds


@contextmanager
def two_worker_cluster(work: Path):
    """A standalone cluster of 2 one-core workers on free ports, its files under ``work``; yields
    ``start_cluster``'s status and stops the cluster (its own PIDs only) on exit."""
    from recaug_spark.cluster import free_port, start_cluster, stop_cluster
    from recaug_spark.config import ClusterConfig

    ports = set()
    while len(ports) < 2:
        ports.add(free_port())
    master_port, webui_port = sorted(ports)
    cfg = ClusterConfig(work_dir=str(work), master_port=master_port, master_webui_port=webui_port,
                        workers=2, cores_per_worker=1, memory_per_worker="1536m", start_timeout_s=120)
    try:
        yield start_cluster(cfg)
    finally:
        stop_cluster(cfg)
