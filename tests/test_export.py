"""``recaug export``: augmented sequence tables → long Parquet, ``user item item …`` lines, RecBole
``.inter`` files. Tiny Delta tables are written here with deltalake in the project's schema, so
every test but the last needs no Spark."""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import CommitProperties, write_deltalake

from recaug_spark.delta import commit_metadata
from recaug_spark.delta.stats import arrow_schema
from recaug_spark.export import (
    RECBOLE_HEADER,
    ExportError,
    ExportOptions,
    augmented_table_metadata,
    export_table,
)
from recaug_spark.schemas import AUGMENTED_SEQUENCES

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
M = "[mask]"


def row(sid, items, origin="real", chain="real", negatives=None, devices=True):
    n = len(items)
    real = origin == "real"
    return dict(
        sequence_id=sid, user_id=sid.split("~")[0], item_ids=items,
        timestamps=[T0 + dt.timedelta(minutes=10 * i) for i in range(n)],
        event_types=["purchase" if i == n - 1 else "view" for i in range(n)],
        session_ids=[f"{sid}-s{i // 2}" for i in range(n)], countries=None,
        devices=[f"dev{i}" for i in range(n)] if devices else None, negative_item_ids=negatives, length=n,
        origin=origin, operator_chain=chain, branch=None if real else 0, copy=None if real else 0,
        params=None if real else json.dumps({chain: {}}), seed=7, generator=None, run_id="run-1", config_hash="h1",
    )


ROWS = [
    row("u1", ["a", "b", "c", "d"]),
    row("u2", ["e"]),
    row("u3", ["f", "g"]),
    row("u5~0:0", ["x", M, "y"], "augmented", "mask", devices=False),  # a null list before aligned ones
    row("u1~0:0", ["a", M, "c", M], "augmented", "mask", negatives=["n0", "n1", "n2", "n3"]),
    row("u2~0:0", [M], "augmented", "mask"),
    row("u3~0:0", ["f", M], "augmented", "mask"),
    row("u3~1:0", ["g"], "augmented", "crop"),
    row("s9~2:0", ["h", "a", "b"], "synthetic", "synthetic_user", devices=False),
]
# What each row is once its mask tokens are dropped: (items, event types, devices, negatives).
DROPPED = {
    "u1": (["a", "b", "c", "d"], ["view", "view", "view", "purchase"], ["dev0", "dev1", "dev2", "dev3"], None),
    "u2": (["e"], ["purchase"], ["dev0"], None),
    "u3": (["f", "g"], ["view", "purchase"], ["dev0", "dev1"], None),
    "u5~0:0": (["x", "y"], ["view", "purchase"], None, None),
    "u1~0:0": (["a", "c"], ["view", "view"], ["dev0", "dev2"], ["n0", "n2"]),
    "u3~0:0": (["f"], ["view"], ["dev0"], None),
    "u3~1:0": (["g"], ["purchase"], ["dev0"], None),
    "s9~2:0": (["h", "a", "b"], ["view", "view", "purchase"], None, None),
}


def make_table(path: Path, rows=ROWS, metadata: dict | None = None, mode: str = "error") -> str:
    table = pa.Table.from_pylist(rows, schema=arrow_schema(AUGMENTED_SEQUENCES))
    props = CommitProperties(custom_metadata=metadata) if metadata else None
    write_deltalake(str(path), table, partition_by=["operator_chain"], mode=mode, commit_properties=props)
    return str(path)


@pytest.fixture
def table(tmp_path) -> str:
    return make_table(tmp_path / "augmented_sequences", metadata=augmented_table_metadata(M))


def read_lines(path) -> dict[str, list[str]]:
    """A plain ``user item item …`` reader, as the S3-Rec / CL4SRec / ICLRec data code reads its files."""
    sequences = {}
    with open(path) as f:
        for line in f:
            user, items = line.strip().split(" ", 1)
            sequences[user] = items.split(" ")
    return sequences


