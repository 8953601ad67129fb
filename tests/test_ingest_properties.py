"""Property tests of the JSON-lines and 5-core readers (recaug_spark/text_reader.py over
recaug_spark/parsing.py), without Spark.

Hypothesis builds files line by line, each line with the answer it must get: well-formed records
(accepted, values as written), duplicate keys, wrong shapes, invalid UTF-8, raw NUL bytes, huge
lines, bytes that are not a record at all; joined by any line ending, with blank lines between.
Checked on every file: no crash (a refused file is one FileRefusal), exactly one output row per
non-blank line and none for a blank one (count-exact), every row accepted or quarantined with a
known reason, the expected reason where the line has one, and an accepted line's text verbatim.
"""

from __future__ import annotations

import codecs
import io
import json

from hypothesis import example, given, settings
from hypothesis import strategies as st

from recaug_spark.parsing import FileRefusal, integer_id_reason
from recaug_spark.text_reader import TextSpec, stream_rows

READING_REASONS = {"encoding", "unparsable_line", "duplicate_key", "wrong_type"}
ANY = "any"  # a line whose reason is not predicted here (random bytes): accepted or any reading reason
JSON_SPEC = TextSpec(kind="json", columns=("user_id", "item_id", "price"), kinds=("id", "id", "number"))
LINES_SPEC = TextSpec(kind="lines")
ENDINGS = st.sampled_from([b"\n", b"\r\n", b"\r"])
BLANKS = st.sampled_from([b"", b" ", b"\t", b"  \t "])


BINARY_STARTS = (b"PAR1", b"PK\x03\x04", b"BZh", b"\xfd7zXZ", b"7z\xbc\xaf")
BOM_OR_GZIP = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, b"\x1f\x8b")


def _rows(data: bytes, spec: TextSpec) -> list[tuple] | None:
    """The reader's rows of ``data``, or None when the file is refused: only an empty file, a head
    with NUL bytes (binary data, UTF-16 without a BOM) or binary bytes after a format's magic may be."""
    try:
        return list(stream_rows(io.BufferedReader(io.BytesIO(data)), "f", spec))
    except FileRefusal as refusal:
        binary_start = data.startswith(BINARY_STARTS) and not _plain_text(data[:4096])
        assert not data or b"\x00" in data[:4096] or binary_start, refusal
        return None


def _plain_text(head: bytes) -> bool:
    """UTF-8 without control bytes but tab, line breaks and form feeds (a character cut at the end allowed)."""
    if any(b < 32 and b not in b"\t\n\x0b\x0c\r" or b == 127 for b in head):
        return False
    return head.decode("utf-8", "ignore").encode("utf-8") in (head, head[:-1], head[:-2], head[:-3])


def _file(draw, line_strategy) -> tuple[bytes, list]:
    """(file bytes, expected answers of its non-blank lines in order)."""
    parts, expected = [], []
    for line, answer in draw(st.lists(line_strategy, max_size=12)):
        if draw(st.booleans()):
            parts.append(draw(BLANKS) + draw(ENDINGS))  # a blank line: no record
        parts.append(line + draw(ENDINGS))
        expected.append(answer)
    if parts and draw(st.booleans()):
        parts[-1] = parts[-1].rstrip(b"\r\n")  # no line break at the end of the file
    data = b"".join(parts)
    if data.startswith(BOM_OR_GZIP):  # read as a BOM or gzip by design (tests/test_ingest_parsing.py)
        data = b"\n" + data
    return data, expected


def _not_a_record(draw) -> bytes:
    """Random bytes on one line (never blank): a line whose answer is not predicted here."""
    line = draw(st.binary(min_size=1, max_size=40)).replace(b"\n", b"").replace(b"\r", b"")
    return line if line.strip() else b"x" + line


# --------------------------------------------------------------------------------------------
# JSON lines
# --------------------------------------------------------------------------------------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_ID = st.one_of(_TEXT, st.integers(min_value=-(2**70), max_value=2**70))
_NUMBER = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False, allow_infinity=False))
_SHAPE = st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(_TEXT, st.integers(), max_size=2),
                   st.booleans())


@st.composite
def _json_line(draw) -> tuple[bytes, object]:
    kind = draw(st.sampled_from(["good", "good", "duplicate", "wrong_id", "string_price", "bad_utf8", "nul", "huge",
                                 "not_json", "bytes"]))
    record = {"user_id": draw(_ID), "item_id": draw(_ID)}
    if draw(st.booleans()):
        record["price"] = draw(_NUMBER)
    if draw(st.booleans()):
        record["extra"] = draw(st.one_of(_TEXT, _SHAPE))
    if kind == "huge":
        record["extra"] = "x" * draw(st.integers(100_000, 400_000))
    if kind == "wrong_id":
        record["user_id"] = draw(_SHAPE)
    if kind == "string_price":
        record["price"] = draw(_TEXT)
    text = json.dumps(record, ensure_ascii=draw(st.booleans()))
    if kind == "duplicate":
        key = draw(st.sampled_from(sorted(record)))
        text = text[:-1] + f", {json.dumps(key)}: 1" + "}"
    line = text.encode("utf-8")
    if kind in ("bad_utf8", "nul"):
        cut = draw(st.integers(0, len(line)))
        line = line[:cut] + (b"\xff" if kind == "bad_utf8" else b"\x00") + line[cut:]
    answers = {"good": ("accepted", record), "huge": ("accepted", record), "duplicate": "duplicate_key",
               "wrong_id": "wrong_type", "string_price": "wrong_type", "bad_utf8": "encoding", "nul": "encoding"}
    if kind == "not_json":
        return text[:-1].encode("utf-8"), "unparsable_line"  # the closing brace cut off
    if kind == "bytes":
        return _not_a_record(draw), ANY
    return line, answers[kind]


