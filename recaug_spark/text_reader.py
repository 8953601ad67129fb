"""Text files → Spark rows through :mod:`recaug_spark.parsing`, one Spark task per file.

The driver lists the files (Spark's file listing: folders, globs, any Hadoop file system) and
reads the first record of the first file when it needs the column names; each task opens one
file by its URI, streams it through the byte-level parser and emits Arrow batches. A file that
cannot be read at all raises :class:`recaug_spark.parsing.FileRefusal` in its task; the driver
turns it into a ``SourceError`` (see :func:`recaug_spark.sources.source_errors`). CSV takes a
fast path (:func:`csv_batches`: pyarrow.csv over clean runs of lines, the byte-level parser for
the rest) with exactly the rows of the byte-level parser alone.

Output columns: the requested source columns (strings; ``_fields`` array<string> for the line
kind), then ``_source`` (file name), ``_raw`` (the record's text), ``_reason`` (``encoding``,
``unparsable_line``, ``duplicate_key``, ``wrong_type`` or null), ``_row`` (logical record
number, header = 1) and ``_offset`` (byte offset, null for a transcoded file).

Example::

    spec = TextSpec(kind="csv", columns=("user", "item"), header=True)
    df = read_text(spark, "/data/clicks.csv", spec)
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO, Iterator
from urllib.parse import unquote, urlparse

from recaug_spark.parsing import (
    CsvParser,
    FileRefusal,
    LineSource,
    csv_records,
    file_blocks,
    file_lines,
    five_core_fields,
    header_index,
    json_fields,
    plain_records,
)

TEXT_MARKERS = ("_source", "_raw", "_reason", "_row", "_offset")
_BATCH_ROWS = 4096
_BATCH_BYTES = 32 << 20
_JSON_SAMPLE_LINES = 1000
_ASCII_SPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() strips: a line of only these is blank


@dataclass(frozen=True)
class TextSpec:
    """How to read the files: ``kind`` csv / json / lines; the source ``columns`` to emit (csv:
    header names, or ``_c0``... without a header; json: keys, with ``kinds`` id / number / any)."""

    kind: str
    columns: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    sep: str = ","
    header: bool = True
    encoding: str | None = None
    fast_csv: bool = True  # CSV through csv_batches' pyarrow fast path (same rows; False: per record only)


def open_uri(uri: str) -> BinaryIO:
    """A buffered binary stream of a file given as a path or URI (``file:``, or any pyarrow file system)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return open(unquote(parsed.path) if parsed.scheme else uri, "rb")  # noqa: SIM115 (closed by the caller)
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    return io.BufferedReader(_RawArrow(fs.open_input_stream(path, compression=None)), buffer_size=1 << 20)


class _RawArrow(io.RawIOBase):
    def __init__(self, stream):
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def file_name(uri: str) -> str:
    return os.path.basename(unquote(urlparse(uri).path.rstrip("/")))


def list_files(spark, path: str) -> list[str]:
    """The files under ``path`` (file, folder or glob; hidden and ``_`` files skipped), sorted."""
    rows = spark.read.format("binaryFile").load(path).select("path").collect()
    return sorted(r["path"] for r in rows)


def first_record_fields(uri: str, spec: TextSpec) -> list[str]:
    """The first record of a file split as ``spec`` says (the header of a CSV file)."""
    name = file_name(uri)
    with open_uri(uri) as stream:
        for record in csv_records(file_lines(stream, name, spec.encoding), sep=spec.sep):
            if record.fields is None or record.reason is not None:
                raise FileRefusal(name, f"its first record cannot be read ({record.reason}): {record.raw[:200]!r}")
            return list(record.fields)
    raise FileRefusal(name, "the file holds no record")


def json_keys(uri: str, encoding: str | None) -> list[str]:
    """The keys of the first JSON objects of a file, in order of appearance (to map columns)."""
    import json

    keys: dict[str, None] = {}
    with open_uri(uri) as stream:
        for i, (record, _) in enumerate(plain_records(file_lines(stream, file_name(uri), encoding))):
            if i >= _JSON_SAMPLE_LINES:
                break
            try:
                value = json.loads(record.raw)
            except ValueError:
                continue
            if isinstance(value, dict):
                keys.update(dict.fromkeys(value))
    return list(keys)