def read_recbole(path) -> tuple[str, dict[str, list[tuple[float, str]]]]:
    """A ``.inter`` file read as RecBole does: tab-separated, typed header, rows sorted by (user, time)."""
    with open(path) as f:
        header = f.readline().rstrip("\n")
        names = [h.split(":")[0] for h in header.split("\t")]
        rows = [dict(zip(names, line.rstrip("\n").split("\t"))) for line in f]
    by_user = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r["user_id"], float(r["timestamp"]))):
        by_user[r["user_id"]].append((float(r["timestamp"]), r["item_id"]))
    return header, dict(by_user)


def test_lines_round_trip_with_a_plain_reader(table, tmp_path):
    out = tmp_path / "train.txt"
    summary = export_table(table, str(out), ExportOptions("lines"))
    assert read_lines(out) == {sid: v[0] for sid, v in DROPPED.items()}
    assert summary.rows_read == len(ROWS) == summary.rows_written + sum(summary.dropped.values())
    assert dict(summary.dropped) == {"too_short_after_mask_drop": 1}  # u2~0:0 was only a mask token
    assert summary.mask_tokens == 4  # u5~0:0's one, u1~0:0's two, u3~0:0's one (u2~0:0 was not written)
    assert summary.events_written == sum(len(v[0]) for v in DROPPED.values())
    assert dict(summary.written_by_origin) == {"real": 3, "augmented": 4, "synthetic": 1}
    assert summary.mask_token_source == "table metadata"


def test_parquet_long_form_round_trip_keeps_every_column_aligned(table, tmp_path):
    out = tmp_path / "train.parquet"
    export_table(table, str(out), ExportOptions("parquet"))
    long = pq.read_table(out).to_pandas()
    assert list(long.columns)[:4] == ["seq_id", "user_id", "position", "item_id"]
    back = {}
    for sid, group in long.sort_values(["seq_id", "position"]).groupby("seq_id"):
        assert group["position"].tolist() == list(range(len(group)))
        devices = group["device"].tolist()
        negatives = group["negative_item_id"].tolist()
        back[sid] = (group["item_id"].tolist(), group["event_type"].tolist(),
                     None if all(d is None for d in devices) else devices,
                     None if all(n is None for n in negatives) else negatives)
    assert back == DROPPED
    first = long[long.seq_id == "u1~0:0"].sort_values("position")
    # the timestamps of the kept positions 0 and 2, not a renumbering
    assert first["timestamp"].tolist() == [pd_ts(T0), pd_ts(T0 + dt.timedelta(minutes=20))]
    assert set(first["origin"]) == {"augmented"} and set(first["operator_chain"]) == {"mask"}
    assert set(first["params"]) == {json.dumps({"mask": {}})} and set(first["run_id"]) == {"run-1"}
    assert set(long.loc[long.seq_id == "s9~2:0", "user_id"]) == {"s9"}


def pd_ts(value):
    import pandas as pd

    return pd.Timestamp(value)


def test_recbole_inter_round_trip_and_exact_header(table, tmp_path):
    out = tmp_path / "recaug" / "recaug.inter"
    export_table(table, str(out), ExportOptions("recbole"))
    header, by_user = read_recbole(out)
    assert header == RECBOLE_HEADER == "user_id:token\titem_id:token\ttimestamp:float"
    assert {u: [item for _, item in events] for u, events in by_user.items()} == {s: v[0] for s, v in DROPPED.items()}

    event = tmp_path / "event" / "event.inter"
    export_table(table, str(event), ExportOptions("recbole", timestamp="event", origins=("real",)))
    _, by_user = read_recbole(event)
    assert by_user["u1"] == [(T0.timestamp() + 600 * i, item) for i, item in enumerate("abcd")]
    assert set(by_user) == {"u1", "u2", "u3"}


