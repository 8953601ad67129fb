"""The pyarrow.csv fast path of the CSV reader (recaug_spark/text_reader.py, ``csv_batches``) gives
exactly the rows of the per-record parser (``stream_rows``): same values, raw text, reasons, row
numbers and byte offsets, in the same order — on a mixed file with every kind of trouble, and on
random files (hypothesis). Without Spark."""

from __future__ import annotations

import gzip
import io

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from recaug_spark import parsing, text_reader
from recaug_spark.parsing import FileRefusal
from recaug_spark.text_reader import TextSpec, stream_batches, stream_rows

SPEC = TextSpec(kind="csv", columns=("user_id", "item_id", "price"), header=True)


def _both(data: bytes, spec: TextSpec = SPEC) -> tuple[list, list, dict]:
    """(rows of the per-record parser, rows of the fast path, the fast path's stats)."""
    slow = [tuple(r) for r in stream_rows(io.BufferedReader(io.BytesIO(data)), "f.csv", spec)]
    stats: dict = {}
    fast = []
    for batch in stream_batches(io.BufferedReader(io.BytesIO(data)), "f.csv", spec, stats=stats):
        fast += [tuple(row.values()) for row in batch.to_pylist()]
    return slow, fast, stats


MIXED = b"".join([
    b"price,item_id,user_id,extra\n",  # row 1: the header, columns in another order
    b"1.5,i1,u1,x\n2.5,i2,u2,y\r\n",  # clean (\n and \r\n)
    b'3.5,"i3, big",u3,"say ""hi"""\n',  # quotes, even count: the fast path checks them with csv
    b'4.5,"i4\nsecond line",u4,z\n',  # a quoted line break: the per-record parser
    b"\n   \n",  # blank lines: no record
    b'5.5,"broken,u5,z\n',  # a quote that never closes: only this line is bad
    b'6.5,"i6"x,u6,z\n',  # a quote RFC 4180 does not allow (pyarrow would read i6x)
    b"7.5,i7\xff,u7,z\n",  # invalid UTF-8
    b"8.5,i8,u8\x00,z\n",  # NUL
    b"9.5,i9,u9\n",  # a field short
    b"10.5,i10,u10,z\r",  # an old Mac line end
    b"11.5,i11,u11,z\n" * 7,  # a longer clean run
    b"12.5,i12,u12,z",  # no line break at the end
])


@pytest.mark.parametrize("batch_rows, chunk", [(3, 1 << 20), (4096, 1 << 20), (4096, 7), (2, 16)])
def test_fast_path_rows_equal_the_per_record_parser_on_a_mixed_file(monkeypatch, batch_rows, chunk):
    monkeypatch.setattr(text_reader, "_BATCH_ROWS", batch_rows)  # runs cut short too
    monkeypatch.setattr(parsing, "_CHUNK", chunk)  # blocks of a few lines, lines cut across chunks
    slow, fast, stats = _both(MIXED)
    assert fast == slow
    assert len(slow) == 18 and stats["fast"] > 0 and stats["slow"] > 0
    reasons = {row[1]: row[5] for row in slow if row[1]}
    assert (reasons["i1"], reasons['i3, big'], reasons["i4\nsecond line"], reasons["i7\\xff"]) == (
        None, None, None, "encoding")
    assert [row[5] for row in slow if row[4][:3] in ("6.5", "8.5", "9.5")] == [
        "unparsable_line", "encoding", "unparsable_line"]


def test_fast_path_on_gzip_bom_and_a_declared_encoding():
    body = "user_id,item_id,price\nu1,café,1\nu2,\"thé, vert\",2\n".encode("utf-8")
    for data, spec in ((gzip.compress(body), SPEC), (b"\xef\xbb\xbf" + body, SPEC),
                       (body.decode("utf-8").encode("latin-1"), TextSpec(kind="csv", columns=SPEC.columns,
                                                                         encoding="latin-1"))):
        slow, fast, stats = _both(data, spec)
        assert fast == slow and [r[1] for r in slow] == ["café", "thé, vert"] and stats.get("fast") == 2


def test_fast_path_without_a_header():
    spec = TextSpec(kind="csv", columns=("_c0", "_c1"), header=False)
    slow, fast, _ = _both(b"a,b\nc,d\ne\nf,g\n", spec)
    assert fast == slow and [r[4] for r in slow] == [None, None, "unparsable_line", None]


_PIECES = st.lists(st.sampled_from([b"a", b"1", b",", b'"', b'""', b"\n", b"\r\n", b"\r", b" ", b"\xff", b"\x00",
                                    b"\xc3\xa9", b"x,y", b"u,i,p\n", b'"a,b"']), max_size=60)


@settings(max_examples=300, deadline=None)
@given(pieces=_PIECES, batch_rows=st.sampled_from([1, 2, 4096]), chunk=st.sampled_from([5, 13, 1 << 20]))
@example(pieces=[b"\x00"] * 20, batch_rows=4096, chunk=1 << 20)  # 20 NULs in 42 bytes: always the binary refusal
def test_property_fast_path_equals_the_per_record_parser(pieces, batch_rows, chunk):
    data = b"user_id,item_id,price\n" + b"".join(pieces)
    original = text_reader._BATCH_ROWS, parsing._CHUNK
    text_reader._BATCH_ROWS, parsing._CHUNK = batch_rows, chunk
    try:  # each path on its own: a file one of them refuses must be refused by the other, for the same reason
        slow = _refusal_or(lambda: [tuple(r) for r in stream_rows(io.BufferedReader(io.BytesIO(data)), "f.csv", SPEC)])
        fast = _refusal_or(lambda: [tuple(row.values()) for batch in stream_batches(
            io.BufferedReader(io.BytesIO(data)), "f.csv", SPEC) for row in batch.to_pylist()])
    finally:
        text_reader._BATCH_ROWS, parsing._CHUNK = original
    assert fast == slow


def _refusal_or(read):
    """The rows ``read`` returns, or ("refused", message) when it refuses the file."""
    try:
        return read()
    except FileRefusal as refusal:
        return ("refused", str(refusal))
