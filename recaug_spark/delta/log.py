"""What a Delta table's log says, read with the ``deltalake`` library alone: no Spark, no data read.

Versions, committed application transactions, row counts per partition and the data files of one
table version (the files a reader pinned to that version must read, with their partition values).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from urllib.parse import unquote

import pyarrow as pa
from deltalake import DeltaTable

from recaug_spark.delta.base import TableNotFoundError, Txn
from recaug_spark.paths import is_remote, is_uri, local_path


def table_exists(uri: str) -> bool:
    return DeltaTable.is_deltatable(uri)


def table_version(uri: str) -> int:
    if not table_exists(uri):
        raise TableNotFoundError(f"no Delta table at {uri}")
    return DeltaTable(uri).version()


def committed_txn_version(uri: str, app_id: str) -> int | None:
    """The latest version of application ``app_id`` that the table records; None when none (or no table)."""
    if not table_exists(uri):
        return None
    return DeltaTable(uri).transaction_version(app_id)


def committed(uri: str, txn: Txn, snapshot: DeltaTable | None = None) -> bool:
    """True when the table at ``uri`` (or the loaded ``snapshot`` of it) records the application
    transaction ``txn = (app_id, version)`` at that version or a later one: a write carrying ``txn``
    was already made (a retry of the run, or a concurrent run with the same id)."""
    if snapshot is not None:
        done = snapshot.transaction_version(txn[0])
    else:
        done = committed_txn_version(uri, txn[0])
    return done is not None and done >= txn[1]


def txn_commit_version(uri: str, txn: Txn) -> int | None:
    """The table version whose commit carried the application transaction ``txn``; None when the
    table does not record it. A binary search over versions (a txn, once recorded, stays recorded),
    so the answer names the version that run wrote even when other runs committed after it."""
    if not committed(uri, txn):
        return None
    table = DeltaTable(uri)
    low, high = 0, table.version()  # invariant: recorded at `high`
    while low < high:
        middle = (low + high) // 2
        try:
            table.load_as_version(middle)
            recorded = committed(uri, txn, snapshot=table)
        except Exception:  # noqa: BLE001 - that version's log was cleaned up: it is before the commit we look for
            recorded = False
        if recorded:
            high = middle
        else:
            low = middle + 1
    return high


def rows_by_partition(uri: str, column: str, version: int | None = None) -> dict[str | None, int]:
    """Row counts per value of a partition column, from the Delta log alone (no data is read)."""
    actions = pa.table(DeltaTable(uri, version=version).get_add_actions(flatten=True))
    counts: dict[str | None, int] = {}
    for value, rows in zip(actions.column(f"partition.{column}").to_pylist(), actions.column("num_records").to_pylist()):
        counts[value] = counts.get(value, 0) + int(rows)
    return counts


def commit_metadata(uri: str, version: int | None = None, prefix: str = "recaug.") -> dict[str, str]:
    """The ``prefix``-keyed metadata of the newest commit at or before ``version`` (default: the
    latest) that carries any: delta-rs keeps it as top-level ``commitInfo`` fields, Spark's native
    writer as a JSON ``userMetadata`` string. Empty when no commit carries any (or no table)."""
    if not table_exists(uri):
        return {}
    for commit in sorted(DeltaTable(uri).history(), key=lambda c: -int(c.get("version", -1))):
        if version is not None and int(commit.get("version", -1)) > version:
            continue
        found = {k: str(v) for k, v in commit.items() if k.startswith(prefix) and k != f"{prefix}txn"}
        try:
            user = json.loads(commit.get("userMetadata") or "{}")
        except ValueError:
            user = {}
        if isinstance(user, dict):
            found |= {k: str(v) for k, v in user.items() if k.startswith(prefix)}
        if found:
            return found
    return {}


@dataclass(frozen=True)
class TableFile:
    """One data file of a table version, as the log records it."""

    path: str  # absolute local path, or a URI pyarrow can open
    size: int  # bytes
    rows: int | None  # the log's numRecords statistic; None when the log has no statistics for it
    partition: tuple[tuple[str, str | None], ...]  # (column, value) in the table's partition column order


@dataclass(frozen=True)
class FileListing:
    """The data files of one table version, ordered by path."""

    uri: str
    version: int
    partition_columns: tuple[str, ...]
    files: tuple[TableFile, ...]


def data_files(uri: str, version: int | None = None) -> FileListing:
    """The data files of table ``uri`` at ``version`` (default: the latest) with their partition
    values, sizes and row counts, from the Delta log alone.

    Example::

        listing = data_files("wh/augmented_sequences", version=3)
        real = [f.path for f in listing.files if dict(f.partition)["operator_chain"] == "real"]
    """
    table = DeltaTable(uri, version=version)
    actions = pa.table(table.get_add_actions(flatten=True))
    columns = tuple(table.metadata().partition_columns)
    root = table_root(uri)
    values = {c: actions.column(f"partition.{c}").to_pylist() for c in columns}
    paths = actions.column("path").to_pylist()
    sizes = actions.column("size_bytes").to_pylist()
    records = (actions.column("num_records").to_pylist() if "num_records" in actions.column_names
               else [None] * len(paths))
    files = []
    for i, path in enumerate(paths):
        local = unquote(path)  # the log stores paths percent-encoded; the filesystem has them decoded once
        full = local if (is_uri(local) or local.startswith("/")) else f"{root}/{local}"
        rows = None if records[i] is None else int(records[i])
        files.append(TableFile(full, int(sizes[i]), rows, tuple((c, values[c][i]) for c in columns)))
    return FileListing(uri, table.version(), columns, tuple(sorted(files, key=lambda f: f.path)))


def table_root(uri: str) -> str:
    """The folder a table's relative file paths start from: a remote URI as it is, a local table's
    absolute path (a ``file://`` URI as its path)."""
    if is_remote(uri):
        return uri.rstrip("/")
    return os.path.abspath(local_path(uri)).rstrip("/")
