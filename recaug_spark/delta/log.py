"""What a Delta table's log says, read with the ``deltalake`` library alone: no Spark, no data read.

Versions, committed application transactions, row counts per partition and the data files of one
table version (the files a reader pinned to that version must read, with their partition values).
"""

from __future__ import annotations

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


def committed(uri: str, txn: Txn) -> bool:
    """True when the table at ``uri`` records the application transaction ``txn = (app_id, version)``
    at that version or a later one: a write carrying ``txn`` was already made (a retry of the run)."""
    done = committed_txn_version(uri, txn[0])
    return done is not None and done >= txn[1]


def rows_by_partition(uri: str, column: str, version: int | None = None) -> dict[str | None, int]:
    """Row counts per value of a partition column, from the Delta log alone (no data is read)."""
    actions = pa.table(DeltaTable(uri, version=version).get_add_actions(flatten=True))
    counts: dict[str | None, int] = {}
    for value, rows in zip(actions.column(f"partition.{column}").to_pylist(), actions.column("num_records").to_pylist()):
        counts[value] = counts.get(value, 0) + int(rows)
    return counts


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
