"""Class-balance operators: sampled negatives and oversampled purchases (known answers, keyed draws)."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recaug_spark.augment.balance_ops import (
    NEGATIVE_CONTEXT,
    NegativeState,
    fit_negative_state,
)
from recaug_spark.augment.base import AugmenterError, Draws
from recaug_spark.augment.batch import SequenceBatch, apply_edit
from recaug_spark.augment.registry import build
from recaug_spark.schemas import REAL_CHAIN

CATEGORY = {"a": "shoes", "b": "shoes", "c": "shoes", "d": "bags", "e": "bags", "f": "hats", "g": None}


def negatives(batch, state, seed=42, copy=0, **params):
    """Given a batch and a state, when negatives are sampled, then (output batch, negatives per sequence)."""
    op = build("negative_sample", params)
    out = apply_edit(batch, op.plan(batch, Draws(seed, "neg", batch.keys, copy), state))
    return out, out.lists(out.context[NEGATIVE_CONTEXT])


def oversample(batch, **params):
    out = apply_edit(batch, build("oversample_events", params).plan(batch, Draws(1, "over", batch.keys), None))
    return out


# ---- negative_sample ----

@pytest.mark.parametrize("mode", ["uniform", "popularity", "same_category"])
def test_the_only_item_outside_the_users_sequence_is_every_negative(mode):
    state = NegativeState.build(["a", "b", "c", "x"], [5, 3, 2, 1], ["k", "k", "k", "k"])
    batch = SequenceBatch.from_lists([1, 2], [["a", "b", "c"], ["c", "b", "a", "a"]])
    out, negs = negatives(batch, state, mode=mode, max_rounds=100)  # x is rare: may take many draws
    assert negs == [["x", "x", "x"], ["x", "x", "x", "x"]]
    assert out.to_lists() == batch.to_lists() and out.timestamps_lists() == batch.timestamps_lists()


def test_state_is_sorted_and_keeps_categories_with_a_second_item_only():
    state = NegativeState.build(list("gfedcba"), [1, 1, 0, 2, 1, 1, 2], [CATEGORY[i] for i in "gfedcba"])
    assert state.item_ids.to_pylist() == list("abcdefg")
    assert np.allclose(np.diff(np.concatenate([[0], state.cumulative])), np.array([2, 1, 1, 2, 0, 1, 1]) / 8)
    names = state.category_names.to_pylist()
    assert sorted(names) == ["bags", "shoes"]  # "hats" has one item: no hard negative possible
    by_item = {i: (names[c] if c >= 0 else None) for i, c in zip("abcdefg", state.category_of)}
    assert by_item == {**CATEGORY, "f": None}
    shoes = names.index("shoes")
    members = state.category_items[state.category_indptr[shoes]:state.category_indptr[shoes + 1]]
    assert sorted(state.item_ids.take(members).to_pylist()) == ["a", "b", "c"]


def test_same_category_negatives_share_the_positives_category_and_others_fall_back_to_popularity():
    items = list("abcdefg")
    state = NegativeState.build(items, [2, 1, 1, 2, 1, 1, 2], [CATEGORY[i] for i in items])
    users = [["a"], ["d"], ["b", "e"], ["f"], ["g"]] * 40
    batch = SequenceBatch.from_lists(np.arange(len(users)), users)
    _, negs = negatives(batch, state, mode="same_category", max_rounds=60)
    for seq, neg in zip(users, negs):
        for positive, negative in zip(seq, neg):
            assert negative is not None and negative not in seq
            if positive in ("a", "b", "c", "d", "e"):
                assert CATEGORY[negative] == CATEGORY[positive]
    fallback = Counter(n[0] for seq, n in zip(users, negs) if seq[0] in "fg")
    assert len(fallback) > 2  # drawn from the whole catalog, not from a category


def test_same_category_follows_popularity_inside_the_category():
    state = NegativeState.build(list("abcd"), [0, 9, 1, 5], ["k", "k", "k", "other"])
    batch = SequenceBatch.from_lists(np.arange(4000), [["a"]] * 4000)
    _, negs = negatives(batch, state, mode="same_category")
    counts = Counter(n[0] for n in negs)
    assert set(counts) == {"b", "c"}
    assert counts["b"] / 4000 == pytest.approx(0.9, abs=0.03)


def test_popularity_frequencies_follow_the_weights():
    weights = {"p": 1, "q": 2, "r": 3, "s": 4, "t": 0}
    state = NegativeState.build(list(weights), list(weights.values()))
    batch = SequenceBatch.from_lists(np.arange(500), [["zz"] * 40] * 500)  # no item of the catalog: no collisions
    _, negs = negatives(batch, state, mode="popularity")
    counts = Counter(n for neg in negs for n in neg)
    assert "t" not in counts  # never interacted with: never a popularity negative
    for item, weight in weights.items():
        assert counts[item] / 20_000 == pytest.approx(weight / 10, abs=0.015)
    uniform = Counter(n for neg in negatives(batch, state, mode="uniform")[1] for n in neg)
    for item in weights:
        assert uniform[item] / 20_000 == pytest.approx(0.2, abs=0.015)


def test_popularity_power_flattens_the_distribution():
    state = NegativeState.build(["p", "q"], [1, 9], power=0.5)
    assert state.cumulative[0] == pytest.approx(1 / 4)


def test_collisions_are_redrawn_and_left_null_when_rounds_run_out():
    state = NegativeState.build(["a", "b", "c", "x"], [100, 100, 100, 1])  # x: 1 in 301 popularity draws
    batch = SequenceBatch.from_lists(np.arange(50), [["a", "b", "c"]] * 50)
    _, many = negatives(batch, state, mode="popularity", max_rounds=100)
    _, few = negatives(batch, state, mode="popularity", max_rounds=2)
    flat_many = [n for neg in many for n in neg]
    flat_few = [n for neg in few for n in neg]
    assert set(flat_few) <= {"x", None} and None in flat_few
    assert set(flat_many) <= {"x", None} and flat_many.count("x") > flat_few.count("x")
    every = NegativeState.build(["a", "b"], [1, 1])  # the user has every item: only nulls
    _, nulls = negatives(SequenceBatch.from_lists([3], [["a", "b", "a"]]), every, mode="uniform")
    assert nulls == [[None, None, None]]


def test_empty_catalog_and_empty_sequences_give_null_or_no_negatives():
    empty = NegativeState.build([], [])
    batch = SequenceBatch.from_lists([1, 2], [["a", "b"], []])
    assert negatives(batch, empty)[1] == [[None, None], []]


def test_negatives_of_a_sequence_do_not_depend_on_the_batch_and_change_with_the_copy():
    state = NegativeState.build(list("abcdefghijklmnop"), np.arange(1, 17), list("xxxxyyyyzzzzwwww"))
    alone = SequenceBatch.from_lists([77], [list("abcdef")])
    big = SequenceBatch.from_lists([5, 77, 9], [list("ghij"), list("abcdef"), list("mn")])
    for mode in ("uniform", "popularity", "same_category"):
        assert negatives(alone, state, mode=mode)[1][0] == negatives(big, state, mode=mode)[1][1]
    copies = [negatives(big, state, copy=c)[1] for c in range(3)]
    assert copies[0] != copies[1] or copies[0] != copies[2]


ITEM = st.sampled_from([f"i{k}" for k in range(12)])


@settings(max_examples=60, deadline=None)
@given(
    sequences=st.lists(st.lists(ITEM, min_size=0, max_size=12), min_size=1, max_size=8),
    catalog=st.lists(st.tuples(ITEM, st.integers(0, 5), st.sampled_from(["u", "v", None])), max_size=12,
                     unique_by=lambda t: t[0]),
    mode=st.sampled_from(["uniform", "popularity", "same_category"]),
    seed=st.integers(0, 2**31),
)
def test_negatives_are_never_items_of_the_users_sequence(sequences, catalog, mode, seed):
    state = NegativeState.build([c[0] for c in catalog], [c[1] for c in catalog], [c[2] for c in catalog])
    batch = SequenceBatch.from_lists(np.arange(len(sequences)) * 31 + 1, sequences)
    out, negs = negatives(batch, state, seed=seed, mode=mode, max_rounds=3)
    assert out.to_lists() == sequences
    assert [len(n) for n in negs] == [len(s) for s in sequences]
    known = {c[0] for c in catalog}
    for seq, neg in zip(sequences, negs):
        assert all(n is None or (n in known and n not in seq) for n in neg)


def test_unknown_mode_is_rejected_listing_the_parameters():
    with pytest.raises(AugmenterError, match="mode"):
        build("negative_sample", {"mode": "hardest"})


# ---- oversample_events ----

def test_oversample_emits_the_prefix_ending_at_each_purchase():
    batch = SequenceBatch.from_lists(
        [7, 8, 9], [["v1", "p1", "v2", "p2"], ["a", "b"], ["q", "r", "s"]],
        event_types=[["view", "purchase", "view", "purchase"], ["view", "view"], ["purchase", "view", "view"]])
    edit = build("oversample_events").plan(batch, Draws(1, "over", batch.keys), None)
    out = apply_edit(batch, edit)
    assert out.to_lists() == [["v1", "p1", "v2", "p2"], ["v1", "p1"]]  # latest first; [q] is too short
    assert out.lists(out.event_types) == [["view", "purchase", "view", "purchase"], ["view", "purchase"]]
    assert out.timestamps_lists() == [[0, 1, 2, 3], [0, 1]]
    assert edit.parents.tolist() == [0, 0]
    assert len(set(edit.keys.tolist()) | set(batch.keys.tolist())) == 5  # fresh keys, all distinct


def test_oversample_respects_min_length_cap_and_event_types():
    events = [["cart", "purchase", "view", "cart", "purchase", "cart"]]
    batch = SequenceBatch.from_lists([1], [list("abcdef")], event_types=events)
    assert oversample(batch, max_per_sequence=2, event_types=["cart", "purchase"]).to_lists() == [
        list("abcdef"), list("abcde")]
    assert oversample(batch, min_length=5).to_lists() == [list("abcde")]
    assert len(oversample(SequenceBatch.from_lists([1], [list("ab")]))) == 0  # views only: nothing


def test_oversample_raises_the_share_of_purchase_targets():
    rows = 60
    items = [[f"i{k}" for k in range(10)] for _ in range(rows)]
    events = [["purchase" if (k + u) % 7 == 3 else "view" for k in range(10)] for u in range(rows)]
    batch = SequenceBatch.from_lists(np.arange(rows), items, event_types=events)
    out = oversample(batch)
    real_targets = [e[-1] for e in events]
    out_targets = [e[-1] for e in out.lists(out.event_types)]
    purchases = sum(e.count("purchase") for e in events)
    assert len(out) == purchases - sum(e[0] == "purchase" for e in events)  # all but length-1 prefixes
    before = real_targets.count("purchase") / rows
    after = (real_targets + out_targets).count("purchase") / (rows + len(out))
    assert set(out_targets) == {"purchase"} and after > 2 * before


def test_oversample_output_is_independent_of_the_batch():
    events = [["view", "purchase", "purchase"], ["purchase", "view", "purchase"]]
    both = oversample(SequenceBatch.from_lists([4, 5], [list("abc"), list("xyz")], event_types=events))
    alone = oversample(SequenceBatch.from_lists([5], [list("xyz")], event_types=events[1:]))
    assert both.to_lists()[2:] == alone.to_lists() and both.keys[2:].tolist() == alone.keys.tolist()


# ---- with Spark ----

T0 = dt.datetime(2024, 1, 1)


def _sequence(user, items, events=None):
    n = len(items)
    return (user, items, [T0 + dt.timedelta(minutes=k) for k in range(n)], events or ["view"] * n,
            [f"{user}-1"] * n, None, None, n)


def test_fit_counts_popularity_and_reads_categories(spark):
    from recaug_spark.schemas import ITEMS, SEQUENCES

    sequences = spark.createDataFrame([_sequence("u1", ["a", "b", "a"]), _sequence("u2", ["a", "c"])], SEQUENCES)
    items = spark.createDataFrame(
        [(i, None, None, c, None, False, None) for i, c in [("a", "k"), ("b", "k"), ("c", None), ("d", "k")]],
        ITEMS)
    state = fit_negative_state(sequences, items)
    assert state.item_ids.to_pylist() == ["a", "b", "c", "d"]  # catalog ∪ sequence items, sorted
    assert np.allclose(state.cumulative, [3 / 5, 4 / 5, 1, 1])  # d: never interacted
    assert state.category_names.to_pylist() == ["k"] and state.category_of.tolist() == [0, 0, -1, 0]
    assert np.allclose(state.category_cumulative, [0.75, 1, 1])  # a 3, b 1, d 0 inside "k"
    no_catalog = fit_negative_state(sequences, None)
    assert no_catalog.item_ids.to_pylist() == ["a", "b", "c"] and (no_catalog.category_of == -1).all()


def test_augment_stage_writes_aligned_negatives_outside_the_users_items(spark):
    from test_augment_stage import sequence_rows

    from recaug_spark.augment.engine import augment_sequences
    from recaug_spark.config import AugmentConfig, BranchConfig
    from recaug_spark.schemas import ITEMS, SEQUENCES

    rows = sequence_rows(30)
    sequences = spark.createDataFrame(rows, SEQUENCES)
    items = spark.createDataFrame([(f"i{k}", None, None, f"c{k // 10}", None, False, None) for k in range(50)], ITEMS)
    cfg = AugmentConfig(partitions=2, branches=(
        BranchConfig(chain="negative_sample", params={"negative_sample": {"mode": "same_category"}}),))
    out = augment_sequences(sequences, cfg, 7, "r", "h", items=items).collect()
    own = {r[0]: r[1] for r in rows}
    augmented = [r for r in out if r.origin == "augmented"]
    assert len(augmented) == len(rows)
    for row in augmented:
        assert row.item_ids == own[row.user_id] and len(row.negative_item_ids) == len(row.item_ids)
        for positive, negative in zip(row.item_ids, row.negative_item_ids):
            assert negative is not None and negative not in own[row.user_id]
            assert int(negative[1:]) // 10 == int(positive[1:]) // 10  # same category
    assert all(r.negative_item_ids is None for r in out if r.origin == REAL_CHAIN)