def _json_text(value) -> str | None:
    """What the reader keeps of a JSON value: a string as is, a number as written."""
    return None if value is None else value if isinstance(value, str) else json.dumps(value)


@st.composite
def _json_file(draw):
    return _file(draw, _json_line())


@settings(max_examples=200, deadline=None)
@given(_json_file())
@example((b'{"user_id": "u", "item_id": 1, "price": 2.5}\n\x00\x00\n{"user_id": "u", "user_id": "v"}', [
    ("accepted", {"user_id": "u", "item_id": 1, "price": 2.5}), "encoding", "duplicate_key"]))
def test_json_lines_every_line_accepted_or_quarantined_count_exact(file):
    data, expected = file
    rows = _rows(data, JSON_SPEC)
    if rows is None:
        return
    lines = [line for line in data.splitlines() if line.strip()]
    assert len(rows) == len(lines) == len(expected)  # one row per non-blank line, none for a blank one
    for (user, item, price, source, raw, reason, row, offset), line, answer in zip(rows, lines, expected):
        assert source == "f" and reason in READING_REASONS | {None}
        assert data[offset:offset + len(line)] == line  # the row points at its line
        if reason is None:
            assert raw.encode("utf-8") == line  # accepted text verbatim
        if answer == ANY:
            continue
        if isinstance(answer, tuple):
            record = answer[1]
            assert reason is None, (reason, line[:200])
            assert (user, item, price) == tuple(_json_text(record.get(k)) for k in ("user_id", "item_id", "price"))
        else:
            assert reason == answer, (line[:200], reason)
    assert [r[6] for r in rows] == list(range(1, len(rows) + 1))  # logical row numbers


# --------------------------------------------------------------------------------------------
# 5-core lines
# --------------------------------------------------------------------------------------------

_TOKEN = st.one_of(
    st.integers(0, 2**64).map(str),
    st.text(st.characters(blacklist_categories=("Cs", "Cc", "Z"), blacklist_characters=",;\x85\ufeff"), min_size=1,
            max_size=8),
)


@st.composite
def _5core_line(draw) -> tuple[bytes, object]:
    kind = draw(st.sampled_from(["good", "good", "huge", "one_token", "comma", "bad_utf8", "nul", "bytes"]))
    tokens = [draw(_TOKEN) for _ in range(draw(st.integers(2, 8)))]
    if kind == "huge":
        tokens = ["7", *map(str, range(draw(st.integers(10_000, 100_000))))]
    separator = draw(st.sampled_from([b" ", b"\t", b"  "]))
    line = separator.join(t.encode("utf-8") for t in tokens)
    if kind == "one_token":
        return tokens[0].encode("utf-8"), "unparsable_line"
    if kind == "comma":
        return line + b",1", "unparsable_line"
    if kind in ("bad_utf8", "nul"):
        cut = draw(st.integers(0, len(line)))
        return line[:cut] + (b"\xfe" if kind == "bad_utf8" else b"\x00") + line[cut:], "encoding"
    if kind == "bytes":
        return _not_a_record(draw), ANY
    return line, ("accepted", tokens)


@st.composite
def _5core_file(draw):
    return _file(draw, _5core_line())


@settings(max_examples=200, deadline=None)
@given(_5core_file())
@example((b"1 10 11\n\xff 2\n3\n4 5,6\r\n8 -4 0x1F 5", [
    ("accepted", ["1", "10", "11"]), "encoding", "unparsable_line", "unparsable_line",
    ("accepted", ["8", "-4", "0x1F", "5"])]))
@example((b"BZh1 2 3\nPAR1 4\n", [("accepted", ["BZh1", "2", "3"]), ("accepted", ["PAR1", "4"])]))  # not bzip2
def test_5core_lines_every_line_accepted_or_quarantined_and_events_count_exact(file):
    data, expected = file
    rows = _rows(data, LINES_SPEC)
    if rows is None:
        return
    lines = [line for line in data.splitlines() if line.strip()]
    assert len(rows) == len(lines) == len(expected)
    events = ids = 0
    for (fields, source, raw, reason, row, offset), line, answer in zip(rows, lines, expected):
        assert reason in {None, "encoding", "unparsable_line"}
        assert (fields is None) == (reason is not None)  # a line is split, or quarantined whole with a reason
        assert data[offset:offset + len(line)] == line
        if reason is None:
            assert raw.encode("utf-8") == line and fields == [t.decode() for t in line.split()] and len(fields) >= 2
            events += len(fields) - 1
            ids += sum(integer_id_reason(t) is None for t in fields[1:])
        if answer != ANY:
            assert (reason is None and fields == answer[1]) if isinstance(answer, tuple) else reason == answer
    # events: one per item token of an accepted line; each then an integer id or bad_id / overflow
    assert events == sum(len(a[1]) - 1 for a, r in zip(expected, rows) if isinstance(a, tuple) or r[3] is None)
    assert ids <= events
