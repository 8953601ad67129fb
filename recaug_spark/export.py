"""``recaug export``: an augmented sequence table as files any trainer reads, without Spark.

The gold table ``augmented_sequences`` holds real and augmented rows side by side, the mask
operator's literal token inside ``item_ids`` and sequences of any length (docs/consuming.md).
Export pins one table version, lists its files from the Delta log (``recaug_spark.train.data.
pinned_files``: files of unwanted ``operator_chain`` partitions are never opened), streams each
file in record batches (``pyarrow.parquet.ParquetFile.iter_batches``: memory stays flat as the
table grows), and per
batch keeps the wanted origins, drops / keeps / maps the mask token, drops sequences shorter than
``min_length`` and appends the rest to one of three formats:

* ``parquet`` — long form, one row per event: ``seq_id, user_id, position, item_id, timestamp,
  event_type, …`` and the provenance columns;
* ``lines`` — ``<seq_id> <item> <item> …``, one sequence per line (the format the S3-Rec /
  CL4SRec / ICLRec reference code reads);
* ``recbole`` — a RecBole atomic ``.inter`` file (tab-separated, typed header
  ``user_id:token\\titem_id:token\\ttimestamp:float``), one row per event, a sequence as a user.

Every row of the table version is accounted for: written, or dropped with a reason
(:class:`ExportSummary`). Output goes to a temporary sibling file renamed at the end, so a failed
export leaves no half-written file. The augment stage records the mask token and the origin
vocabulary in each gold table commit (:func:`augmented_table_metadata`); export reads them back
(``recaug_spark.delta.commit_metadata``) and falls back to the known ones for older tables.

Example::

    summary = export_table("wh/augmented_sequences", "out/train.txt", ExportOptions("lines", no_real=True))
    print(summary.line())
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recaug_spark.train.data import MASK_TOKEN, DataFile

ORIGINS = ("real", "augmented", "synthetic")  # recaug_spark/schemas.py PROVENANCE_FIELDS: origin
REAL = "real"  # recaug_spark.schemas.REAL_CHAIN: origin and operator_chain of real rows
CHAIN = "operator_chain"
META_MASK_TOKEN = "recaug.mask_token"
META_ORIGINS = "recaug.origins"
FORMATS = ("parquet", "lines", "recbole")
RECBOLE_HEADER = "user_id:token\titem_id:token\ttimestamp:float"
MASK_MODES = ("drop", "keep", "map:<token>")

# Per-event list columns of augmented_sequences → their column in the long form.
EVENT_COLUMNS = {"item_ids": "item_id", "timestamps": "timestamp", "event_types": "event_type",
                 "session_ids": "session_id", "countries": "country", "devices": "device",
                 "negative_item_ids": "negative_item_id"}
PROVENANCE = ("origin", CHAIN, "branch", "copy", "params", "seed", "generator", "run_id", "config_hash")
_TS = pa.timestamp("us", tz="UTC")
LONG_SCHEMA = pa.schema([
    ("seq_id", pa.string()), ("user_id", pa.string()), ("position", pa.int32()), ("item_id", pa.string()),
    ("timestamp", _TS), ("event_type", pa.string()), ("session_id", pa.string()), ("country", pa.string()),
    ("device", pa.string()), ("negative_item_id", pa.string()),
    ("origin", pa.string()), (CHAIN, pa.string()), ("branch", pa.int32()), ("copy", pa.int32()),
    ("params", pa.string()), ("seed", pa.int64()), ("generator", pa.string()), ("run_id", pa.string()),
    ("config_hash", pa.string()),
])
# What each format reads from the table (fewer columns, less I/O).
_READ_COLUMNS = {
    "parquet": ("sequence_id", "user_id", *EVENT_COLUMNS, *PROVENANCE),
    "lines": ("sequence_id", "item_ids", "origin"),
    "recbole": ("sequence_id", "item_ids", "timestamps", "origin"),
}


class ExportError(ValueError):
    """An export that cannot be done as asked; the message says which option, row or column."""


def augmented_table_metadata(mask_token: str | None = None) -> dict[str, str]:
    """What the augment stage records in a gold table's commit (``recaug_spark.delta.write_table``'s
    ``metadata``): the origin vocabulary and, for sequence tables, the mask operator's token."""
    metadata = {META_ORIGINS: json.dumps(list(ORIGINS))}
    if mask_token is not None:
        metadata[META_MASK_TOKEN] = mask_token
    return metadata


