"""The byte-level parser of text sources (recaug_spark/parsing.py), without Spark.

Tiny inputs with known answers for each class of issue 24 (size, encodings, RFC 4180, corrupt
files, strict ids, JSON shapes), and a property test: random bytes, quoting and line endings
never crash the parser, every input byte belongs to exactly one record or a blank line, and an
accepted record's text is the source's bytes.
"""

from __future__ import annotations

import gzip
import io

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from recaug_spark.parsing import (
    FileRefusal,
    csv_records,
    file_lines,
    five_core_fields,
    header_index,
    integer_id_reason,
    json_fields,
    plain_records,
    refusal_message,
)


def lines_of(data: bytes, encoding=None):
    return file_lines(io.BufferedReader(io.BytesIO(data)), "f.csv", encoding)


def records(data: bytes, **kw):
    return list(csv_records(lines_of(data), **kw))


def test_rfc4180_quotes_line_breaks_and_a_broken_quote_that_only_costs_its_own_line():
    data = b'a,b\n1,"x, ""y""\r\nz"\n"broken,2\n3,4\n\n5,6'
    got = [(r.row, r.offset, r.fields, r.reason) for r in records(data)]
    assert got == [
        (1, 0, ["a", "b"], None),
        (2, 4, ["1", 'x, "y"\r\nz'], None),  # delimiter, doubled quote and CRLF inside one field
        (3, 20, None, "unparsable_line"),  # the quote never closes: only this line is lost
        (4, 30, ["3", "4"], None),  # reading resumes at the next line
        (5, 35, ["5", "6"], None),  # the blank line is no record; no final newline is fine
    ]


def test_huge_records_are_linear_and_intact():
    field = b"x" * (64 << 20)
    (_, record) = records(b"a,b\n1," + field + b"\n")
    assert record.fields[1] == field.decode() and record.reason is None  # a 64 MiB field stays intact
    wide = b",".join(b"%d" % i for i in range(100_000))
    (_, long_) = records(b"a,b\n" + wide + b"\n")
    assert long_.reason == "unparsable_line" and len(long_.fields) == 100_000  # one record, not the file
    line = b"1 " + b" ".join(b"%d" % i for i in range(1_000_000))
    assert len(five_core_fields(line)) == 1_000_001


def test_encoding_is_checked_never_replaced():
    got = [(r.raw, r.reason) for r in records(b"a,b\n1,\xff\n2,\x00\n3,ok\n")]
    assert got == [("a,b", None), ("1,\\xff", "encoding"), ("2,\\x00", "encoding"), ("3,ok", None)]
    assert "\ufffd" not in "".join(r.raw for r in records(b"a\n\xc3\x28\n"))
    assert [r.fields for r in records(b"\xef\xbb\xbfa,b\n1,2\n")] == [["a", "b"], ["1", "2"]]  # BOM skipped
    for data, encoding in (("a,b\n1,é\n".encode("utf-16"), None), ("a,b\n1,é\n".encode("latin-1"), "latin-1"),
                           ("a,b\n1,é\n".encode("utf-16-le"), "utf-16-le")):
        assert [r.fields for r in csv_records(lines_of(data, encoding))] == [["a", "b"], ["1", "é"]]
    with pytest.raises(FileRefusal, match="looks like UTF-16.*ingest.encoding"):
        records("a,b\n1,2\n".encode("utf-16-le"))


@pytest.mark.parametrize("data, problem", [
    (gzip.compress(b"a,b\n1,2\n")[:-6], "truncated or corrupt"),
    (gzip.compress(b"a,b\n1,2\n")[:-8] + b"\0\0\0\0" + gzip.compress(b"a,b\n1,2\n")[-4:], "truncated or corrupt"),
    (b"", "empty"),
    (b"PAR1\x15\x04", "Parquet"),
    (b"\x00\x01\x02\x00\x07\x00" * 500, "binary data"),
])
def test_corrupt_files_are_one_refusal_naming_the_file(data, problem):
    with pytest.raises(FileRefusal) as error:
        records(data)
    message = refusal_message("Traceback ...\nFileRefusal: " + str(error.value) + "\n  at ...")
    assert message.startswith("f.csv: ") and problem in message