def output_schema(spec: TextSpec):
    from pyspark.sql import types as T

    data = ([T.StructField("_fields", T.ArrayType(T.StringType()))] if spec.kind == "lines"
            else [T.StructField(c, T.StringType()) for c in spec.columns])
    return T.StructType(data + [
        T.StructField("_source", T.StringType()), T.StructField("_raw", T.StringType()),
        T.StructField("_reason", T.StringType()), T.StructField("_row", T.LongType()),
        T.StructField("_offset", T.LongType()),
    ])


def read_text(spark, path: str, spec: TextSpec, files: list[str] | None = None):
    """The records of every file under ``path`` as a DataFrame (one partition per file)."""
    files = files if files is not None else list_files(spark, path)
    schema = output_schema(spec)
    names = tuple(f.name for f in schema.fields)

    def parse_files(batches):
        for batch in batches:
            for index in batch.column(0).to_pylist():
                yield from file_batches(files[index], spec)

    assert names == tuple(arrow_schema(spec).names)
    return spark.range(0, len(files), 1, max(1, len(files))).mapInArrow(parse_files, schema)


def arrow_schema(spec: TextSpec):
    """The Arrow schema of the reader's batches (:func:`output_schema` in Arrow types)."""
    import pyarrow as pa

    data = ([pa.field("_fields", pa.list_(pa.string()))] if spec.kind == "lines"
            else [pa.field(c, pa.string()) for c in spec.columns])
    return pa.schema(data + [pa.field("_source", pa.string()), pa.field("_raw", pa.string()),
                             pa.field("_reason", pa.string()), pa.field("_row", pa.int64()),
                             pa.field("_offset", pa.int64())])


def file_batches(uri: str, spec: TextSpec) -> Iterator:
    """The output rows of one file as Arrow record batches (CSV through :func:`csv_batches`)."""
    with open_uri(uri) as stream:
        yield from stream_batches(stream, file_name(uri), spec)


def stream_batches(stream: BinaryIO, name: str, spec: TextSpec, *, stats: dict | None = None) -> Iterator:
    """:func:`stream_rows` as Arrow record batches: the same rows in the same order. With
    ``spec.fast_csv``, CSV goes through :func:`csv_batches` (``stats`` counts its fast and
    per-record rows)."""
    schema = arrow_schema(spec)
    if spec.kind == "csv" and spec.fast_csv:
        yield from csv_batches(file_blocks(stream, name, spec.encoding), name, spec, schema, stats)
        return
    for rows in _batched(stream_rows(stream, name, spec)):
        yield rows_batch(rows, schema)


def rows_batch(columns: list[list], schema):
    """Column lists (as :func:`_batched` makes them) → one record batch of ``schema``."""
    import pyarrow as pa

    return pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema)], schema=schema)


def _batched(rows: Iterator[tuple]) -> Iterator[list[list]]:
    columns: list[list] | None = None
    size = 0
    for row in rows:
        if columns is None:
            columns = [[] for _ in row]
        for column, value in zip(columns, row):
            column.append(value)
        size += len(row[-4] or "")
        if len(columns[0]) >= _BATCH_ROWS or size >= _BATCH_BYTES:
            yield columns
            columns, size = None, 0
    if columns is not None:
        yield columns


def file_rows(uri: str, spec: TextSpec) -> Iterator[tuple]:
    """The output rows of one file (tuples in :func:`output_schema` order)."""
    with open_uri(uri) as stream:
        yield from stream_rows(stream, file_name(uri), spec)


