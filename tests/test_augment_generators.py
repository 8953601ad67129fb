"""Generator augmenters (prehistory, extend, synthetic_user) inside the augment stage, on the toy grammar.

The toy generators (tests/conftest.py) learned "item i is followed by item i + 1"; with ``top_k: 1``
their output is known: the pre-history of a sequence starting at i05 is i02 i03 i04, its extension
after i09 is i10 i11 i12.
"""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pytest
from pyspark.sql import functions as F

from recaug_spark.augment.base import FitContext
from recaug_spark.augment.engine import augment_sequences
from recaug_spark.augment.registry import build
from recaug_spark.config import AugmentConfig, BranchConfig
from recaug_spark.generators.artifacts import ArtifactError
from recaug_spark.schemas import REAL_CHAIN

GREEDY = {"top_k": 1, "k": 3}
BRANCHES = (
    BranchConfig(chain="prehistory", params={"prehistory": GREEDY}, max_length=4),
    BranchConfig(chain="extend", params={"extend": GREEDY}),
    BranchConfig(chain="synthetic_user", params={"synthetic_user": {"top_k": 1, "length": 5}}),
)
START = dt.datetime(2024, 1, 1)


def number(item_id: str) -> int:
    return int(item_id[1:])


def sequences_frame(spark, rows):
    data = [(user, items, [START + dt.timedelta(hours=2 * k) for k in range(len(items))], ["view"] * len(items))
            for user, items in rows]
    return spark.createDataFrame(
        data, "user_id string, item_ids array<string>, timestamps array<timestamp>, event_types array<string>"
    ).withColumn("session_ids", F.lit(None).cast("array<string>"))


@pytest.fixture(scope="module")
def augmented(spark, toy_generators):
    models, refs, rows = toy_generators
    frame = sequences_frame(spark, [r for r in rows if number(r[1][0]) >= 3][:60])
    out = augment_sequences(frame, AugmentConfig(partitions=3, branches=BRANCHES), 7, "r", "h", models_dir=str(models))
    return frame, out.collect(), refs, models


def test_prehistory_prepends_the_predecessors_before_the_first_event(augmented):
    frame, rows, refs, _ = augmented
    real = {r.user_id: r for r in rows if r.origin == REAL_CHAIN}
    pre = [r for r in rows if r.operator_chain == "prehistory"]
    assert pre and all(real[r.user_id].length <= 4 for r in pre)  # targeting: short sequences only
    assert len(pre) == sum(1 for r in real.values() if r.length <= 4)
    for row in pre:
        first = number(real[row.user_id].item_ids[0])
        assert row.item_ids[:3] == [f"i{(first - 3 + j) % 30:02d}" for j in range(3)]
        assert row.item_ids[3:] == real[row.user_id].item_ids
        assert row.timestamps[:4] == sorted(row.timestamps[:4]) and row.timestamps[2] < row.timestamps[3]
        assert row.generator == refs["reverse"].tag and row.origin == "augmented"


def test_extend_appends_the_successors_after_the_last_event(augmented):
    _, rows, refs, _ = augmented
    real = {r.user_id: r for r in rows if r.origin == REAL_CHAIN}
    extended = [r for r in rows if r.operator_chain == "extend"]
    assert len(extended) == len(real)
    for row in extended:
        base = real[row.user_id].item_ids
        last = number(base[-1])
        assert row.item_ids == [*base, *[f"i{(last + j) % 30:02d}" for j in (1, 2, 3)]]
        assert row.timestamps[-3] > row.timestamps[-4] and row.generator == refs["forward"].tag


def test_synthetic_users_are_marked_and_start_from_a_real_first_item(augmented):
    _, rows, refs, _ = augmented
    real = {r.user_id: r for r in rows if r.origin == REAL_CHAIN}
    synthetic = [r for r in rows if r.operator_chain == "synthetic_user"]
    assert len(synthetic) == len(real) and {r.origin for r in synthetic} == {"synthetic"}
    for row in synthetic:
        first = number(real[row.user_id].item_ids[0])
        assert row.item_ids == [f"i{(first + j) % 30:02d}" for j in range(5)] and row.length == 5
        assert row.sequence_id != row.user_id and row.generator == refs["forward"].tag


def test_generated_rows_do_not_depend_on_the_partitioning(spark, augmented):
    frame, rows, _, models = augmented
    one = augment_sequences(frame.repartition(1), AugmentConfig(partitions=1, branches=BRANCHES), 7, "r", "h",
                            models_dir=str(models)).collect()
    assert sorted(map(repr, one)) == sorted(map(repr, rows))


def test_a_model_of_another_vocabulary_or_none_fails_at_fit(spark, toy_generators, tmp_path):
    models, _, _ = toy_generators
    other = sequences_frame(spark, [("x", ["i01", "zz-new-item"])])
    op = build("extend")
    with pytest.raises(ArtifactError, match="another item vocabulary"):
        op.fit(FitContext(other, models_dir=str(models)))
    shutil.rmtree(tmp_path / "empty", ignore_errors=True)
    with pytest.raises(ArtifactError, match="recaug fit"):
        op.fit(FitContext(other, models_dir=str(tmp_path / "empty")))


@pytest.mark.parametrize("name", ["prehistory", "extend", "synthetic_user"])
def test_a_batch_where_the_branch_targets_nobody_gives_an_empty_edit(spark, toy_generators, name):
    from recaug_spark.augment.base import Draws
    from recaug_spark.augment.batch import SequenceBatch

    models, _, rows = toy_generators
    op = build(name)
    state = op.fit(FitContext(sequences_frame(spark, rows), models_dir=str(models)))
    empty = SequenceBatch.from_lists(np.zeros(0, dtype=np.uint64), [])
    edit = op.plan(empty, Draws(1, name, empty.keys), state)
    assert list(edit.offsets) == [0] and len(edit.positions) == 0
