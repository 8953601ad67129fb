"""One delta-rs commit that is safe under concurrent writers (no Spark: add actions in, a version out).

A write reads the table once (its *snapshot*) before any file is written, checks its application
transaction against that snapshot, and commits on top of that same snapshot. delta-rs's optimistic
concurrency then checks every commit made since the snapshot against Delta's conflict rules: a
commit carrying the same application id, or one that removed files this write replaces, fails it
(``CommitFailedError``); a blind append is retried by delta-rs itself. A failed commit becomes

* :class:`~recaug_spark.delta.base.CommittedByConcurrentRun` when the table now records this
  write's transaction: a concurrent run with the same run id won, and this one must write nothing;
* :class:`~recaug_spark.delta.base.ConcurrentWriteError` otherwise: a different writer changed what
  this write read (no silent lost update); the message says which versions and what to do.

Two writers creating the same table at once: the loser of an ``append`` retries as an append to the
table just created (what Delta allows a blind append); any other loser gets the conflict error.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from deltalake import CommitProperties, DeltaTable, Schema, Transaction

from recaug_spark.delta.base import CommittedByConcurrentRun, ConcurrentWriteError, DeltaError, Txn
from recaug_spark.delta.log import committed, table_version, txn_commit_version


def commit_properties(txn: Txn | None, metadata: Mapping[str, str] | None = None) -> CommitProperties | None:
    """The commit's application transaction (also in the commit info, for people reading the log)
    and ``metadata`` as top-level commit info fields (read back by ``log.commit_metadata``)."""
    if txn is None and not metadata:
        return None
    custom = dict(metadata or {})
    if txn is not None:
        custom["recaug.txn"] = f"{txn[0]}@{txn[1]}"
    return CommitProperties(
        app_transactions=[Transaction(app_id=txn[0], version=txn[1])] if txn is not None else None,
        custom_metadata=custom,
    )


def commit_actions(uri: str, snapshot: DeltaTable | None, actions: list, *, mode: str, schema: Schema,
                   partition_by: Sequence[str] = (), partition_filters=None, txn: Txn | None = None,
                   name: str | None = None, metadata: Mapping[str, str] | None = None) -> int:
    """Commit ``actions`` (add/remove actions) as one table version on top of ``snapshot`` — the
    version this write read, ``None`` when the table did not exist (the commit creates it).
    Returns the version committed. Raises the errors of this module's docstring."""
    from deltalake.exceptions import CommitFailedError
    from deltalake.exceptions import DeltaError as DeltaRsError
    from deltalake.transaction import create_table_with_add_actions

    name = name or uri
    partitions = list(partition_by) or None
    try:
        if snapshot is None:
            create_table_with_add_actions(uri, schema, actions, mode="error", partition_by=partitions,
                                          commit_properties=commit_properties(txn, metadata))
        else:
            snapshot.create_write_transaction(actions, mode, schema, partition_by=partitions,
                                              partition_filters=partition_filters,
                                              commit_properties=commit_properties(txn, metadata))
    except CommitFailedError as error:
        raise conflict_error(name, uri, snapshot, txn, error) from error
    except DeltaRsError as error:
        if snapshot is not None or "already exists" not in str(error):
            raise
        if mode == "append" and (txn is None or not committed(uri, txn)):  # a concurrent create: append to it
            return commit_actions(uri, DeltaTable(uri), actions, mode=mode, schema=schema, partition_by=partition_by,
                                  txn=txn, name=name, metadata=metadata)
        raise conflict_error(name, uri, None, txn, error) from error
    return committed_version(uri, txn)


def committed_version(uri: str, txn: Txn | None) -> int:
    """The version a write just committed: found by its transaction when it has one (other writers
    may have committed since), else the latest."""
    found = txn_commit_version(uri, txn) if txn is not None else None
    return table_version(uri) if found is None else found


def conflict_error(name: str, uri: str, snapshot: DeltaTable | None, txn: Txn | None, error: Exception) -> DeltaError:
    """The error a lost commit race raises: same transaction → :class:`CommittedByConcurrentRun`,
    anything else → :class:`ConcurrentWriteError` naming the versions."""
    if txn is not None and committed(uri, txn):
        return CommittedByConcurrentRun(
            f"{name}: already committed by a concurrent run (transaction {txn[0]}@{txn[1]} is in table version "
            f"{txn_commit_version(uri, txn)}); this run wrote nothing"
        )
    read = "no table" if snapshot is None else f"version {snapshot.version()}"
    now = table_version(uri) if DeltaTable.is_deltatable(uri) else "none"
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConcurrentWriteError(
        f"commit to {name} lost a race: another writer committed to it after this write read {read} "
        f"(latest is now version {now}) and Delta's conflict rules forbid committing on top of it ({detail}). "
        "Nothing of this write is visible; run the stage again (with a new run id) to build on the new version."
    )