def stream_rows(stream: BinaryIO, name: str, spec: TextSpec) -> Iterator[tuple]:
    """The output rows of one open file called ``name`` (what :func:`file_rows` yields; testable
    on an in-memory stream). Every non-blank record gives exactly one row."""
    lines = file_lines(stream, name, spec.encoding)
    if spec.kind == "csv":
        yield from _csv_rows(lines, name, spec)
    elif spec.kind == "json":
        for record, _ in plain_records(lines):
            values, reason = (None, record.reason) if record.reason else json_fields(
                record.raw, spec.columns, spec.kinds)
            values = values or [None] * len(spec.columns)
            yield (*values, name, record.raw, reason, record.row, record.offset)
    else:
        for record, data in plain_records(lines):
            fields = None if record.reason else five_core_fields(data)
            reason = record.reason or (None if fields else "unparsable_line")
            yield fields, name, record.raw, reason, record.row, record.offset


def _csv_rows(lines, name: str, spec: TextSpec) -> Iterator[tuple]:
    parser = CsvParser(lines, sep=spec.sep)
    index, width = _csv_header(parser, name, spec)
    while (record := parser.next_record()) is not None:
        yield _csv_row(record, index, width, name)


def _csv_header(parser: CsvParser, name: str, spec: TextSpec) -> tuple[list[int | None], int]:
    """(position of each wanted column in a record, fields a record must have), reading the header."""
    width = len(spec.columns)
    if not spec.header:
        return list(range(width)), width
    header = parser.next_record()
    if header is None or header.fields is None or header.reason is not None:
        raise FileRefusal(name, "its header cannot be read" + (f" ({header.reason})" if header else ""))
    return header_index(header.fields, spec.columns, name), len(header.fields)


def _csv_row(record, index: list[int | None], width: int, name: str) -> tuple:
    fields = record.fields
    reason = record.reason
    if reason is None and len(fields) != width:
        reason = "unparsable_line"
    values = [None] * len(index) if fields is None else [
        fields[i] if i is not None and i < len(fields) else None for i in index]
    return (*values, name, record.raw, reason, record.row, record.offset)


def csv_batches(blocks, name: str, spec: TextSpec, schema, stats: dict | None = None) -> Iterator:
    """The rows of :func:`_csv_rows` as record batches, with a fast path for clean stretches.

    ``blocks`` come from :func:`recaug_spark.parsing.file_blocks`. A run of lines, each with an
    even number of quote characters, at a record boundary: pyarrow.csv reads it in C++ as one
    record per non-blank line. The run is taken only when all of it is valid UTF-8 without NUL,
    every line has the expected number of fields, and Python's csv module splits each line holding
    a quote the same way; otherwise (and for a line with an odd number of quotes, which may open a
    multi-line field) the per-record parser reads it, so the rows are exactly those of
    :func:`_csv_rows`.
    """
    import numpy as np

    source = LineSource(blocks)
    parser = CsvParser(source, sep=spec.sep)
    index, width = _csv_header(parser, name, spec)
    stats = stats if stats is not None else {}
    stats.setdefault("fast", 0)
    stats.setdefault("slow", 0)
    slow: list[tuple] = []  # rows read record by record, not yet in a batch
    while True:
        source.unshift(parser.take_pending())  # lines a broken quote left: read them again, from here
        view = source.view() if parser.expected == width else None
        if view is not None:
            data, ends, quotes, odd, k, base = view
            first_odd = np.searchsorted(odd, k)
            stop = min(int(odd[first_odd]) if first_odd < odd.size else len(ends), k + _BATCH_ROWS)
            size_stop = int(np.searchsorted(ends, (ends[k - 1] if k else 0) + _BATCH_BYTES)) + 1
            stop = min(stop, max(size_stop, k + 1))  # a line with an odd number of quotes: stop == k
            if stop > k:
                fast = _fast_batch(data, ends, quotes, k, stop, base, parser, index, width, name, spec.sep, schema)
                if fast is not None:
                    source.skip(stop - k)
                    yield from _slow_batches(slow, schema)
                    yield fast
                    stats["fast"] += fast.num_rows
                    continue
            records = parser.records_over(max(stop - k, 1))
        else:  # no record with fields yet, or records of another width, or the end: record by record
            record = parser.next_record()
            if record is None:
                break
            records = [record]
        slow += [_csv_row(record, index, width, name) for record in records]
        stats["slow"] += len(records)
        if len(slow) >= _BATCH_ROWS:
            yield from _slow_batches(slow, schema)
    yield from _slow_batches(slow, schema)