@dataclass(frozen=True)
class MaskPolicy:
    """What happens to the mask token in ``item_ids``: ``drop`` the position (in every per-event
    column), ``keep`` the literal token, or ``map`` it to ``token``."""

    mode: str
    token: str | None = None

    @classmethod
    def parse(cls, text: str) -> "MaskPolicy":
        if text in ("drop", "keep"):
            return cls(text)
        if text.startswith("map:") and text[4:] and not any(c.isspace() for c in text[4:]):
            return cls("map", text[4:])
        raise ExportError(f"--mask must be one of {', '.join(MASK_MODES)} (a token without whitespace), not {text!r}")


@dataclass(frozen=True)
class ExportOptions:
    """How to export. ``origins``: the origins to keep (None: every origin of the table's vocabulary);
    ``no_real`` drops real rows on top; ``chains``: keep only these ``operator_chain`` values;
    ``timestamp`` (recbole): ``position`` writes 0, 1, 2… so RecBole's sort by (user, time) keeps
    the exported order exactly, ``event`` the event time in epoch seconds."""

    fmt: str
    origins: tuple[str, ...] | None = None
    no_real: bool = False
    mask: str = "drop"
    min_length: int = 1
    chains: tuple[str, ...] | None = None
    version: int | None = None
    timestamp: str = "position"
    batch_size: int = 4_096
    integer_ids: bool = False  # lines: items as 1..N (sorted id order), the mask token as N+1; map saved as JSON

    def check(self) -> MaskPolicy:
        if self.fmt not in FORMATS:
            raise ExportError(f"format must be one of {', '.join(FORMATS)}, not {self.fmt!r}")
        if self.min_length < 1:
            raise ExportError(f"--min-length must be at least 1 (an empty sequence has no line), not {self.min_length}")
        if self.timestamp not in ("position", "event"):
            raise ExportError(f"--timestamp must be 'position' or 'event', not {self.timestamp!r}")
        if self.batch_size < 1:
            raise ExportError(f"batch size must be positive, not {self.batch_size}")
        policy = MaskPolicy.parse(self.mask)
        if self.integer_ids and (self.fmt != "lines" or policy.mode == "map"):
            raise ExportError("--integer-ids is for --format lines, with --mask drop or keep (the token becomes N+1)")
        return policy


@dataclass
class ExportSummary:
    """Rows (sequences) read, written and dropped by reason; ``read == written + sum(dropped)``."""

    table: str
    version: int
    fmt: str
    out: str
    mask_token: str
    mask_token_source: str  # "table metadata" or "default"
    mask_mode: str
    rows_read: int = 0
    rows_written: int = 0
    events_written: int = 0
    mask_tokens: int = 0  # tokens met in the written rows' item_ids (dropped, kept or mapped)
    dropped: Counter = field(default_factory=Counter)
    written_by_origin: Counter = field(default_factory=Counter)
    vocabulary: str | None = None  # the item index map written with --integer-ids

    def line(self) -> str:
        dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(self.dropped.items())) or "none"
        origins = ", ".join(f"{o} {n}" for o, n in sorted(self.written_by_origin.items())) or "none"
        return (f"export {self.table}@v{self.version} → {self.out} ({self.fmt}): read {self.rows_read} sequences, "
                f"wrote {self.rows_written} ({origins}; {self.events_written} events), dropped "
                f"{sum(self.dropped.values())} ({dropped}); mask token {self.mask_token!r} "
                f"({self.mask_token_source}): {self.mask_tokens} {_MASK_VERB[self.mask_mode]}"
                + (f"; item index map {self.vocabulary}" if self.vocabulary else ""))

    def notes(self) -> list[str]:
        """Drops a user may not expect (synthetic rows left out by an origin filter)."""
        synthetic = self.dropped.get("origin=synthetic", 0)
        if synthetic:
            return [f"note: {synthetic} synthetic sequences (generated users) were left out by the origin filter; "
                    "add 'synthetic' to --origins to keep them"]
        return []


