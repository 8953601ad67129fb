"""The augment stage on Spark: real rows kept exactly, provenance, determinism across partitions."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from recaug_spark.config import AugmentConfig, BranchConfig, load_config
from recaug_spark.runs import RunContext
from recaug_spark.schemas import SEQUENCES
from recaug_spark.stages.augment import augment_sequences, run_augment

T0 = dt.datetime(2024, 1, 1)


def sequence_rows(users: int = 40):
    rows = []
    for u in range(users):
        n = 1 + (u * 7) % 13
        items = [f"i{(u * 3 + k * 5) % 50}" for k in range(n)]
        stamps = [T0 + dt.timedelta(minutes=u * 100 + k) for k in range(n)]
        rows.append((f"u{u:03d}", items, stamps, ["view"] * n, [f"u{u:03d}-1"] * n, n))
    return rows


@pytest.fixture(scope="module")
def sequences(spark):
    return spark.createDataFrame(sequence_rows(), SEQUENCES)


BRANCHES = (
    BranchConfig(chain="crop > mask", copies=2),
    BranchConfig(chain="insert", params={"insert": {"rate": 0.3}}),
    BranchConfig(chain="prefixes", max_length=6),
)


def collect(df):
    return sorted(
        (r.sequence_id, r.user_id, tuple(r.item_ids), tuple(r.timestamps), r.origin, r.operator_chain, r.copy)
        for r in df.collect()
    )


def test_output_is_identical_for_1_and_8_partitions(spark, sequences):
    one = augment_sequences(sequences.repartition(1), AugmentConfig(partitions=1, branches=BRANCHES), 7, "r", "h")
    eight = augment_sequences(sequences.repartition(3), AugmentConfig(partitions=8, branches=BRANCHES,
                                                                      arrow_batch_rows=16), 7, "r", "h")
    assert collect(one) == collect(eight)


def test_real_rows_equal_the_input_and_augmented_rows_carry_provenance(spark, sequences):
    out = augment_sequences(sequences, AugmentConfig(branches=BRANCHES), 7, "run-9", "cfg-1")
    real = out.where("origin = 'real'")
    assert sorted((r.user_id, tuple(r.item_ids), tuple(r.timestamps)) for r in real.collect()) == sorted(
        (u, tuple(i), tuple(t)) for u, i, t, *_ in sequence_rows())
    augmented = out.where("origin = 'augmented'").collect()
    assert augmented
    for row in augmented:
        assert row.run_id == "run-9" and row.config_hash == "cfg-1" and row.seed == 7
        assert row.operator_chain in {"crop>mask", "insert", "prefixes"} and row.copy is not None
        assert json.loads(row.params)
        assert row.sequence_id.startswith(row.user_id + "~") and row.length == len(row.item_ids) > 0
    by_chain = {}
    for row in augmented:
        by_chain[row.operator_chain] = by_chain.get(row.operator_chain, 0) + 1
    assert by_chain["crop>mask"] == 2 * 40  # two copies of every user
    assert by_chain["insert"] == 40
    short = [r for r in sequence_rows() if r[5] <= 6]
    assert by_chain["prefixes"] == sum(max(0, n - 2) for *_, n in short)  # targeting: short ones only


def test_augmented_items_come_from_the_user_or_the_catalog(spark, sequences):
    out = augment_sequences(sequences, AugmentConfig(branches=BRANCHES), 7, "r", "h").collect()
    parents = {r[0]: set(r[1]) for r in sequence_rows()}
    catalog = set().union(*parents.values())
    for row in out:
        if row.operator_chain == "crop>mask":
            assert set(row.item_ids) <= parents[row.user_id] | {"[mask]"}
        if row.operator_chain == "insert":
            assert set(row.item_ids) <= catalog


def test_run_augment_writes_a_table_partitioned_by_operator_chain(spark, tmp_path):
    cfg = load_config(overrides=[f"run.warehouse={tmp_path}"])
    ctx = RunContext.create(spark, cfg, run_id="aug")
    ctx.warehouse.write("sequences", spark.createDataFrame(sequence_rows(), SEQUENCES))
    ctx.warehouse.write("items", spark.createDataFrame([("i1",)], "item_id string"))
    result = run_augment(ctx)
    assert result.counts["rows.real"] == 40
    assert result.rows_out == sum(v for k, v in result.counts.items() if k.startswith("rows."))
    only_mask = ctx.warehouse.read("augmented_sequences", filters=[("operator_chain", "=", "mask")])
    assert only_mask.count() == result.counts["rows.mask"]
    assert all("operator_chain=mask" in f for f in only_mask.inputFiles())
    assert run_augment(ctx).skipped