def test_gzip_is_read_by_its_magic():
    assert [r.fields for r in records(gzip.compress(b"a,b\n1,2\n"))] == [["a", "b"], ["1", "2"]]


def test_strict_integer_ids():
    tokens = ["12", "007", "１２", "٣", "-4", "0x1F", "3.5", "NaN", "1e3", "null", str(2**63), str(2**63 - 1)]
    assert [integer_id_reason(t) for t in tokens] == [
        None, None, "bad_id", "bad_id", "bad_id", "bad_id", "bad_id", "bad_id", "bad_id", "bad_id", "overflow", None]


def test_json_shapes():
    cols, kinds = ["u", "p", "a"], ["id", "number", "any"]
    assert json_fields('{"u": 1, "u": 2}', cols, kinds) == (None, "duplicate_key")
    assert json_fields('{"u": {"x": 1}}', cols, kinds)[1] == "wrong_type"  # an object as an id
    assert json_fields('{"u": [1]}', cols, kinds)[1] == "wrong_type"
    assert json_fields('{"u": true}', cols, kinds)[1] == "wrong_type"
    assert json_fields('{"u": "7", "p": "3"}', cols, kinds)[1] == "wrong_type"  # a string as a number
    assert json_fields('{"p": NaN}', cols, kinds) == (None, "unparsable_line")
    assert json_fields('[1]', cols, kinds) == (None, "unparsable_line")
    assert json_fields('{"u": 12345678901234567890, "p": 3.50, "a": {"k": [1.0]}}', cols, kinds) == (
        ["12345678901234567890", "3.50", '{"k":[1.0]}'], None)  # numbers as written, no float rounding


def test_header_matched_by_name():
    assert header_index(["x", "b", "a", ""], ["a", "b"], "f.csv") == [2, 1]
    with pytest.raises(FileRefusal, match=r"f.csv: the header lacks the column\(s\) \['c'\]"):
        header_index(["a", "b"], ["a", "c"], "f.csv")


def test_plain_lines_skip_blanks_and_flag_dirty_bytes():
    got = [(r.row, r.offset, r.raw, r.reason) for r, _ in plain_records(lines_of(b"1 2\r\n  \n3 \xfe\n"))]
    assert got == [(1, 0, "1 2", None), (2, 8, "3 \\xfe", "encoding")]


_PIECES = st.lists(st.sampled_from([b"a", b"1", b",", b'"', b'""', b"\n", b"\r\n", b"\r", b" ", b"\xff", b"\x00",
                                    b"\xc3\xa9", b"x,y"]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(pieces=_PIECES, raw=st.binary(max_size=60))
@example(pieces=[b"\x00"] * 10, raw=b"")  # 10 NULs in 16 bytes: refused as binary data
def test_property_no_crash_every_byte_accounted_accepted_text_verbatim(pieces, raw):
    data = b"h1,h2\n" + b"".join(pieces) + raw
    try:
        got = records(data)
    except FileRefusal as refusal:  # a refused file (binary-looking) is one clear error, never a crash
        # The file starts "h1,h2": never empty, no binary magic, so only NUL bytes in its head (all of
        # it: < 4096 bytes) may get it refused, as binary data (> 10% NULs) or as UTF-16 without a BOM.
        message = str(refusal)
        assert b"\x00" in data, message
        assert ("the file holds binary data (many NUL bytes)" in message and data.count(0) > 0.1 * len(data)
                or "the file looks like UTF-16 text without a byte order mark" in message), message
        return
    offsets = [r.offset for r in got] + [len(data)]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)  # records in order, none twice
    assert data[:offsets[0]].strip() == b""
    for r, end in zip(got, offsets[1:]):
        assert r.reason in (None, "encoding", "unparsable_line")
        if r.reason is None:
            assert len(r.fields) == 2
        if r.reason == "encoding":
            continue  # its text shows invalid bytes as \xNN
        text = r.raw.encode("utf-8")
        assert data[r.offset:r.offset + len(text)] == text  # the record's text is the source's bytes
        # input = accepted + quarantined: between two records only line breaks and blank lines (a
        # line of only ASCII whitespace, \x0b and \x0c included, is blank: text_reader._ASCII_SPACE)
        assert data[r.offset + len(text):end].strip() == b""