_MASK_VERB = {"drop": "dropped", "keep": "kept", "map": "mapped"}


# ---------------------------------------------------------------- pure steps over Arrow tables

def keep_origins(table: pa.Table, wanted: frozenset[str], vocabulary: tuple[str, ...]) -> tuple[pa.Table, Counter]:
    """The rows whose ``origin`` is in ``wanted``; the others counted as ``origin=<value>``. An origin
    outside the table's vocabulary is an error (the table and its metadata disagree)."""
    origin = table.column("origin")
    values, counts = _value_counts(origin)
    unknown = sorted(set(values) - set(vocabulary))
    if unknown:
        raise ExportError(f"origin value(s) {unknown} are not in the table's origin vocabulary {list(vocabulary)}")
    dropped = Counter({f"origin={v}": n for v, n in zip(values, counts) if v not in wanted})
    if not dropped:
        return table, dropped
    return table.filter(pc.is_in(origin, pa.array(sorted(wanted), pa.string()))), dropped


def _value_counts(column) -> tuple[list, list]:
    struct = pc.value_counts(column)
    return struct.field("values").to_pylist(), struct.field("counts").to_pylist()


def mask_counts(table: pa.Table, token: str) -> np.ndarray:
    """How many mask tokens each row's ``item_ids`` holds."""
    items = _combined(table.column("item_ids"))
    is_mask = pc.fill_null(pc.equal(items.flatten(), token), False).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(items).to_numpy()
    return np.bincount(parents[is_mask], minlength=len(items)).astype(np.int64)


def apply_mask(table: pa.Table, policy: MaskPolicy, token: str) -> pa.Table:
    """``table`` with the mask ``token`` of ``item_ids`` dropped (from every per-event column, and
    ``length`` updated), kept, or mapped to ``policy.token``."""
    items = _combined(table.column("item_ids"))
    is_mask = pc.fill_null(pc.equal(items.flatten(), token), False)
    if policy.mode == "keep" or not pc.any(is_mask).as_py():
        return table
    if policy.mode == "map":
        mapped = pc.if_else(is_mask, pa.scalar(policy.token, pa.string()), items.flatten())
        return _set(table, "item_ids", _relist(items, mapped))
    keep = ~is_mask.to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(items).to_numpy()
    lengths = np.bincount(parents[keep], minlength=len(items)).astype(np.int32)
    for name in EVENT_COLUMNS:
        if name in table.column_names:
            table = _set(table, name, _drop_positions(_combined(table.column(name)), keep, parents, lengths, name))
    if "length" in table.column_names:
        table = _set(table, "length", pa.array(lengths, pa.int32()))
    return table


def _drop_positions(column: pa.ListArray, keep: np.ndarray, parents: np.ndarray, lengths: np.ndarray,
                    name: str) -> pa.ListArray:
    """``column`` (a per-event list aligned with ``item_ids``) without the dropped positions; a
    null list stays null; a list of another length than its ``item_ids`` is an error."""
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    own = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    item_lengths = np.bincount(parents, minlength=len(column))
    bad = np.flatnonzero(valid & (own != item_lengths))
    if len(bad):
        raise ExportError(f"column {name} of row {int(bad[0])} has {int(own[bad[0]])} values but item_ids has "
                          f"{int(item_lengths[bad[0]])}: the table is not aligned")
    element_kept = keep[valid[parents]]
    values = column.flatten().filter(pa.array(element_kept))
    new_lengths = np.where(valid, lengths, 0)
    offsets = np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(~valid))


