"""Byte-level record splitting for the text source formats: pure Python, no Spark, no regex.

Every text file (CSV, JSON lines, 5-core lines) goes through here, one file at a time, so that
what a file holds is checked rather than leniently decoded:

* the bytes of a record are checked for UTF-8 (or decoded from the declared ``ingest.encoding``),
  and a record with invalid bytes or a raw NUL gets the reason ``encoding`` — nothing is ever
  replaced by U+FFFD; a UTF-8 byte order mark is skipped, a UTF-16 one is a declaration; a file
  that looks like UTF-16 without one, binary data, an empty file, a truncated or corrupt gzip file
  raise :class:`FileRefusal` (the whole file is refused, with what to do);
* CSV follows RFC 4180 (:func:`csv_records`): quoted fields may hold delimiters, doubled quotes
  and line breaks; a broken quote quarantines the record it starts and reading resumes at the next
  line; row numbers count logical records;
* nothing walks a whole line with a backtracking regex: lines are split with ``bytes.splitlines``
  and ``bytes.split``, so a line of 10^6 tokens or a 64 MiB field costs time linear in its size.

A :class:`Record` keeps its 1-based logical row number (the header, when there is one, is row 1),
its byte offset in the (decompressed) file, and its raw text: the exact bytes of the record
without the final line break, with invalid bytes written as ``\\xNN`` (a string column cannot
hold them).

Example::

    with open("clicks.csv", "rb") as f:
        for record in csv_records(file_lines(f, "clicks.csv"), sep=","):
            print(record.row, record.offset, record.fields, record.reason)
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import sys
import zlib
from collections import deque
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, Sequence

ENCODING = "encoding"
UNPARSABLE = "unparsable_line"
DUPLICATE_KEY = "duplicate_key"
WRONG_TYPE = "wrong_type"
REFUSAL_MARKER = "recaug-source-error: "

_CHUNK = 8 << 20
_SNIFF = 4096
_GZIP_MAGIC = b"\x1f\x8b"
_BINARY_MAGICS = {
    b"PAR1": "a Parquet file (use ingest.format: parquet)",
    b"PK\x03\x04": "a ZIP archive (unzip it first)",
    b"BZh": "a bzip2 file (decompress it, or recompress with gzip)",
    b"\xfd7zXZ": "an xz file (decompress it, or recompress with gzip)",
    b"7z\xbc\xaf": "a 7-Zip archive (extract it first)",
}
_TEXT_CONTROLS = bytes(set(range(32)) - {9, 10, 11, 12, 13}) + b"\x7f"  # bytes that plain text does not hold
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))

csv.field_size_limit(sys.maxsize)  # a 64 MiB field is data, not an error


class FileRefusal(ValueError):
    """A whole file that cannot be read; the message names the file, the problem and the fix.

    Raised inside a Spark task, it reaches the driver inside a Python traceback: the message
    starts with ``REFUSAL_MARKER`` so :func:`refusal_message` can find it there.
    """

    def __init__(self, name: str, problem: str):
        super().__init__(f"{REFUSAL_MARKER}{name}: {problem}")


def refusal_message(text: str) -> str | None:
    """The refusal inside an error text (e.g. a Spark task's traceback), or None."""
    start = text.find(REFUSAL_MARKER)
    if start < 0:
        return None
    end = text.find("\n", start)
    return text[start + len(REFUSAL_MARKER): end if end >= 0 else len(text)].strip()


@dataclass(slots=True)
class Record:
    """One logical record of a file: ``fields`` None when it could not be split; ``reason`` None when fine."""

    row: int
    offset: int | None
    raw: str
    fields: list | None
    reason: str | None


# --------------------------------------------------------------------------------------------
# Bytes → checked lines
# --------------------------------------------------------------------------------------------

def open_decompressed(stream: BinaryIO, name: str) -> BinaryIO:
    """``stream`` itself, or a gzip reader over it when the file starts with the gzip magic."""
    head = stream.peek(2)[:2] if hasattr(stream, "peek") else b""
    return gzip.GzipFile(fileobj=stream, mode="rb") if head == _GZIP_MAGIC else stream


def read_chunks(stream: BinaryIO, name: str) -> Iterator[bytes]:
    """The bytes of ``stream`` in chunks; a truncated or corrupt gzip stream becomes a :class:`FileRefusal`."""
    try:
        while chunk := stream.read(_CHUNK):
            yield chunk
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as error:
        raise FileRefusal(name, f"the compressed data is truncated or corrupt ({error}); re-download or "
                                f"re-export the file, nothing was written") from None


def sniff(head: bytes, name: str, encoding: str | None) -> tuple[str, int]:
    """(codec, bytes to skip) for a file starting with ``head``, or :class:`FileRefusal`.

    A BOM decides (UTF-8 / UTF-16); else the declared ``encoding``; else UTF-8, after refusing
    what is plainly not UTF-8 text: an empty file, a known binary format, UTF-16 without a BOM.
    """
    if not head:
        raise FileRefusal(name, "the file is empty; remove it or point ingest.events at the right file")
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return codec, len(bom) if codec == "utf-8" else 0
    for magic, what in _BINARY_MAGICS.items():
        if head.startswith(magic) and not _textual(head[:_SNIFF]):  # "BZh1 2 3" is a 5-core line
            raise FileRefusal(name, f"this is {what}, not text")
    if encoding is not None:
        return encoding, 0
    sample = head[:_SNIFF]
    even, odd = sample[0::2], sample[1::2]
    if len(sample) >= 4 and (even.count(0) > 0.4 * len(even) or odd.count(0) > 0.4 * len(odd)) and (
            min(even.count(0), odd.count(0)) < 0.1 * len(odd)):
        raise FileRefusal(name, "the file looks like UTF-16 text without a byte order mark; declare it with "
                                "ingest.encoding: utf-16-le (or utf-16-be)")
    if sample.count(0) > 0.1 * len(sample):
        raise FileRefusal(name, "the file holds binary data (many NUL bytes), not text; check the path and "
                                "ingest.format")
    return "utf-8", 0


def _textual(sample: bytes) -> bool:
    """True when ``sample`` is UTF-8 text without control bytes other than tab, line breaks and
    form feeds (a character cut at its end allowed): a text file that happens to start like a binary
    format's magic (``PAR1``, ``BZh``) is still text."""
    if sample.translate(None, _TEXT_CONTROLS) != sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start >= len(sample) - 3 and error.reason == "unexpected end of data"
    return True


def physical_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines (``\\n``, ``\\r\\n`` or ``\\r`` ends kept) across chunk boundaries."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        lines = data.splitlines(keepends=True)
        # The last piece may continue in the next chunk (no end yet, or a \r whose \n may follow).
        carry = lines.pop() if lines and (not lines[-1].endswith((b"\n", b"\r")) or lines[-1].endswith(b"\r")) else b""
        yield from lines
    if carry:
        yield carry


def file_lines(stream: BinaryIO, name: str, encoding: str | None = None) -> Iterator[tuple[int | None, bytes]]:
    """(byte offset, line as UTF-8 bytes) for every physical line of a file, after checking what it is.

    ``offset`` is the position in the decompressed file, or None when the file is transcoded from
    a declared encoding other than UTF-8 (then bytes that do not decode refuse the file).
    """
    rest, offset = _utf8_chunks(stream, name, encoding)
    for line in physical_lines(rest):
        yield offset, line
        if offset is not None:
            offset += len(line)


def _utf8_chunks(stream: BinaryIO, name: str, encoding: str | None) -> tuple[Iterator[bytes], int | None]:
    """The file's content as UTF-8 chunks after checking what it is (:func:`sniff`), and the byte
    offset of its first byte in the decompressed file (past a BOM), or None when it is transcoded."""
    chunks = read_chunks(open_decompressed(stream, name), name)
    first = next(chunks, b"")
    codec, skip = sniff(first, name, encoding)
    rest = _chained(first[skip:], chunks)
    if codecs.lookup(codec).name != "utf-8":
        return _transcoded(rest, codec, name), None
    return rest, skip


def file_blocks(stream: BinaryIO, name: str, encoding: str | None = None) -> Iterator[tuple[int | None, bytes]]:
    """(byte offset, bytes) of a file in blocks of whole physical lines: what :func:`file_lines`
    yields, a block at a time (offset None for a transcoded file)."""
    rest, offset = _utf8_chunks(stream, name, encoding)
    carry = b""
    for chunk in rest:
        data = carry + chunk
        # Cut after the last line end; a \r at the very end may be the first half of a \r\n.
        cut = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1
        if cut > 0:
            yield offset, data[:cut]
            offset = None if offset is None else offset + cut
        carry = data[cut:]
    if carry:
        yield offset, carry


class LineSource:
    """The physical lines of :func:`file_blocks`, one at a time (an iterator of (offset, line), as
    :func:`file_lines` gives them) or, for a fast reader, a view of the current block's remaining
    lines with their ends and quote counts (numpy), of which it takes what it reads with :meth:`skip`."""

    def __init__(self, blocks: Iterator[tuple[int | None, bytes]]):
        self.blocks, self.queue = blocks, deque()
        self.data, self.base, self.k = b"", None, 0
        self.ends = self.quotes = self.odd = None

    def __iter__(self):
        return self

    def __next__(self) -> tuple[int | None, bytes]:
        if not self._ready():
            raise StopIteration
        start = int(self.ends[self.k - 1]) if self.k else 0
        end = int(self.ends[self.k])
        self.k += 1
        return (None if self.base is None else self.base + start), self.data[start:end]

    def _ready(self) -> bool:
        """True when a line is left in the current block, loading the next block when needed."""
        import numpy as np

        while self.ends is None or self.k >= len(self.ends):
            item = self.queue.popleft() if self.queue else next(self.blocks, None)
            if item is None:
                return False
            self.base, self.data = item
            raw = np.frombuffer(self.data, np.uint8)
            lone_cr = np.flatnonzero(raw[:-1] == 13)
            lone_cr = lone_cr[raw[lone_cr + 1] != 10]
            ends = np.concatenate([np.flatnonzero(raw == 10), lone_cr]) + 1
            if raw.size and raw[-1] == 13:
                ends = np.append(ends, raw.size)
            ends.sort()
            if not ends.size or ends[-1] != raw.size:
                ends = np.append(ends, raw.size)  # the last line of the file, without a line end
            self.ends, self.k = ends, 0
            quote_lines = np.searchsorted(ends, np.flatnonzero(raw == 34), side="right")
            self.quotes = np.bincount(quote_lines, minlength=len(ends))[: len(ends)]
            self.odd = np.flatnonzero(self.quotes & 1)
        return True

    def view(self):
        """``(data, ends, quotes, odd, k, base)`` of the current block: its bytes, each line's end and
        number of quotes, the lines with an odd number; lines ``k`` on are unread. None at the end."""
        return (self.data, self.ends, self.quotes, self.odd, self.k, self.base) if self._ready() else None

    def skip(self, lines: int) -> None:
        """Mark ``lines`` lines of the current block read (by the caller)."""
        self.k += lines

    def unshift(self, lines: Sequence[tuple[int | None, bytes]]) -> None:
        """Put consecutive lines taken earlier back in front of the unread ones (as one block)."""
        if not lines:
            return
        if self._ready():
            start = int(self.ends[self.k - 1]) if self.k else 0
            self.queue.appendleft(((None if self.base is None else self.base + start), self.data[start:]))
        self.queue.appendleft((lines[0][0], b"".join(line for _, line in lines)))
        self.ends = None


def _chained(first: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from chunks


def _transcoded(chunks: Iterator[bytes], codec: str, name: str) -> Iterator[bytes]:
    decoder = codecs.getincrementaldecoder(codec)(errors="strict")
    done = 0
    try:
        for chunk in chunks:
            yield decoder.decode(chunk).encode("utf-8", "surrogatepass")
            done += len(chunk)
        yield decoder.decode(b"", final=True).encode("utf-8", "surrogatepass")
    except UnicodeDecodeError as error:
        raise FileRefusal(name, f"byte {done + error.start} is not valid {codec} (ingest.encoding); declare the "
                                f"file's real encoding") from None


def strip_end(line: bytes) -> bytes:
    """A line without its line break."""
    if line.endswith(b"\r\n"):
        return line[:-2]
    return line[:-1] if line.endswith((b"\n", b"\r")) else line


def is_clean(data: bytes) -> bool:
    """True when ``data`` is valid UTF-8 without NUL bytes or encoded surrogates."""
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def shown(data: bytes) -> str:
    """Bytes as text: UTF-8, invalid bytes and NUL as ``\\xNN`` (never U+FFFD)."""
    return data.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


# --------------------------------------------------------------------------------------------
# CSV (RFC 4180)
# --------------------------------------------------------------------------------------------

class _Feed:
    """The line iterator under ``csv.reader``: remembers the lines a record took, can push back."""

    def __init__(self, lines: Iterator[tuple[int | None, bytes]]):
        self.lines, self.back, self.taken, self.pulled = lines, deque(), [], 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        item = self.back.popleft() if self.back else next(self.lines)
        self.taken.append(item)
        self.pulled += 1
        return item[1].decode("utf-8", "surrogateescape")


def csv_records(
    lines: Iterable[tuple[int | None, bytes]], *, sep: str = ",", expected: int | None = None,
) -> Iterator[Record]:
    """RFC 4180 records of a file's lines (from :func:`file_lines`).

    ``expected`` is the number of fields of a record (None: the first record's count, which
    is then the header or first row). A record with another count is ``unparsable_line`` with
    its fields kept as read; a quoted field left open quarantines only the line where it
    opened, and reading resumes at the next line. Blank lines are not records.
    """
    parser = CsvParser(lines, sep=sep, expected=expected)
    while (record := parser.next_record()) is not None:
        yield record


class CsvParser:
    """The RFC 4180 reader behind :func:`csv_records`, one record at a time, with its line source
    open to a caller: :meth:`next_line` / :meth:`push_back` let a faster reader take lines that it
    can read itself (lines without a quote, at a record boundary) and hand the rest back.

    ``row`` is the number of records returned so far; a caller that reads records itself adds
    them with :meth:`count`. ``expected`` is set by the first record read with fields.
    """

    def __init__(self, lines: Iterable[tuple[int | None, bytes]], *, sep: str = ",", expected: int | None = None):
        self.feed, self.sep, self.expected, self.row = _Feed(iter(lines)), sep, expected, 0
        self.reader = self._new_reader()

    def _new_reader(self):
        return csv.reader(self.feed, delimiter=self.sep, quotechar='"', doublequote=True, strict=True)

    def take_pending(self) -> list[tuple[int | None, bytes]]:
        """The lines handed back (or left by a broken quote) that wait to be read, taken out of the parser."""
        lines = list(self.feed.back)
        self.feed.back.clear()
        self.feed.pulled += len(lines)
        return lines

    def push_back(self, lines: Sequence[tuple[int | None, bytes]]) -> None:
        """Lines taken from the parser that the CSV reader must read next, in order."""
        self.feed.back.extendleft(reversed(lines))
        self.feed.pulled -= len(lines)

    def records_over(self, lines: int) -> list[Record]:
        """Records read until ``lines`` more lines are consumed (the last record may take more)."""
        mark, records = self.feed.pulled, []
        while self.feed.pulled - mark < lines and (record := self.next_record()) is not None:
            records.append(record)
        return records

    @property
    def pending(self) -> bool:
        """True when lines handed back (or left by a broken quote) wait to be read."""
        return bool(self.feed.back)

    def count(self, records: int) -> int:
        """Number ``records`` read by the caller; returns the row number of the first of them."""
        first, self.row = self.row + 1, self.row + records
        return first

    def next_record(self) -> Record | None:
        """The next record (blank lines skipped), or None at the end of the input."""
        while True:
            self.feed.taken = []
            try:
                fields = next(self.reader)
            except StopIteration:
                return None
            except csv.Error:
                fields = None
            taken = self.feed.taken
            if fields == [] or (fields is not None and len(taken) == 1 and not taken[0][1].strip()):
                continue  # a blank line
            if self.expected is None and fields is not None:
                self.expected = len(fields)
            if fields is None or (len(taken) > 1 and len(fields) != self.expected):
                # A quote that never closes (or closes a later line's quote): only its own line is bad.
                self.push_back(taken[1:])
                taken, fields = taken[:1], None
                self.reader = self._new_reader()
            self.row += 1
            return _csv_record(self.row, taken, fields, self.expected)


def _csv_record(row: int, taken: list, fields: list | None, expected: int) -> Record:
    data = b"".join(line for _, line in taken)
    data = strip_end(data)
    offset = taken[0][0]
    if not is_clean(data):
        parts = None if fields is None else [_shown_field(f) for f in fields]
        return Record(row, offset, shown(data), parts, ENCODING)
    if fields is None or len(fields) != expected:
        return Record(row, offset, data.decode("utf-8"), fields, UNPARSABLE)
    return Record(row, offset, data.decode("utf-8"), fields, None)


def _shown_field(value: str) -> str:
    return shown(value.encode("utf-8", "surrogateescape"))


def header_index(header: Sequence[str], needed: Sequence[str], name: str) -> list[int | None]:
    """Position of each needed column in a file's header (matched by name; order and extra columns free).

    Raises :class:`FileRefusal` naming the missing columns.
    """
    position: dict[str, int] = {}
    for i, column in enumerate(header):
        position.setdefault(column.strip().lstrip("\ufeff"), i)
    missing = [c for c in needed if c not in position]
    if missing:
        raise FileRefusal(name, f"the header lacks the column(s) {missing}; it has {list(header)}")
    return [position[c] for c in needed]


# --------------------------------------------------------------------------------------------
# Line formats: 5-core and JSON lines
# --------------------------------------------------------------------------------------------

def plain_records(lines: Iterable[tuple[int | None, bytes]]) -> Iterator[tuple[Record, bytes]]:
    """(record, line bytes) for every non-blank line; ``reason`` is ``encoding`` for a dirty line."""
    row = 0
    for offset, line in lines:
        data = strip_end(line)
        if not data.strip():
            continue
        row += 1
        if not is_clean(data):
            yield Record(row, offset, shown(data), None, ENCODING), data
        else:
            yield Record(row, offset, data.decode("utf-8"), None, None), data


def five_core_fields(data: bytes) -> list[str] | None:
    """``[user, item, item, ...]`` of a 5-core line, or None when it is not one (fewer than two
    whitespace-separated tokens, or a comma / semicolon in it). Linear in the line's length."""
    if b"," in data or b";" in data:
        return None
    tokens = data.split()
    if len(tokens) < 2:
        return None
    return [t.decode("utf-8") for t in tokens]


class _Number(str):
    """A JSON number, kept as the text it was written with."""


class _DuplicateKey(ValueError):
    pass


def _pairs(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def json_fields(text: str, columns: Sequence[str], kinds: Sequence[str]) -> tuple[list | None, str | None]:
    """(values of ``columns``, reason) of one JSON line.

    ``kinds`` says per column what it must hold: ``id`` (a string or a number), ``number`` (a
    JSON number) or ``any`` (objects and arrays become JSON text). A number keeps the text it was
    written with; a missing key or null is None. Reasons: ``unparsable_line`` (not a JSON object,
    NaN/Infinity), ``duplicate_key``, ``wrong_type`` (an object, array or boolean as an id; a
    string as a number).
    """
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_int=_Number, parse_float=_Number,
                           parse_constant=_no_constant)
    except _DuplicateKey:
        return None, DUPLICATE_KEY
    except (ValueError, RecursionError):
        return None, UNPARSABLE
    if not isinstance(value, dict):
        return None, UNPARSABLE
    out, reason = [], None
    for column, kind in zip(columns, kinds):
        item = value.get(column)
        text_value, ok = _json_value(item, kind)
        reason = reason or (None if ok else WRONG_TYPE)
        out.append(text_value)
    return out, reason


def _json_value(item, kind: str) -> tuple[str | None, bool]:
    if item is None:
        return None, True
    if isinstance(item, _Number):
        return str(item), True
    if isinstance(item, bool):
        return ("true" if item else "false"), kind == "any"
    if isinstance(item, str):
        return item, kind != "number"
    return json.dumps(_plain(item), ensure_ascii=False, separators=(",", ":")), kind == "any"


def _plain(item):
    """A parsed JSON value with its numbers as numbers again (to write nested values back as JSON)."""
    if isinstance(item, _Number):
        return json.loads(item)
    if isinstance(item, dict):
        return {k: _plain(v) for k, v in item.items()}
    if isinstance(item, list):
        return [_plain(v) for v in item]
    return item


# --------------------------------------------------------------------------------------------
# Strict integer ids
# --------------------------------------------------------------------------------------------

INT64_MAX = 2**63 - 1


def integer_id_reason(value: str | None) -> str | None:
    """None for an integer id (ASCII digits, at most int64), ``bad_id`` or ``overflow`` otherwise.

    A missing value is None here (it is ``missing_*``, checked first). Mirrors the Spark check in
    :func:`recaug_spark.stages.ingest.check_events` (pure version for tests and tools).
    """
    if value is None:
        return None
    token = value.strip()
    if not token or not token.isascii() or not token.isdigit():
        return "bad_id"
    return "overflow" if int(token) > INT64_MAX else None
