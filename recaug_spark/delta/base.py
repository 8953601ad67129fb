"""What every part of the Delta package shares: the errors, the write result and the option types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

WriteMode = Literal["error", "append", "overwrite"]
Backend = Literal["auto", "native", "deltalake"]
Txn = tuple[str, int]  # (application id, version): a Delta application transaction


class DeltaError(RuntimeError):
    """A table operation that cannot proceed; the message says which table and why."""


class TableExistsError(DeltaError):
    pass


class TableNotFoundError(DeltaError):
    pass


class ConcurrentWriteError(DeltaError):
    """Another writer committed to the table, since this write read it, something Delta's conflict
    rules forbid committing on top of (an overwrite of the same files, a concurrent create). Nothing
    of this write became visible; rerunning the stage builds on the new version."""


class CommittedByConcurrentRun(DeltaError):
    """A concurrent run with the same application transaction (same run id and stage) committed
    first: this write added nothing, and the stage must write nothing more. Not a failure."""


@dataclass(frozen=True)
class WriteResult:
    table: str
    uri: str
    version: int  # the table version after the write (the existing one when skipped)
    files: int
    rows: int
    skipped: bool  # True when the txn had already been committed