def item_counts(table: pa.Table) -> np.ndarray:
    """The number of items of each row."""
    return pc.list_value_length(table.column("item_ids")).to_numpy(zero_copy_only=False).astype(np.int64)


def prepare(table: pa.Table, wanted: frozenset[str], vocabulary: tuple[str, ...], policy: MaskPolicy,
            token: str, min_length: int) -> tuple[pa.Table, Counter, int]:
    """One batch through every filter: origins, mask token, minimum length. Returns the rows to
    write, the rows dropped by reason (``origin=<value>``, ``too_short``, and
    ``too_short_after_mask_drop`` for rows long enough before their mask tokens were dropped), and
    the mask tokens the written rows held."""
    table, dropped = keep_origins(table, wanted, vocabulary)
    masks = mask_counts(table, token)
    before = item_counts(table)
    table = apply_mask(table, policy, token)
    short = item_counts(table) < min_length
    after_mask = short & (before >= min_length)
    dropped["too_short_after_mask_drop"] += int(after_mask.sum())
    dropped["too_short"] += int((short & ~after_mask).sum())
    if short.any():
        table = table.filter(pa.array(~short))
    return table, +dropped, int(masks[~short].sum())


def long_rows(table: pa.Table) -> pa.Table:
    """One row per event, in :data:`LONG_SCHEMA`: sequence columns repeated, lists flattened, the
    0-based ``position`` inside the exported sequence."""
    items = _combined(table.column("item_ids"))
    parents = pc.list_parent_indices(items)
    n = len(parents)
    data = {"seq_id": table.column("sequence_id").take(parents),
            "position": pa.array(positions(items).astype(np.int32))}
    for name, out in EVENT_COLUMNS.items():
        if name in table.column_names:
            data[out] = _aligned_values(_combined(table.column(name)), parents)
    for name in ("user_id", *PROVENANCE):
        if name in table.column_names:
            data[name] = table.column(name).take(parents)
    arrays = [data[f.name].cast(f.type) if f.name in data else pa.nulls(n, f.type) for f in LONG_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=LONG_SCHEMA)


def positions(items: pa.ListArray) -> np.ndarray:
    """The 0-based position of each flat element inside its list."""
    offsets = items.offsets.to_numpy().astype(np.int64)
    lengths = np.diff(offsets)
    return np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(offsets[:-1] - offsets[0], lengths)


def _aligned_values(column: pa.ListArray, parents: pa.Array) -> pa.Array:
    """The flat values of a per-event list column, one per ``item_ids`` element (null where the
    row's list is null)."""
    if column.null_count == 0:
        return column.flatten()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    rows = parents.to_numpy()
    element_valid = valid[rows]
    index = np.cumsum(element_valid) - 1
    return column.flatten().take(pa.array(index, mask=~element_valid))


def sequence_lines(table: pa.Table) -> pa.Array:
    """``<seq_id> <item> <item> …`` per row. Ids holding whitespace would split wrongly: an error."""
    _check_ids(table.column("sequence_id"), table, r"\s", "whitespace", "lines")
    _check_ids(_combined(table.column("item_ids")).flatten(), table, r"\s", "whitespace", "lines")
    joined = pc.binary_join(table.column("item_ids"), " ")
    return pc.binary_join_element_wise(table.column("sequence_id"), joined, " ")