def _slow_batches(rows: list[tuple], schema) -> Iterator:
    """Batches of the rows read record by record; empties ``rows``."""
    yield from (rows_batch(columns, schema) for columns in _batched(iter(rows)))
    rows.clear()


def _parser_agrees(table, lines: list[tuple[int, bytes]], index: list[int | None], width: int, sep: str) -> bool:
    """True when Python's csv module (the per-record parser's) splits each of ``lines`` ((row in
    ``table``, line) of the lines that hold a quote) as pyarrow did: they differ on quotes that
    RFC 4180 does not allow."""
    import csv

    texts = [line.decode("utf-8") for _, line in lines]
    try:  # one reader over all of them: a quote left open would join two lines into one record
        split = list(csv.reader(texts, delimiter=sep, quotechar='"', doublequote=True, strict=True))
    except csv.Error:
        return False
    if len(split) != len(texts) or any(len(fields) != width for fields in split):
        return False
    rows = [row for row, _ in lines]
    for i in index:
        if i is not None and table.column(f"c{i}").take(rows).to_pylist() != [fields[i] for fields in split]:
            return False
    return True


def _fast_batch(data: bytes, ends, quotes, k: int, stop: int, base: int | None, parser: CsvParser,
                index: list[int | None], width: int, name: str, sep: str, schema):
    """One record batch of lines ``k`` to ``stop`` of a block (at a record boundary, blank lines
    included) through pyarrow.csv, or None when a line is not clean (invalid UTF-8, NUL, another
    field count, a quote read otherwise than by Python's csv module): the per-record parser reads
    them then."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    start = int(ends[k - 1]) if k else 0
    segment = data[start:int(ends[stop - 1])]
    if b"\x00" in segment:
        return None
    starts = np.concatenate([[start], ends[k:stop - 1]]).astype(np.int64)
    lines = pa.StringArray.from_buffers(stop - k, pa.py_buffer((np.append(starts, ends[stop - 1]) - start)
                                                                .astype(np.int32)), pa.py_buffer(segment))
    try:
        lines.validate(full=True)  # UTF-8
        names = [f"c{i}" for i in range(width)]
        wanted = [names[i] for i in index if i is not None]
        table = pacsv.read_csv(
            pa.py_buffer(segment),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=len(segment) + 1),
            parse_options=pacsv.ParseOptions(delimiter=sep, quote_char='"', double_quote=True,
                                             newlines_in_values=False, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in wanted},
                                                 strings_can_be_null=False, include_columns=wanted),
        )
    except pa.ArrowInvalid:
        return None
    records = pc.invert(pc.equal(pc.utf8_length(pc.utf8_trim(lines, characters=_ASCII_SPACE)), 0))  # not blank
    kept = np.flatnonzero(records.to_numpy(zero_copy_only=False))
    if table.num_rows != len(kept):
        return None
    quoted = [(row, data[int(starts[i]):int(ends[k + i])]) for row, i in enumerate(kept) if quotes[k + i]]
    if quoted and not _parser_agrees(table, quoted, index, width, sep):
        return None
    n = len(kept)
    first = parser.count(n)
    raw = pc.utf8_rtrim(lines, characters="\r\n").filter(records)
    offsets = pa.nulls(n, pa.int64()) if base is None else pa.array(base + starts[kept], pa.int64())
    values = [table.column(f"c{i}").combine_chunks() if i is not None else pa.nulls(n, pa.string()) for i in index]
    return pa.RecordBatch.from_arrays([
        *values, pa.array([name] * n, pa.string()), raw, pa.nulls(n, pa.string()),
        pa.array(np.arange(first, first + n), pa.int64()), offsets,
    ], schema=schema)
