"""Staged writes for the deltalake backend: Spark writes plain Parquet into a staging folder (its
output committer makes task retries leave no orphans), the files move into their partition
folders, and each is described as a Delta add action with statistics from its footer."""

from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import contextmanager
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql import DataFrame

from recaug_spark.delta.stats import file_stats
from recaug_spark.paths import file_uri, is_uri

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # the folder name Spark gives a null partition value


STAGING_DIR = "_staging"  # under the table root; delta-rs ignores folders starting with "_"


@contextmanager
def staged(df: DataFrame, uri: str, partition_by, arrow_schema: pa.Schema):
    """Write ``df`` with Spark into a staging folder, move the files into place, yield add actions.

    The body of the ``with`` must end with the commit. The staging folder is removed afterwards
    whatever happens; when the body raises, the files already moved in are deleted again unless
    the table's latest version references them (a commit that succeeded before a later error).
    Only a killed driver leaves files behind: :mod:`recaug_spark.delta.vacuum` sweeps them.
    """
    fs, root = pafs.FileSystem.from_uri(uri)
    staging = f"{root}/{STAGING_DIR}/{uuid.uuid4().hex}"
    writer = df.write.mode("error")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    published: list[str] = []
    try:
        writer.parquet(staging if is_uri(uri) else file_uri(staging))
        actions = []
        for relative in _staged_files(fs, staging):
            actions.append(_publish(fs, root, staging, relative, arrow_schema))
            published.append(relative)
        yield actions
    except BaseException:
        _discard_uncommitted(fs, uri, root, published)
        raise
    finally:
        remove_staging(fs, root, staging)


def remove_staging(fs: pafs.FileSystem, root: str, staging: str) -> None:
    """Delete one staging folder, and the ``_staging`` parent once it is empty."""
    for path in (staging, f"{root}/{STAGING_DIR}"):
        try:
            if path == staging:
                fs.delete_dir_contents(path, missing_dir_ok=True)
            elif fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
                continue  # another writer's staging folder is in it
            fs.delete_dir(path)
        except (FileNotFoundError, OSError):
            pass


def _discard_uncommitted(fs: pafs.FileSystem, uri: str, root: str, published: list[str]) -> None:
    """Delete the moved-in files of a write whose commit did not happen (a failed or lost commit)."""
    from deltalake import DeltaTable

    if not published:
        return
    try:
        referenced = {unquote(p) for p in DeltaTable(uri).get_add_actions(flatten=True).column("path").to_pylist()}
    except Exception:  # noqa: BLE001 - no table (a failed create): nothing references the files
        referenced = set()
    for relative in published:
        if relative not in referenced:
            try:
                fs.delete_file(f"{root}/{relative}")
            except (FileNotFoundError, OSError):
                pass


def added_rows(actions) -> int:
    """The rows that add actions made by :func:`staged` describe (from their statistics)."""
    return sum(json.loads(a.stats)["numRecords"] for a in actions)


def _staged_files(fs: pafs.FileSystem, staging: str) -> list[str]:
    selector = pafs.FileSelector(staging, recursive=True, allow_not_found=True)
    files = []
    for info in fs.get_file_info(selector):
        relative = info.path[len(staging) + 1:]
        if info.type == pafs.FileType.File and relative.endswith(".parquet") and not any(
            part.startswith(("_", ".")) for part in relative.split("/")
        ):
            files.append(relative)
    return sorted(files)


def _publish(fs, root: str, staging: str, relative: str, arrow_schema: pa.Schema):
    """Move one staged file into its partition folder and describe it as a Delta add action."""
    from deltalake.transaction import AddAction

    destination = f"{root}/{relative}"
    parent = destination.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    fs.move(f"{staging}/{relative}", destination)
    if isinstance(fs, pafs.LocalFileSystem):  # a rename keeps the task's mtime: the sweep's age counts from here
        os.utime(destination)
    partition_values = {}
    for part in relative.split("/")[:-1]:
        key, _, value = part.partition("=")
        value = unquote(value)
        partition_values[unquote(key)] = None if value == HIVE_NULL else value
    info = fs.get_file_info(destination)
    with fs.open_input_file(destination) as handle:
        metadata = pq.read_metadata(handle)
    return AddAction(
        path=relative,
        size=info.size,
        partition_values=partition_values,
        modification_time=int(time.time() * 1000),
        data_change=True,
        stats=json.dumps(file_stats(metadata, arrow_schema)),
    )