def recbole_rows(table: pa.Table, timestamp: str) -> pa.Table:
    """The ``.inter`` rows of ``table``: (sequence id, item, timestamp) per event. ``timestamp``:
    ``position`` (0, 1, 2… so RecBole's sort by user and time keeps the order) or ``event`` (epoch
    seconds)."""
    _check_ids(table.column("sequence_id"), table, r"[\t\r\n]", "a tab or line break", "recbole")
    items = _combined(table.column("item_ids"))
    _check_ids(items.flatten(), table, r"[\t\r\n]", "a tab or line break", "recbole")
    parents = pc.list_parent_indices(items)
    if timestamp == "position":
        when = pa.array(positions(items))
    else:
        stamps = _aligned_values(_combined(table.column("timestamps")), parents)
        if stamps.null_count:
            raise ExportError("some events have no timestamp; export with --timestamp position")
        when = pc.divide(stamps.cast(_TS).cast(pa.int64()).cast(pa.float64()), 1e6)
    return pa.table({"user_id": table.column("sequence_id").take(parents), "item_id": items.flatten(),
                     "timestamp": when})


def encode_items(table: pa.Table, vocabulary, token: str) -> pa.Table:
    """``item_ids`` as decimal strings of their ``vocabulary`` index (1..N; the mask ``token`` N+1), as
    reference loaders that parse ``int(item)`` need."""
    items = _combined(table.column("item_ids"))
    flat = items.flatten()
    if token != MASK_TOKEN:  # the vocabulary knows the default token only
        flat = pc.if_else(pc.fill_null(pc.equal(flat, token), False), pa.scalar(MASK_TOKEN), flat)
    codes = pa.array(vocabulary.encode(flat)).cast(pa.string())
    return _set(table, "item_ids", _relist(items, codes))


def _check_ids(values, table: pa.Table, pattern: str, what: str, fmt: str) -> None:
    """Fail, naming an offending id, when ``values`` holds a null or an id matching ``pattern``."""
    if values.null_count:
        raise ExportError(f"the {fmt} format cannot hold a null id, and a sequence of this table has one; "
                          "export to parquet instead")
    bad = pc.fill_null(pc.match_substring_regex(values, pattern), False)
    if pc.any(bad).as_py():
        first = pc.filter(values, bad)[0].as_py()
        raise ExportError(f"the {fmt} format cannot hold ids containing {what}, as {first!r} does; "
                          "export to parquet instead")


