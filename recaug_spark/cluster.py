"""A local Spark standalone cluster: one master and N workers on 127.0.0.1.

The pip package of pyspark has no ``sbin/start-*.sh`` scripts, so the daemons are launched with
``$SPARK_HOME/bin/spark-class`` (``SPARK_HOME`` = the installed ``pyspark`` package folder, so the
daemons always match the pyspark the driver runs), each in its own session so that stopping one
also stops the executors and Python workers it started. Everything lives in ``cluster.work_dir``,
by default an absolute folder of the user's (:func:`default_work_dir`:
``$RECAUG_CLUSTER_DIR``, else ``$XDG_STATE_HOME/recaug/cluster``, else
``~/.local/state/recaug/cluster``), so that ``recaug cluster status`` and ``stop`` find the
cluster from any directory::

    <work_dir>/master.pid, worker-1.pid, ...   one PID per daemon
    <work_dir>/worker-1.port, ...              the port each worker was told to bind (to find it in the master's JSON)
    <work_dir>/logs/master.log, worker-1.log   the daemons' stdout and stderr
    <work_dir>/work/app-*/<executor>/stderr    executors' logs (the workers' --work-dir)

Example::

    from recaug_spark.cluster import start_cluster, stop_cluster, format_status
    from recaug_spark.config import ClusterConfig

    cfg = ClusterConfig(work_dir="/tmp/recaug-cluster", workers=1, memory_per_worker="2g")
    status = start_cluster(cfg)        # returns once the master sees every worker ALIVE
    print(format_status(status))       # spark://127.0.0.1:7077, ...
    # spark-submit --master spark://127.0.0.1:7077 --py-files recaug_spark.zip jobs/pipeline.py ...
    stop_cluster(cfg)                  # idempotent
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from recaug_spark.config import ClusterConfig

HOST = "127.0.0.1"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"

# Starts ``"$@"`` detached, its output appended to the log, and prints its PID. The shell exits at
# once, so the daemon is not a child of the Python process that started it (no zombie to reap, no
# tie to that process's lifetime), like Spark's own sbin/spark-daemon.sh.
_DETACH = 'log=$1; shift; "$@" >"$log" 2>&1 </dev/null & echo $!'


class ClusterError(RuntimeError):
    """The local cluster could not be started or stopped; the message says why and where the logs are."""


@dataclass(frozen=True)
class DaemonStatus:
    """One daemon from its PID file: ``pid`` is None when there is no PID file."""

    name: str  # "master", "worker-1", ...
    pid: int | None
    alive: bool
    state: str | None = None  # the master's view (ALIVE, DEAD, ...) when it answers; None when unknown
    address: str | None = None  # host:port the daemon serves on, when known


@dataclass(frozen=True)
class ClusterStatus:
    """What ``cluster_status`` sees: PID files and processes, plus the master's own view when reachable.

    ``alive_workers``, ``master_state``, ``active_apps`` and ``completed_apps`` come from the master's
    JSON (``<webui_url>/json/``) and are None when it does not answer.
    """

    master_url: str
    webui_url: str
    work_dir: str
    master: DaemonStatus
    workers: tuple[DaemonStatus, ...]
    reachable: bool
    alive_workers: int | None = None
    master_state: str | None = None
    active_apps: int | None = None
    completed_apps: int | None = None

    @property
    def master_pid(self) -> int | None:
        return self.master.pid

    @property
    def master_alive(self) -> bool:
        return self.master.alive

    @property
    def worker_pids(self) -> tuple[int | None, ...]:
        return tuple(w.pid for w in self.workers)

    @property
    def workers_alive(self) -> tuple[bool, ...]:
        return tuple(w.alive for w in self.workers)

    @property
    def running(self) -> bool:
        """The master and every worker with a PID file are alive and the master answers."""
        return self.master.alive and self.reachable and all(w.alive for w in self.workers)


@dataclass(frozen=True)
class StoppedDaemon:
    """What ``stop_cluster`` did to one daemon."""

    name: str
    pid: int
    outcome: Literal["terminated", "killed", "not running"]


# --------------------------------------------------------------------------------------- helpers


def spark_home() -> Path:
    """The installed pyspark package folder (it holds ``bin/spark-class`` and ``jars/``)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def master_url(cfg: ClusterConfig) -> str:
    """``spark://127.0.0.1:<master_port>``: what ``--master`` / ``spark.master`` should be."""
    return f"spark://{HOST}:{cfg.master_port}"


def webui_url(cfg: ClusterConfig) -> str:
    return f"http://{HOST}:{cfg.master_webui_port}"