def test_integer_ids_decode_back_to_the_sequences(table, tmp_path):
    from recaug_spark.train.data import Vocabulary

    out = tmp_path / "int.txt"
    summary = export_table(table, str(out), ExportOptions("lines", integer_ids=True))
    vocabulary = Vocabulary.load(summary.vocabulary)
    lines = read_lines(out)
    assert all(i.isdigit() for items in lines.values() for i in items)
    assert {sid: vocabulary.decode(int(i) for i in items) for sid, items in lines.items()} == \
        {sid: v[0] for sid, v in DROPPED.items()}
    assert lines["u1"] == ["1", "2", "3", "4"]  # a..d: the first ids in sorted order

    kept = tmp_path / "int_keep.txt"
    summary = export_table(table, str(kept), ExportOptions("lines", integer_ids=True, mask="keep"))
    mask_index = str(Vocabulary.load(summary.vocabulary).mask_index)
    assert read_lines(kept)["u1~0:0"] == ["1", mask_index, "3", mask_index]
    with pytest.raises(ExportError, match="integer-ids"):
        export_table(table, str(tmp_path / "p.parquet"), ExportOptions("parquet", integer_ids=True))


def test_recbole_file_must_end_in_inter(table, tmp_path):
    with pytest.raises(ExportError, match=r"\.inter"):
        export_table(table, str(tmp_path / "x.tsv"), ExportOptions("recbole"))


def test_mask_keep_and_map(table, tmp_path):
    kept = tmp_path / "keep.txt"
    summary = export_table(table, str(kept), ExportOptions("lines", mask="keep"))
    lines = read_lines(kept)
    assert lines["u1~0:0"] == ["a", M, "c", M] and lines["u2~0:0"] == [M]
    assert summary.mask_tokens == 5 and not summary.dropped

    mapped = tmp_path / "map.txt"
    summary = export_table(table, str(mapped), ExportOptions("lines", mask="map:0"))
    lines = read_lines(mapped)
    assert lines["u1~0:0"] == ["a", "0", "c", "0"] and lines["u2~0:0"] == ["0"] and lines["u1"] == list("abcd")
    assert "mapped" in summary.line()
    for bad in ("map:", "map:a b", "replace"):
        with pytest.raises(ExportError, match="--mask"):
            export_table(table, str(tmp_path / "bad.txt"), ExportOptions("lines", mask=bad))


def test_no_real_keeps_augmented_and_synthetic_rows(table, tmp_path):
    out = tmp_path / "aug.txt"
    summary = export_table(table, str(out), ExportOptions("lines", no_real=True))
    assert set(read_lines(out)) == {"u5~0:0", "u1~0:0", "u3~0:0", "u3~1:0", "s9~2:0"}
    assert summary.dropped["origin=real"] == 3  # counted from the log: the real partition is never opened
    assert summary.rows_read == len(ROWS) == summary.rows_written + sum(summary.dropped.values())
    assert summary.notes() == []


def test_origin_filter_says_when_synthetic_rows_are_left_out(table, tmp_path):
    out = tmp_path / "aug.txt"
    summary = export_table(table, str(out), ExportOptions("lines", origins=("augmented",)))
    assert set(read_lines(out)) == {"u5~0:0", "u1~0:0", "u3~0:0", "u3~1:0"}
    assert summary.dropped["origin=synthetic"] == 1 and summary.dropped["origin=real"] == 3
    assert "synthetic" in summary.notes()[0] and "origin=synthetic 1" in summary.line()
    with pytest.raises(ExportError, match="vocabulary"):
        export_table(table, str(out), ExportOptions("lines", origins=("augmented", "fake")))
    with pytest.raises(ExportError, match="no origin left"):
        export_table(table, str(out), ExportOptions("lines", origins=("real",), no_real=True))


def test_min_length_counts_short_rows_by_reason(table, tmp_path):
    out = tmp_path / "min2.txt"
    summary = export_table(table, str(out), ExportOptions("lines", min_length=2))
    assert set(read_lines(out)) == {"u1", "u3", "u5~0:0", "u1~0:0", "s9~2:0"}
    # u2, u3~1:0 and u2~0:0 were short already; u3~0:0 had 2 items before its mask token went
    assert dict(summary.dropped) == {"too_short": 3, "too_short_after_mask_drop": 1}
    with pytest.raises(ExportError, match="min-length"):
        export_table(table, str(out), ExportOptions("lines", min_length=0))