def _combined(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _relist(template: pa.ListArray, values: pa.Array) -> pa.ListArray:
    offsets = template.offsets
    return pa.ListArray.from_arrays(pc.subtract(offsets, offsets[0]), values, mask=template.is_null())


def _set(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, column)


# ---------------------------------------------------------------- the table: vocabulary, files, batches

@dataclass(frozen=True)
class TableInfo:
    """What export needs to know of a pinned table version."""

    uri: str
    version: int
    columns: tuple[str, ...]  # every column, partition columns included
    partition_columns: tuple[str, ...]
    mask_token: str
    mask_token_source: str
    origins: tuple[str, ...]


def table_info(uri: str, version: int | None = None) -> TableInfo:
    """Schema, version, mask token and origin vocabulary of table ``uri`` (from its log and the
    metadata the augment stage recorded; the known token and vocabulary for tables without any)."""
    from deltalake import DeltaTable

    from recaug_spark.delta import TableNotFoundError, commit_metadata, table_exists

    if not table_exists(uri):
        raise TableNotFoundError(f"no Delta table at {uri}")
    table = DeltaTable(uri, version=version)
    pinned = table.version()
    columns = tuple(pa.schema(table.schema().to_arrow()).names)
    metadata = commit_metadata(uri, pinned)
    origins = tuple(json.loads(metadata[META_ORIGINS])) if META_ORIGINS in metadata else ORIGINS
    token = metadata.get(META_MASK_TOKEN)
    return TableInfo(uri, pinned, columns, tuple(table.metadata().partition_columns),
                     token if token is not None else MASK_TOKEN,
                     "table metadata" if token is not None else "default", origins)


def wanted_origins(info: TableInfo, options: ExportOptions) -> frozenset[str]:
    """The origins to keep: ``options.origins`` (each must be in the table's vocabulary) or all, less
    ``real`` with ``no_real``."""
    chosen = info.origins if options.origins is None else options.origins
    unknown = sorted(set(chosen) - set(info.origins))
    if unknown:
        raise ExportError(f"--origins {unknown} not in the table's origin vocabulary {list(info.origins)}")
    wanted = frozenset(chosen) - ({REAL} if options.no_real else set())
    if not wanted:
        raise ExportError("no origin left to export (--no-real with --origins real?)")
    return wanted


def select_files(info: TableInfo, wanted: frozenset[str],
                 chains: tuple[str, ...] | None) -> tuple[list[DataFile], Counter]:
    """The data files to read; rows of files skipped by partition (``operator_chain`` not in
    ``chains``, or the real partition when real rows are not wanted) counted from the log."""
    from recaug_spark.train.data import pinned_files

    if chains is not None and CHAIN not in info.partition_columns:
        raise ExportError(f"--chains needs a table partitioned by {CHAIN}; {info.uri} is partitioned by "
                          f"{list(info.partition_columns) or 'nothing'}")
    files, dropped = [], Counter()
    for f in pinned_files(info.uri, info.version):
        chain = f.partition_value(CHAIN) if CHAIN in info.partition_columns else None
        if chains is not None and chain not in chains:
            dropped[f"chain={chain}"] += f.rows
        elif chain == REAL and REAL not in wanted:
            dropped[f"origin={REAL}"] += f.rows
        else:
            files.append(f)
    return files, dropped


def read_batches(info: TableInfo, files: list[DataFile], columns: tuple[str, ...],
                 batch_size: int) -> Iterator[pa.Table]:
    """Each file's rows as tables of at most ``batch_size`` rows and only ``columns`` (a column the
    file lacks, written before the column was added, reads as nulls); partition values added as
    columns. ``ParquetFile.iter_batches`` on one thread: through ``pyarrow.dataset`` scanners the
    process's resident memory crept up file after file (freed pages kept by the allocator)."""
    from deltalake import DeltaTable

    schema = pa.schema(DeltaTable(info.uri, version=info.version).schema().to_arrow())
    for f in files:
        parquet = _parquet_file(f.path)
        present = [c for c in columns if c in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=batch_size, columns=present, use_threads=False):
            if batch.num_rows == 0:
                continue
            table = pa.Table.from_batches([batch])
            for name in columns:
                if name in info.partition_columns:
                    table = table.append_column(name, pa.array([f.partition_value(name)] * batch.num_rows, pa.string()))
                elif name not in present:
                    table = table.append_column(name, pa.nulls(batch.num_rows, schema.field(name).type))
            yield table.select(list(columns))


def _parquet_file(path: str):
    """A Parquet file by local path or URI (``s3://…``) through pyarrow's native filesystems."""
    import pyarrow.parquet as pq

    from recaug_spark.paths import is_uri

    if is_uri(path):
        import pyarrow.fs as pafs

        filesystem, inner = pafs.FileSystem.from_uri(path)
        return pq.ParquetFile(filesystem.open_input_file(inner))
    return pq.ParquetFile(path)


# ---------------------------------------------------------------- writers

class _Output:
    """A file written under a temporary sibling name and renamed into place by :meth:`commit`."""

    def __init__(self, out: str):
        self.path = Path(out)
        if self.path.is_dir():
            raise ExportError(f"--out {out} is a folder; give a file path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")

    def commit(self) -> None:
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the error that made us abort is the one to report
            self.close()
        self.partial.unlink(missing_ok=True)

    def close(self) -> None:
        raise NotImplementedError


class ParquetWriter(_Output):
    def __init__(self, out: str, options: ExportOptions):
        import pyarrow.parquet as pq

        super().__init__(out)
        self.writer = pq.ParquetWriter(self.partial, LONG_SCHEMA, compression="zstd")

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(long_rows(table))

    def close(self) -> None:
        self.writer.close()


class LinesWriter(_Output):
    def __init__(self, out: str, options: ExportOptions):
        super().__init__(out)
        self.file = open(self.partial, "w", encoding="utf-8", newline="\n")

    def write(self, table: pa.Table) -> None:
        lines = sequence_lines(table).to_pylist()
        self.file.write("\n".join(lines) + "\n")

    def close(self) -> None:
        self.file.close()


class RecboleWriter(_Output):
    def __init__(self, out: str, options: ExportOptions):
        import pyarrow.csv as csv

        super().__init__(out)
        if self.path.suffix != ".inter":
            raise ExportError(f"a RecBole interaction file must end in .inter (RecBole reads "
                              f"<data_path>/<dataset>/<dataset>.inter), not {out}")
        self.timestamp = options.timestamp
        self.sink = pa.OSFile(str(self.partial), "wb")
        self.sink.write((RECBOLE_HEADER + "\n").encode())
        self.schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.float64())])
        self.writer = csv.CSVWriter(self.sink, self.schema, write_options=csv.WriteOptions(
            include_header=False, delimiter="\t", quoting_style="none"))

    def write(self, table: pa.Table) -> None:
        rows = recbole_rows(table, self.timestamp)
        self.writer.write_table(rows.cast(self.schema))

    def close(self) -> None:
        self.writer.close()
        self.sink.close()