def default_work_dir() -> Path:
    """``$RECAUG_CLUSTER_DIR``, else ``$XDG_STATE_HOME/recaug/cluster``, else ``~/.local/state/recaug/cluster``
    (the XDG base-directory spec's place for state that outlives one command)."""
    override = os.environ.get("RECAUG_CLUSTER_DIR")
    if override:
        return Path(override).expanduser().resolve()
    state_home = os.environ.get("XDG_STATE_HOME")
    base = Path(state_home).expanduser() if state_home else Path.home() / ".local" / "state"
    return (base / "recaug" / "cluster").resolve()


def work_dir(cfg: ClusterConfig) -> Path:
    """``cluster.work_dir`` made absolute (a relative one is relative to the current folder), or the default."""
    return Path(cfg.work_dir).expanduser().resolve() if cfg.work_dir else default_work_dir()


def log_dir(cfg: ClusterConfig) -> Path:
    return work_dir(cfg) / "logs"


def master_json(cfg: ClusterConfig, timeout_s: float = 2.0) -> dict | None:
    """The master's state as its web UI serves it at ``/json/`` (workers, activeapps, completedapps),
    or None when it does not answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy
    try:
        with opener.open(webui_url(cfg) + "/json/", timeout=timeout_s) as response:
            return json.loads(response.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _pid_file(cfg: ClusterConfig, name: str) -> Path:
    return work_dir(cfg) / f"{name}.pid"


def _port_file(cfg: ClusterConfig, name: str) -> Path:
    return work_dir(cfg) / f"{name}.port"


def _worker_names(cfg: ClusterConfig) -> list[str]:
    """Workers with a PID file, in order (a cluster may have been started with another count)."""
    names = [p.stem for p in work_dir(cfg).glob("worker-*.pid")]
    return sorted(names, key=lambda n: int(n.rsplit("-", 1)[1]) if n.rsplit("-", 1)[1].isdigit() else 10**9)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _command_line(pid: int) -> str | None:
    """The process's command line ("" when it is gone), or None when it cannot be read."""
    if Path("/proc/self/cmdline").exists():
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except FileNotFoundError:
            return ""
        except OSError:
            pass
    try:
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
        return out.stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_daemon(pid: int | None, name: str) -> bool:
    """``pid`` is alive and is our Spark daemon of that kind (not a process that reused the PID)."""
    if pid is None or not _alive(pid):
        return False
    command = _command_line(pid)
    if command is None:  # cannot tell: trust the PID file
        return True
    return (MASTER_CLASS if name == "master" else WORKER_CLASS) in command


def _daemon(cfg: ClusterConfig, name: str) -> DaemonStatus:
    pid = _read_pid(_pid_file(cfg, name))
    return DaemonStatus(name, pid, _is_daemon(pid, name))