def test_chains_filter_skips_other_partitions(table, tmp_path):
    out = tmp_path / "crop.txt"
    summary = export_table(table, str(out), ExportOptions("lines", chains=("real", "crop")))
    assert set(read_lines(out)) == {"u1", "u2", "u3", "u3~1:0"}
    assert summary.dropped == {"chain=mask": 4, "chain=synthetic_user": 1}


def test_pinned_version_and_batch_size_do_not_change_the_output(tmp_path):
    uri = make_table(tmp_path / "t", ROWS[:3], augmented_table_metadata(M))
    make_table(tmp_path / "t", ROWS, augmented_table_metadata(M), mode="overwrite")
    v0 = tmp_path / "v0.txt"
    summary = export_table(uri, str(v0), ExportOptions("lines", version=0))
    assert summary.version == 0 and set(read_lines(v0)) == {"u1", "u2", "u3"}
    big, small = tmp_path / "big.parquet", tmp_path / "small.parquet"
    export_table(uri, str(big), ExportOptions("parquet", batch_size=4096))
    export_table(uri, str(small), ExportOptions("parquet", batch_size=1))
    assert pq.read_table(big).equals(pq.read_table(small))


def test_files_written_before_a_column_was_added_read_it_as_nulls(tmp_path):
    schema = arrow_schema(AUGMENTED_SEQUENCES)
    old_schema = pa.schema([f for f in schema if f.name != "negative_item_ids"])
    old = [{k: v for k, v in r.items() if k != "negative_item_ids"} for r in ROWS[:3]]
    uri = str(tmp_path / "evolved")
    write_deltalake(uri, pa.Table.from_pylist(old, schema=old_schema), partition_by=["operator_chain"])
    write_deltalake(uri, pa.Table.from_pylist(ROWS[3:5], schema=schema), partition_by=["operator_chain"],
                    mode="append", schema_mode="merge")
    out = tmp_path / "evolved.parquet"
    export_table(uri, str(out), ExportOptions("parquet"))
    long = pq.read_table(out).to_pandas()
    assert long.loc[long.seq_id == "u1", "negative_item_id"].isna().all()
    assert long.loc[long.seq_id == "u1~0:0", "negative_item_id"].tolist() == ["n0", "n2"]


def test_mask_token_comes_from_the_table_metadata(tmp_path):
    rows = [row("u1", ["a", "<M>", M, "b"]), row("u2", ["c", "d"])]
    uri = make_table(tmp_path / "custom", rows, augmented_table_metadata("<M>"))
    out = tmp_path / "o.txt"
    summary = export_table(uri, str(out), ExportOptions("lines"))
    assert read_lines(out)["u1"] == ["a", M, "b"]  # here "[mask]" is an item: the table says the token is "<M>"
    assert summary.mask_token == "<M>" and summary.mask_tokens == 1

    legacy = make_table(tmp_path / "legacy", rows)  # no metadata: the augmenters' known token
    summary = export_table(legacy, str(out), ExportOptions("lines"))
    assert read_lines(out)["u1"] == ["a", "<M>", "b"] and summary.mask_token_source == "default"


def test_commit_metadata_reads_the_newest_commit_at_or_before_a_version(tmp_path):
    uri = make_table(tmp_path / "t", ROWS[:1], {"recaug.mask_token": "<A>"})
    make_table(tmp_path / "t", ROWS[:1], None, mode="append")  # a commit without metadata (version 1)
    make_table(tmp_path / "t", ROWS[:1], {"userMetadata": json.dumps({"recaug.mask_token": "<B>"})}, mode="append")
    assert commit_metadata(uri, 0) == {"recaug.mask_token": "<A>"}
    assert commit_metadata(uri, 1) == {"recaug.mask_token": "<A>"}
    assert commit_metadata(uri) == {"recaug.mask_token": "<B>"}  # Spark's native writer: JSON userMetadata
    assert commit_metadata(str(tmp_path / "none")) == {}