WRITERS = {"parquet": ParquetWriter, "lines": LinesWriter, "recbole": RecboleWriter}


# ---------------------------------------------------------------- the export

def export_table(uri: str, out: str, options: ExportOptions, name: str | None = None) -> ExportSummary:
    """Export the sequences of Delta table ``uri`` (at ``options.version``, default the latest) to
    ``out`` in ``options.fmt``; see the module docstring. Returns the summary of what was read,
    written and dropped."""
    policy = options.check()
    info = table_info(uri, options.version)
    missing = [c for c in ("sequence_id", "item_ids", "origin") if c not in info.columns]
    if missing:
        raise ExportError(f"{uri} has no column(s) {missing}: export reads augmented sequence tables "
                          "(augmented_sequences)")
    wanted = wanted_origins(info, options)
    files, dropped = select_files(info, wanted, options.chains)
    summary = ExportSummary(name or uri, info.version, options.fmt, out, info.mask_token, info.mask_token_source,
                            policy.mode, rows_read=sum(dropped.values()), dropped=dropped)
    columns = tuple(c for c in _READ_COLUMNS[options.fmt] if c in info.columns)
    vocabulary = _vocabulary(files) if options.integer_ids else None
    writer = WRITERS[options.fmt](out, options)
    try:
        for batch in read_batches(info, files, columns, options.batch_size):
            rows, batch_dropped, masks = prepare(batch, wanted, info.origins, policy, info.mask_token,
                                                 options.min_length)
            if vocabulary is not None:
                rows = encode_items(rows, vocabulary, info.mask_token)
            summary.rows_read += batch.num_rows
            summary.dropped.update(batch_dropped)
            summary.mask_tokens += masks
            if rows.num_rows:
                writer.write(rows)
                summary.rows_written += rows.num_rows
                summary.events_written += int(item_counts(rows).sum())
                summary.written_by_origin.update(dict(zip(*_value_counts(rows.column("origin")))))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    if vocabulary is not None:
        vocabulary.save(vocabulary_path(out))
        summary.vocabulary = str(vocabulary_path(out))
    return summary


def vocabulary_path(out: str) -> Path:
    """Where ``--integer-ids`` saves the item ↔ index map (the train stage's ``Vocabulary`` JSON)."""
    return Path(f"{out}.vocab.json")


def _vocabulary(files: list[DataFile]):
    """Every item id of the files to read (a first pass over ``item_ids`` only)."""
    from recaug_spark.train.data import Vocabulary

    return Vocabulary.from_files(files)
