"""Orphan cleanup: files in a table's folder that no commit references, and old removed files.

A driver killed mid-write leaves its staging folder (``_staging/<id>``, Spark's Parquet and
``.crc`` files) and, after the move, data files no commit references: invisible to Delta readers
but counted by a plain Parquet reader of the folder. :func:`sweep` deletes both, but only when
they are older than the table's last commit *and* than ``min_age_s`` (a concurrent writer's files
are younger: it moves them in, their mtime set at the move, seconds before its commit). Which files
no commit references, delta-rs computes: ``DeltaTable.vacuum(full=True, dry_run=True)`` keeping
every version in the log.

:func:`vacuum_table` (``recaug vacuum``) also lets delta-rs delete removed files past the table's
retention (``delete.deletedFileRetentionDuration``, default 7 days) except those of the versions
that stage records name (``keep_versions``), and expired log files (``cleanup_metadata``) when no
older version must stay readable. Writes sweep their table first when a staging folder shows a crash
(:func:`needs_sweep`).

Example::

    report = sweep("warehouse/augmented_sequences", min_age_s=0)
    report.orphans  # ['operator_chain=crop/part-00003-....parquet', ...]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import unquote

import pyarrow.fs as pafs
from deltalake import DeltaTable

from recaug_spark.delta.staging import STAGING_DIR

ORPHAN_MIN_AGE_S = 600  # files younger than this may belong to a writer that has not committed yet


@dataclass
class VacuumReport:
    """What one table's cleanup removed (or, with ``dry_run``, would remove): paths relative to its folder."""

    uri: str
    orphans: list[str] = field(default_factory=list)  # data files no commit references
    staging: list[str] = field(default_factory=list)  # staging folders of crashed writes
    tombstones: list[str] = field(default_factory=list)  # removed files past the retention
    log_cleaned: bool = False
    error: str | None = None

    def line(self) -> str:
        if self.error:
            return f"{self.uri}: not vacuumed: {self.error}"
        tail = "; expired log files cleaned" if self.log_cleaned else ""
        return (f"{self.uri}: {len(self.orphans)} orphan file(s), {len(self.staging)} staging folder(s), "
                f"{len(self.tombstones)} expired removed file(s){tail}")


def needs_sweep(uri: str) -> bool:
    """True when the table folder holds a staging folder: a write crashed (or is running) there."""
    fs, root = pafs.FileSystem.from_uri(uri)
    try:
        return bool(fs.get_file_info(pafs.FileSelector(f"{root}/{STAGING_DIR}", allow_not_found=True)))
    except OSError:
        return False


def sweep(uri: str, *, min_age_s: float = ORPHAN_MIN_AGE_S, now: float | None = None,
          dry_run: bool = False) -> VacuumReport:
    """Delete the crashed writes' files of table ``uri``: stale staging folders and data files no
    commit references, both older than the last commit and than ``min_age_s`` seconds."""
    fs, root = pafs.FileSystem.from_uri(uri)
    now = time.time() if now is None else now
    cutoff = now - min_age_s
    report = VacuumReport(uri)
    if DeltaTable.is_deltatable(uri):
        table = DeltaTable(uri)
        cutoff = min(cutoff, last_commit_time(table))
        report.orphans = [p for p in unreferenced_files(table) if _mtime(fs, f"{root}/{p}") < cutoff]
    report.staging = _stale_staging(fs, root, cutoff)
    if not dry_run:
        for relative in report.orphans:
            _delete(fs, f"{root}/{relative}", folder=False)
        for relative in report.staging:
            _delete(fs, f"{root}/{relative}", folder=True)
        _delete(fs, f"{root}/{STAGING_DIR}", folder=True, only_if_empty=True)
    return report


def unreferenced_files(table: DeltaTable) -> list[str]:
    """Files in the table folder that no version in the log references (delta-rs's full vacuum,
    dry run, keeping every version), relative to the folder, sorted."""
    versions = list(range(_first_loadable_version(table), table.version() + 1))
    found = table.vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False, full=True,
                         keep_versions=versions)
    prefix = table.table_uri.rstrip("/") + "/"
    return sorted(unquote(p[len(prefix):] if p.startswith(prefix) else p) for p in found)


def last_commit_time(table: DeltaTable) -> float:
    """The newest commit's timestamp, in seconds since the epoch."""
    return int(table.history(1)[0]["timestamp"]) / 1000


def vacuum_table(uri: str, *, keep_versions: Iterable[int] = (), retention_hours: int | None = None,
                 min_age_s: float = ORPHAN_MIN_AGE_S, dry_run: bool = False) -> VacuumReport:
    """:func:`sweep`, then delta-rs ``vacuum`` of removed files past the retention (the files of
    ``keep_versions`` stay), then ``cleanup_metadata`` when only the latest version must stay readable."""
    report = sweep(uri, min_age_s=min_age_s, dry_run=dry_run)
    if not DeltaTable.is_deltatable(uri):
        return report
    table = DeltaTable(uri)
    keep = sorted({v for v in keep_versions if 0 <= v <= table.version()})
    report.tombstones = sorted(table.vacuum(retention_hours=retention_hours, dry_run=True, keep_versions=keep or None))
    if report.tombstones and not dry_run:
        table.vacuum(retention_hours=retention_hours, dry_run=False, keep_versions=keep or None)
    if not dry_run and all(v == table.version() for v in keep):
        DeltaTable(uri).cleanup_metadata()
        report.log_cleaned = True
    return report


def warehouse_tables(root: str) -> list[str]:
    """The URIs of the Delta tables directly under a warehouse folder, sorted."""
    fs, base = pafs.FileSystem.from_uri(root)
    prefix = root.rstrip("/")
    names = sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
                   if info.type == pafs.FileType.Directory)
    return [f"{prefix}/{name}" for name in names if DeltaTable.is_deltatable(f"{prefix}/{name}")]


def _stale_staging(fs: pafs.FileSystem, root: str, cutoff: float) -> list[str]:
    """Staging folders whose newest file is older than ``cutoff`` (relative paths, sorted)."""
    out = []
    for folder in fs.get_file_info(pafs.FileSelector(f"{root}/{STAGING_DIR}", allow_not_found=True)):
        if folder.type != pafs.FileType.Directory:
            continue
        inside = fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
        newest = max([_seconds(i.mtime) for i in inside] + [_seconds(folder.mtime)])
        if newest < cutoff:
            out.append(f"{STAGING_DIR}/{folder.base_name}")
    return sorted(out)


def _first_loadable_version(table: DeltaTable) -> int:
    """The oldest version whose log is still present (``cleanup_metadata`` drops expired ones)."""
    history = table.history()
    return min((int(c["version"]) for c in history if "version" in c), default=0)


def _mtime(fs: pafs.FileSystem, path: str) -> float:
    info = fs.get_file_info(path)
    return _seconds(info.mtime) if info.type != pafs.FileType.NotFound else float("inf")


def _seconds(mtime) -> float:
    return mtime.timestamp() if mtime is not None else 0.0


def _delete(fs: pafs.FileSystem, path: str, *, folder: bool, only_if_empty: bool = False) -> None:
    try:
        if not folder:
            fs.delete_file(path)
        elif only_if_empty:
            if not fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
                fs.delete_dir(path)
        else:
            fs.delete_dir(path)
    except (FileNotFoundError, OSError):
        pass