def test_ids_that_would_break_a_format_fail_and_leave_no_file(tmp_path):
    uri = make_table(tmp_path / "t", [row("u1", ["a b", "c"]), row("u2", ["x\ty", "z"])])
    out = tmp_path / "o.txt"
    with pytest.raises(ExportError, match="whitespace"):
        export_table(uri, str(out), ExportOptions("lines"))
    with pytest.raises(ExportError, match="tab"):
        export_table(uri, str(tmp_path / "r" / "r.inter"), ExportOptions("recbole"))
    assert not out.exists() and not list(tmp_path.glob("**/.*partial*"))
    export_table(uri, str(tmp_path / "ok.parquet"), ExportOptions("parquet"))  # Parquet holds any string
    assert pq.read_table(tmp_path / "ok.parquet").column("item_id").to_pylist() == ["a b", "c", "x\ty", "z"]
    with_null = make_table(tmp_path / "null", [row("u1", ["a", None, "c"])])
    with pytest.raises(ExportError, match="null"):
        export_table(with_null, str(out), ExportOptions("lines"))


def test_tables_without_sequences_are_refused(tmp_path):
    write_deltalake(str(tmp_path / "items"), pa.table({"item_id": ["a"]}))
    with pytest.raises(ExportError, match="sequence_id"):
        export_table(str(tmp_path / "items"), str(tmp_path / "o.txt"), ExportOptions("lines"))


def test_cli_export_prints_the_summary(table, tmp_path):
    from click.testing import CliRunner

    from recaug_spark.cli import main

    out = tmp_path / "cli.txt"
    result = CliRunner().invoke(main, ["export", table, "--format", "lines", "--out", str(out),
                                       "--origins", "augmented", "--min-length", "2"])
    assert result.exit_code == 0, result.output
    assert read_lines(out) == {"u5~0:0": ["x", "y"], "u1~0:0": ["a", "c"]}
    assert "read 9 sequences, wrote 2" in result.output and "origin=synthetic 1" in result.output
    bad = CliRunner().invoke(main, ["export", table, "--format", "lines", "--out", str(out), "--mask", "zap"])
    assert bad.exit_code == 2 and "--mask" in bad.output


def test_export_of_the_pipeline_table(default_run, tmp_path):
    """The augment stage records its token and vocabulary; export reads the real table back exactly."""
    ctx, _ = default_run
    uri = ctx.warehouse.uri("augmented_sequences")
    version = ctx.warehouse.version("augmented_sequences")
    metadata = commit_metadata(uri, version)
    assert metadata["recaug.mask_token"] == M
    assert json.loads(metadata["recaug.origins"]) == ["real", "augmented", "synthetic"]
    items = commit_metadata(ctx.warehouse.uri("augmented_items"))  # augment.items.enabled is true by default
    assert json.loads(items["recaug.origins"]) == ["real", "augmented", "synthetic"]
    assert "recaug.mask_token" not in items
    expected = {}
    for r in ctx.warehouse.read("augmented_sequences", version=version).select("sequence_id", "item_ids").collect():
        items = [i for i in r.item_ids if i != M]
        if items:
            expected[r.sequence_id] = items
    out = tmp_path / "pipeline.txt"
    summary = export_table(uri, str(out), ExportOptions("lines"))
    assert read_lines(out) == expected
    assert summary.mask_tokens > 0 and summary.mask_token_source == "table metadata"
    long = tmp_path / "pipeline.parquet"
    export_table(uri, str(long), ExportOptions("parquet", mask="keep", no_real=True))
    back = pq.read_table(long)
    assert M in set(back.column("item_id").to_pylist()) and "real" not in set(back.column("origin").to_pylist())
