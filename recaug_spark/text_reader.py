"""Text files → Spark rows through :mod:`recaug_spark.parsing`, one Spark task per file.

The driver lists the files (Spark's file listing: folders, globs, any Hadoop file system) and
reads the first record of the first file when it needs the column names; each task opens one
file by its URI, streams it through the byte-level parser and emits Arrow batches. A file that
cannot be read at all raises :class:`recaug_spark.parsing.FileRefusal` in its task; the driver
turns it into a ``SourceError`` (see :func:`recaug_spark.sources.source_errors`).

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
    FileRefusal,
    csv_records,
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
        import pyarrow as pa

        arrow_schema = pa.schema([pa.field(n, pa.list_(pa.string()) if n == "_fields" else
                                           (pa.int64() if n in ("_row", "_offset") else pa.string()))
                                  for n in names])
        for batch in batches:
            for index in batch.column(0).to_pylist():
                for rows in _batched(file_rows(files[index], spec)):
                    yield pa.RecordBatch.from_arrays(
                        [pa.array(column, type=field.type) for column, field in zip(rows, arrow_schema)],
                        schema=arrow_schema,
                    )

    return spark.range(0, len(files), 1, max(1, len(files))).mapInArrow(parse_files, schema)


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
    name = file_name(uri)
    with open_uri(uri) as stream:
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
    records = csv_records(lines, sep=spec.sep)
    width = len(spec.columns)
    index: list[int | None] = list(range(width))
    if spec.header:
        header = next(records, None)
        if header is None or header.fields is None or header.reason is not None:
            raise FileRefusal(name, "its header cannot be read" + (f" ({header.reason})" if header else ""))
        index = header_index(header.fields, spec.columns, name)
        width = len(header.fields)
    for record in records:
        fields = record.fields
        reason = record.reason
        if reason is None and len(fields) != width:
            reason = "unparsable_line"
        values = [None] * len(index) if fields is None else [
            fields[i] if i is not None and i < len(fields) else None for i in index]
        yield (*values, name, record.raw, reason, record.row, record.offset)