def _port_in_use(port: int) -> bool:
    """Something listens on the port (connections in TIME_WAIT do not count: the JVM reuses those)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as error:
            return error.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"    ({path} does not exist)"
    return "\n".join("    " + line for line in text[-lines:])


def _daemon_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP=HOST, PYSPARK_PYTHON=sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return env


def _launch(cfg: ClusterConfig, name: str, args: list[str], env: dict[str, str]) -> int:
    spark_class = spark_home() / "bin" / "spark-class"
    log = log_dir(cfg) / f"{name}.log"
    # spark-class ends with `exec java ...`, so the PID printed is the daemon's JVM. The new session
    # gives it a process group of its own, which its executors and Python workers join.
    done = subprocess.run(
        ["/bin/sh", "-c", _DETACH, "sh", str(log), str(spark_class), *args], env=env, cwd=str(work_dir(cfg)),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, start_new_session=True,
    )
    pid_text = done.stdout.strip()
    if done.returncode != 0 or not pid_text.isdigit():
        raise ClusterError(f"could not launch the {name} with {spark_class}: {done.stderr.strip() or done.stdout}")
    _pid_file(cfg, name).write_text(f"{pid_text}\n")
    return int(pid_text)


def _signal(pid: int, sig: int) -> None:
    """Signal the daemon and the process group it was started in (its executors, Python workers)."""
    try:
        group = os.getpgid(pid)
        if group != os.getpgrp():
            os.killpg(group, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    remaining = [p for p in pids if _alive(p)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.1)
        remaining = [p for p in remaining if _alive(p)]
    return remaining


def _stop_group(cfg: ClusterConfig, names: list[str], timeout_s: float) -> list[StoppedDaemon]:
    """SIGTERM every live daemon of ``names``, SIGKILL those still alive after the timeout."""
    targets: dict[str, int] = {}
    results: list[StoppedDaemon] = []
    for name in names:
        pid = _read_pid(_pid_file(cfg, name))
        if _is_daemon(pid, name):
            targets[name] = pid
            _signal(pid, signal.SIGTERM)
        elif pid is not None:
            results.append(StoppedDaemon(name, pid, "not running"))
    stubborn = set(_wait_gone(list(targets.values()), timeout_s))
    for pid in stubborn:
        _signal(pid, signal.SIGKILL)
    left = _wait_gone(list(stubborn), 10.0)
    for name, pid in targets.items():
        if pid in left:
            raise ClusterError(f"{name} (pid {pid}) survived SIGKILL; its PID file {_pid_file(cfg, name)} is kept")
        results.append(StoppedDaemon(name, pid, "killed" if pid in stubborn else "terminated"))
    for name in names:
        _pid_file(cfg, name).unlink(missing_ok=True)
        _port_file(cfg, name).unlink(missing_ok=True)
    return results


# ------------------------------------------------------------------------------------ public API


def cluster_status(cfg: ClusterConfig) -> ClusterStatus:
    """The cluster's state from its PID files, the processes, and the master's JSON when it answers.

    Example::

        status = cluster_status(cfg)
        status.running, status.master_pid, status.workers_alive, status.alive_workers
    """
    master = _daemon(cfg, "master")
    workers = tuple(_daemon(cfg, name) for name in _worker_names(cfg))
    state = master_json(cfg) if master.alive else None
    if state is None:
        return ClusterStatus(master_url(cfg), webui_url(cfg), str(work_dir(cfg)), master, workers, reachable=False)
    master = replace(master, state=state.get("status"), address=f"{HOST}:{cfg.master_port}")
    workers = tuple(_with_master_view(cfg, w, state.get("workers", [])) for w in workers)
    alive = sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")
    return ClusterStatus(
        master_url(cfg), webui_url(cfg), str(work_dir(cfg)), master, workers, reachable=True,
        alive_workers=alive, master_state=state.get("status"),
        active_apps=len(state.get("activeapps", [])), completed_apps=len(state.get("completedapps", [])),
    )


def _with_master_view(cfg: ClusterConfig, worker: DaemonStatus, registered: list[dict]) -> DaemonStatus:
    """``worker`` with the state the master reports for it, found by the port it was started on (an ALIVE
    registration wins over older DEAD ones of the same port)."""
    port = _read_pid(_port_file(cfg, worker.name))  # same format: one integer per file
    if port is None:
        return worker
    entries = [w for w in registered if w.get("port") == port and w.get("host") in (HOST, "localhost")]
    entries.sort(key=lambda w: w.get("state") == "ALIVE")
    return replace(worker, state=entries[-1].get("state") if entries else "NOT REGISTERED", address=f"{HOST}:{port}")


def start_cluster(cfg: ClusterConfig) -> ClusterStatus:
    """Start a master and ``cfg.workers`` workers on 127.0.0.1; return once every worker is ALIVE.

    Refuses when the PID files name live daemons (the cluster is already running); stale PID files
    are removed. Fails early, naming the key, when ``cluster.master_port`` or
    ``cluster.master_webui_port`` is taken. When the master or a worker dies or the workers are not
    all ALIVE within ``cfg.start_timeout_s``, stops whatever was started and raises ``ClusterError``
    with the end of the log that explains it.

    Example::

        status = start_cluster(ClusterConfig(work_dir="/tmp/c", master_port=7077, master_webui_port=8080))
        status.master_url   # 'spark://127.0.0.1:7077'
    """
    root = work_dir(cfg)
    log_dir(cfg).mkdir(parents=True, exist_ok=True)
    (root / "work").mkdir(exist_ok=True)

    current = cluster_status(cfg)
    live = [d for d in (current.master, *current.workers) if d.alive]
    if live:
        pids = ", ".join(f"{d.name} pid {d.pid}" for d in live)
        raise ClusterError(
            f"the cluster in {root} is already running ({pids}; {current.master_url}); "
            "stop it first with `recaug cluster stop`"
        )
    for daemon in (current.master, *current.workers):  # stale PID files of dead daemons
        _pid_file(cfg, daemon.name).unlink(missing_ok=True)
        _port_file(cfg, daemon.name).unlink(missing_ok=True)
    for key, port in (("cluster.master_port", cfg.master_port), ("cluster.master_webui_port", cfg.master_webui_port)):
        if _port_in_use(port):
            raise ClusterError(f"{key}: port {port} on {HOST} is already in use; choose another port")

    env = _daemon_env()
    # Bind exactly the configured ports or fail: by default Spark silently moves to the next port.
    master_env = dict(env, SPARK_MASTER_OPTS=(env.get("SPARK_MASTER_OPTS", "") + " -Dspark.port.maxRetries=0").strip())
    deadline = time.monotonic() + cfg.start_timeout_s
    try:
        _launch(cfg, "master", [MASTER_CLASS, "--host", HOST, "--port", str(cfg.master_port),
                                "--webui-port", str(cfg.master_webui_port)], master_env)
        _wait_until(cfg, deadline, ["master"], lambda state: state.get("status") == "ALIVE", "the master to answer")
        names = [f"worker-{i}" for i in range(1, cfg.workers + 1)]
        for name in names:
            port = free_port()
            _port_file(cfg, name).write_text(f"{port}\n")
            _launch(cfg, name, [WORKER_CLASS, master_url(cfg), "--host", HOST, "--port", str(port),
                                "--cores", str(cfg.cores_per_worker), "--memory", cfg.memory_per_worker,
                                "--work-dir", str(root / "work"), "--webui-port", "0"], env)
        _wait_until(
            cfg, deadline, ["master", *names],
            lambda state: sum(w.get("state") == "ALIVE" for w in state.get("workers", [])) >= cfg.workers,
            f"{cfg.workers} worker(s) to register as ALIVE",
        )
    except BaseException:
        try:
            stop_cluster(cfg)
        except ClusterError:
            pass
        raise
    return cluster_status(cfg)


def _wait_until(cfg: ClusterConfig, deadline: float, names: list[str], ready, what: str) -> None:
    while True:
        for name in names:
            pid = _read_pid(_pid_file(cfg, name))
            if pid is None or not _alive(pid):
                log = log_dir(cfg) / f"{name}.log"
                raise ClusterError(f"{name} exited while waiting for {what}; see {log}:\n{_log_tail(log)}")
        state = master_json(cfg, timeout_s=1.0)
        if state is not None and ready(state):
            return
        if time.monotonic() > deadline:
            logs = ", ".join(str(log_dir(cfg) / f"{n}.log") for n in names)
            last = log_dir(cfg) / f"{names[-1]}.log"
            raise ClusterError(
                f"timed out after {cfg.start_timeout_s:g}s (cluster.start_timeout_s) waiting for {what} "
                f"at {webui_url(cfg)}/json/; see {logs}. End of {last}:\n{_log_tail(last)}"
            )
        time.sleep(0.25)


def stop_cluster(cfg: ClusterConfig) -> list[StoppedDaemon]:
    """Stop the workers (SIGTERM, then SIGKILL after ``cfg.stop_timeout_s``), then the master.

    Each daemon's process group is signalled, so executors and Python workers go with it. PID files
    are removed. Idempotent: with nothing running it removes stale PID files and returns what it
    found (``outcome="not running"``), or an empty list when there were no PID files.
    """
    if not work_dir(cfg).is_dir():
        return []
    results = _stop_group(cfg, _worker_names(cfg), cfg.stop_timeout_s)
    results += _stop_group(cfg, ["master"], cfg.stop_timeout_s)
    return results


def format_status(status: ClusterStatus) -> str:
    """Human-readable lines for ``recaug cluster status`` and ``start``."""

    def state(daemon: DaemonStatus) -> str:
        if daemon.pid is None:
            return "not started"
        return f"pid {daemon.pid} {'running' if daemon.alive else 'NOT RUNNING (stale PID file)'}"

    def view(worker: DaemonStatus) -> str:
        if worker.state is None:
            return ""
        return f"  {worker.address}  master says {worker.state}"

    lines = [f"master    {status.master_url}  {state(status.master)}  web UI {status.webui_url}"]
    lines += [f"{w.name:<9} {state(w)}{view(w)}" for w in status.workers] or ["workers   none started"]
    if status.reachable:
        lines.append(
            f"master reports: {status.master_state}, {status.alive_workers} worker(s) ALIVE, "
            f"{status.active_apps} running app(s), {status.completed_apps} completed"
        )
    elif status.master.alive:
        lines.append(f"master process is alive but {status.webui_url}/json/ does not answer")
    lines.append(f"work dir  {status.work_dir} (logs in {Path(status.work_dir) / 'logs'})")
    return "\n".join(lines)


def format_stopped(stopped: list[StoppedDaemon]) -> str:
    """Human-readable lines for ``recaug cluster stop``."""
    if not stopped:
        return "no cluster was running"
    return "\n".join(f"{s.name:<9} pid {s.pid} {s.outcome}" for s in stopped)
