"""Running a child process tree from a test, killed as a whole on timeout."""

from __future__ import annotations

import os
import signal
import subprocess

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
