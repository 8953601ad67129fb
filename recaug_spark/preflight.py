"""Checks of the paths a job will read and write, before any JVM starts.

A nonexistent ``--input`` used to fail after a minute with a Java traceback, and a warehouse under a
file after generate had already run, with ``Py4JJavaError``. These checks take milliseconds and
name the path, the config key and the problem in one line (the CLI prints ``error: ...`` and exits
with code 2):

* inputs (``ingest.events``, ``ingest.items``) of the stages that read them exist; a glob matches
  at least one file;
* every folder the stages write (``run.warehouse``; ``run.models`` for ``fit``; ``generate.output``;
  ``train.report_dir``) is a folder or can be created as one, and a file can be created in it (a
  probe file, removed at once: permission bits lie for root and on some mounts).

Remote locations (``s3a://``, ``hdfs://``...) are left to Spark: checking them needs its credentials.
Pure standard library; no Spark, nothing created except the probe file.

Example::

    check_paths(cfg, ["ingest", "clean"])   # raises PreflightError("ingest.events /data/x.csv: ...")
"""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path
from typing import Sequence

from recaug_spark.config import Config, ConfigError
from recaug_spark.paths import is_remote, local_path

_GLOB_CHARS = "*?[{"


class PreflightError(ConfigError):
    """A path the job needs is missing or unusable; the message names it and the config key."""


def input_problem(location: str) -> str | None:
    """Why the input ``location`` (file, folder or glob) cannot be read; None when it can (or is remote)."""
    if is_remote(location):
        return None
    path = os.path.expanduser(local_path(location))
    if any(char in path for char in _GLOB_CHARS):
        return _glob_problem(path)
    if not os.path.exists(path):
        parent = _nearest_existing(Path(path).parent)
        return f"does not exist (nearest existing folder: {parent})"
    if not os.access(path, os.R_OK):
        return "is not readable (permission denied)"
    return None


def _glob_problem(pattern: str) -> str | None:
    first = min(pattern.index(c) for c in _GLOB_CHARS if c in pattern)
    fixed = os.path.dirname(pattern[:first]) or "."
    if not os.path.isdir(fixed):
        return f"the folder {fixed} before the glob does not exist"
    if "{" in pattern:  # Hadoop's {a,b} alternation: Python's glob cannot expand it, Spark will
        return None
    if not glob.glob(pattern, recursive=True):
        return "matches no file"
    return None


def writable_dir_problem(location: str) -> str | None:
    """Why no file can be written into the folder ``location`` (created if missing); None when one can."""
    if is_remote(location):
        return None
    path = Path(os.path.expanduser(local_path(location))).absolute()
    if path.exists() and not path.is_dir():
        return "is a file, not a folder"
    existing = _nearest_existing(path)
    if not existing.is_dir():
        return f"cannot be created: {existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".recaug-probe-"):
            pass
    except OSError as error:
        where = "" if existing == path else f"its nearest existing parent {existing} "
        return f"is not writable: {where}refused a file ({error.strerror or error})"
    return None


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (as a file or a folder)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def planned_checks(cfg: Config, stages: Sequence[str]) -> list[tuple[str, str, str]]:
    """(config key, location, "input" | "output") for every path the ``stages`` touch, in check order."""
    from recaug_spark.runs import models_dir

    checks = []
    if "ingest" in stages and cfg.ingest.format != "generated":
        checks += [(f"ingest.{key}", value, "input") for key in ("events", "items")
                   if (value := getattr(cfg.ingest, key))]
    checks.append(("run.warehouse", cfg.run.warehouse, "output"))
    if "fit" in stages:
        checks.append(("run.models", models_dir(cfg.run.models, cfg.run.warehouse), "output"))
    if "generate" in stages and cfg.generate.output:
        checks.append(("generate.output", cfg.generate.output, "output"))
    if "train" in stages and cfg.train.report_dir:
        checks.append(("train.report_dir", cfg.train.report_dir, "output"))
    return checks


def check_paths(cfg: Config, stages: Sequence[str]) -> None:
    """Raise :class:`PreflightError` for the first unusable path of :func:`planned_checks`."""
    for key, location, kind in planned_checks(cfg, stages):
        problem = input_problem(location) if kind == "input" else writable_dir_problem(location)
        if problem:
            raise PreflightError(f"{key} {location}: {problem}")
