"""Catalog-aware correlation operators: plans on hand-built states, the Spark fit, the augment stage."""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recaug_spark.augment.base import Draws, FitContext
from recaug_spark.augment.batch import MASK_TOKEN, SequenceBatch, apply_edit
from recaug_spark.augment.catalog_ops import NeighbourState, neighbour_table
from recaug_spark.augment.registry import build
from recaug_spark.schemas import REAL_CHAIN

T0 = dt.datetime(2024, 1, 1)


def state_of(neighbours: dict[str, list[tuple[str, float]]]) -> NeighbourState:
    edges = [(item, other, weight) for item, row in neighbours.items() for other, weight in row]
    return NeighbourState.from_table([e[0] for e in edges], [e[1] for e in edges], [e[2] for e in edges])


def plan(name, params, batch, state, seed=42, copy=0):
    edit = build(name, params).plan(batch, Draws(seed, name, batch.keys, copy), state)
    return edit, apply_edit(batch, edit, pa.concat_arrays([pa.array([MASK_TOKEN]), state.items]))


def one(items, key=7):
    return SequenceBatch.from_lists([key], [items], timestamps=[[10 * i for i in range(len(items))]],
                                    event_types=[[f"e{i}" for i in range(len(items))]])


ONLY_B = state_of({"a": [("b", 1.0)], "b": [("a", 1.0)]})


# ---- Spark-free: known answers ----

def test_the_state_is_a_sorted_vocabulary_with_csr_rows_in_the_given_order():
    state = state_of({"c": [("a", 3.0), ("b", 1.0)], "a": [("c", 2.0)]})
    assert state.items.to_pylist() == ["a", "b", "c"]
    assert state.indptr.tolist() == [0, 1, 1, 3]
    assert state.neighbours.tolist() == [2, 0, 1]
    assert state.cumulative.tolist() == [1.0, 2.75, 3.0]  # row r in (r, r + 1]
    assert state.neighbours_of("c") == ["a", "b"] and state.neighbours_of("b") == [] == state.neighbours_of("zz")


def test_draws_follow_the_similarity_weights_and_rows_without_neighbours_give_minus_one():
    state = state_of({"c": [("a", 3.0), ("b", 1.0)], "a": [("c", 2.0)]})
    u = np.linspace(0, 1, 10_000, endpoint=False)
    counts = Counter(state.draw(np.full(len(u), 2), u).tolist())
    assert counts == {0: 7_500, 1: 2_500}
    assert state.draw(np.array([0, 1, -1]), np.array([0.99, 0.5, 0.5])).tolist() == [2, -1, -1]
    assert state.draw(np.array([0]), np.array([1.0 - 1e-17])).tolist() == [2]  # the row end is clamped


def test_substitute_turns_every_item_with_one_neighbour_into_it_and_leaves_others_alone():
    batch = one(["a", "x", "a", "a", "b"])
    _, out = plan("correlated_substitute", {"rate": 1.0}, batch, ONLY_B)
    assert out.to_lists() == [["b", "x", "b", "b", "a"]]
    assert out.timestamps_lists() == batch.timestamps_lists()
    assert out.event_types.to_pylist() == batch.event_types.to_pylist()


def test_substitute_count_is_floor_rate_l_capped_by_the_items_having_neighbours():
    for seed in range(10):
        items = plan("correlated_substitute", {"rate": 0.3}, one(["a"] * 10), ONLY_B, seed=seed)[1].to_lists()[0]
        assert items.count("b") == 3
        items = plan("correlated_substitute", {"rate": 0.5}, one(["a", "x", "y", "a", "z", "w"]), ONLY_B,
                     seed=seed)[1].to_lists()[0]
        assert items == ["b", "x", "y", "b", "z", "w"]  # floor(0.5 * 6) = 3, but only 2 can be substituted


def test_insert_adds_neighbours_of_the_item_before_the_gap_with_its_timestamp_and_event_type():
    batch = one(["x", "a", "y"])
    for seed in range(10):
        _, out = plan("correlated_insert", {"rate": 1.0}, batch, ONLY_B, seed=seed)
        items, ts = out.to_lists()[0], out.timestamps_lists()[0]
        assert len(items) == 6
        assert [i for i in items if i != "b"] == ["x", "a", "y"]
        assert items[:2] == ["x", "a"] and items[-1] == "y"  # only gap 2 (after a) qualifies
        assert [ts[k] for k, i in enumerate(items) if i == "b"] == [10, 10, 10]
        assert out.event_types.to_pylist() == ["e0", "e1", "e1", "e1", "e1", "e2"]


def test_insert_at_the_front_uses_the_first_item_as_anchor():
    batch = one(["a", "x"])
    fronts = set()
    for seed in range(30):
        items = plan("correlated_insert", {"rate": 0.5}, batch, ONLY_B, seed=seed)[1].to_lists()[0]
        assert items in (["b", "a", "x"], ["a", "b", "x"])
        fronts.add(items[0])
    assert fronts == {"a", "b"}  # both gaps around a are drawn


def test_sequences_that_are_short_or_have_no_neighbours_are_unchanged():
    batch = SequenceBatch.from_lists([1, 2, 3], [["a"], ["x", "y", "z"], []])
    for name in ("correlated_substitute", "correlated_insert"):
        assert plan(name, {}, batch, ONLY_B)[1].to_lists() == [["a"], ["x", "y", "z"], []], name
        empty = state_of({})
        assert plan(name, {"min_length": 1}, batch, empty)[1].to_lists() == [["a"], ["x", "y", "z"], []], name


RICH = state_of({k: [(n, 1.0 + (ord(k) + ord(n)) % 5) for n in "abcdefgh" if n != k] for k in "abcdefgh"})


def test_draws_depend_on_seed_key_and_copy_not_on_the_batch():
    seq = list("abcdefghab")
    for name, params in [("correlated_substitute", {"rate": 0.5}), ("correlated_insert", {"rate": 0.5})]:
        alone = plan(name, params, one(seq, key=99), RICH)[1].to_lists()[0]
        other = SequenceBatch.from_lists([5, 99, 6], [list("abc"), seq, list("hgfe")])
        assert plan(name, params, other, RICH)[1].to_lists()[1] == alone
        assert plan(name, params, one(seq, key=99), RICH)[1].to_lists()[0] == alone
        assert plan(name, params, one(seq, key=99), RICH, copy=1)[1].to_lists()[0] != alone
        assert plan(name, params, one(seq, key=99), RICH, seed=43)[1].to_lists()[0] != alone


# ---- Spark-free: properties ----

@st.composite
def catalogs(draw):
    names = [f"i{k}" for k in range(draw(st.integers(1, 8)))]
    group = {n: draw(st.integers(0, 2)) for n in names}
    edges = {}
    for a in names:
        for b in names:
            if a < b and group[a] == group[b] and draw(st.booleans()):
                weight = draw(st.floats(0.01, 10))
                edges.setdefault(a, []).append((b, weight))
                edges.setdefault(b, []).append((a, weight))
    pool = names + ["unknown"]
    sequences = draw(st.lists(st.lists(st.sampled_from(pool), max_size=12), min_size=1, max_size=5))
    return group, state_of(edges), sequences


@settings(max_examples=60, deadline=None)
@given(catalogs(), st.floats(0.05, 1.0), st.integers(0, 2 ** 32))
def test_outputs_are_originals_or_same_group_neighbours(catalog, rate, seed):
    group, state, sequences = catalog
    batch = SequenceBatch.from_lists(list(range(len(sequences))), sequences,
                                     timestamps=[list(range(len(s))) for s in sequences])
    params = {"rate": rate, "min_length": 2}

    def admissible(original, new):
        return new in state.neighbours_of(original) and group[new] == group[original]

    edit, out = plan("correlated_substitute", params, batch, state, seed=seed)
    for before, after in zip(sequences, out.to_lists()):
        assert len(after) == len(before)
        changed = [(a, b) for a, b in zip(before, after) if a != b]
        assert all(admissible(a, b) for a, b in changed)
        having = sum(1 for a in before if state.neighbours_of(a))
        expected = min(math.floor(rate * len(before)), having) if len(before) >= 2 else 0
        assert len(changed) == expected

    edit, out = plan("correlated_insert", params, batch, state, seed=seed)
    inserted = edit.item_codes >= 0
    assert (edit.positions[~inserted] == np.arange(batch.offsets[-1])).all()  # originals kept, in order
    anchors = batch.items.take(pa.array(edit.positions[inserted])).to_pylist()
    new_items = out.items.filter(pa.array(inserted)).to_pylist()
    assert all(admissible(a, b) for a, b in zip(anchors, new_items))
    assert (out.timestamps == batch.timestamps[edit.positions]).all()
    for k, (before, after) in enumerate(zip(sequences, out.to_lists())):
        can = len(before) >= 2 and any(state.neighbours_of(a) for a in before)
        assert len(after) == len(before) + (max(1, math.floor(rate * len(before))) if can else 0)
        flags = inserted[out.offsets[k]: out.offsets[k + 1]]
        anchor_of = edit.positions[out.offsets[k]: out.offsets[k + 1]] - batch.offsets[k]
        for j in np.flatnonzero(flags):  # the anchor is the real item before it, or after it at the front
            real_before = [anchor_of[i] for i in range(j) if not flags[i]]
            assert anchor_of[j] == (real_before[-1] if real_before else 0)


# ---- Spark: the fit ----

CATALOG = [  # item, category, price: price bands of 2 per category
    ("a", "X", 10.0), ("b", "X", 11.0), ("c", "X", 12.0), ("e", "X", 100.0), ("g", "X", 110.0), ("h", "X", 120.0),
    ("d", "Y", 10.0),
    ("p", "Z", None), ("q", "Z", None), ("r", "Z", None), ("t", "Z", 5.0),
]
HISTORIES = [list("abab"), list("ac"), list("adadad"), list("aeae"), list("cb"),
             list("pq"), list("pr"), list("qt"), list("rt")]


def sequence_rows(histories):
    rows = []
    for u, items in enumerate(histories):
        n = len(items)
        rows.append((f"u{u:02d}", items, [T0 + dt.timedelta(minutes=k) for k in range(n)], ["view"] * n,
                     [f"u{u:02d}-1"] * n, None, None, n))
    return rows


@pytest.fixture(scope="module")
def frames(spark):
    from recaug_spark.schemas import ITEMS, SEQUENCES

    items = spark.createDataFrame([(i, None, None, c, p, False, None) for i, c, p in CATALOG], ITEMS)
    return spark.createDataFrame(sequence_rows(HISTORIES), SEQUENCES), items


def reference_table(histories, groups, window):
    """Brute force: co-occurrence counts within the window, cosine, same (category, band) only."""
    freq = Counter(i for h in histories for i in h)
    count = Counter()
    for h in histories:
        for p in range(len(h)):
            for q in range(p + 1, min(len(h), p + window + 1)):
                if h[p] != h[q]:
                    count[h[p], h[q]] += 1
                    count[h[q], h[p]] += 1
    return {(a, b): n / math.sqrt(freq[a] * freq[b]) for (a, b), n in count.items() if groups[a] == groups[b]}


def test_fit_keeps_same_category_and_band_neighbours_ranked_by_cosine(frames):
    sequences, items = frames
    op = build("correlated_substitute", {"window": 1, "price_bands": 2})
    state = op.fit(FitContext(sequences, items))
    # a-d co-occur most but d is in another category; a-e often but e is in the upper price band of X;
    # q, r are unpriced (band unknown) so never neighbours of t; p's two neighbours tie: by id
    assert {i: state.neighbours_of(i) for i in "abcdeqprt"} == {
        "a": ["b", "c"], "b": ["a", "c"], "c": ["b", "a"], "d": [], "e": [], "p": ["q", "r"],
        "q": ["p"], "r": ["p"], "t": []}
    assert state.items.to_pylist() == ["a", "b", "c", "p", "q", "r"]
    sim_ab, sim_ac = 3 / math.sqrt(8 * 3), 1 / math.sqrt(8 * 2)
    assert state.cumulative[:2] == pytest.approx([sim_ab / (sim_ab + sim_ac), 1.0])

    again = op.fit(FitContext(sequences.repartition(3), items.repartition(2)))
    assert again.items.equals(state.items)
    for name in ("indptr", "neighbours", "cumulative"):
        assert np.array_equal(getattr(again, name), getattr(state, name)), name


def test_neighbour_table_matches_a_brute_force_count_and_keeps_top_k(frames):
    sequences, items = frames
    groups = {"a": ("X", 0), "b": ("X", 0), "c": ("X", 0), "e": ("X", 1), "d": ("Y", 0),
              "p": ("Z", None), "q": ("Z", None), "r": ("Z", None), "t": ("Z", 0)}
    rows = neighbour_table(sequences, items, window=3, price_bands=2, top_k=1).collect()
    expected = reference_table(HISTORIES, groups, window=3)
    best = {}
    for (a, b), sim in sorted(expected.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1])):
        best.setdefault(a, (b, sim))
    assert {r.item_id: (r.neighbour_id, pytest.approx(r.similarity)) for r in rows} == best
    assert all(r.rank == 1 for r in rows)


# ---- Spark: end to end through the augment stage ----

def test_correlated_substitute_runs_through_the_augment_stage_and_stays_within_the_catalog(frames):
    from recaug_spark.augment.engine import augment_sequences
    from recaug_spark.config import AugmentConfig, BranchConfig

    sequences, items = frames
    params = {"rate": 1.0, "window": 1, "price_bands": 2}
    cfg = AugmentConfig(partitions=2, branches=(
        BranchConfig(chain="correlated_substitute", copies=2, params={"correlated_substitute": params}),))
    rows = augment_sequences(sequences, cfg, 7, "r", "h", items=items).collect()
    parents = {f"u{u:02d}": h for u, h in enumerate(HISTORIES)}
    allowed = {"a": {"b", "c"}, "b": {"a", "c"}, "c": {"a", "b"}, "p": {"q", "r"}, "q": {"p"}, "r": {"p"}}
    assert Counter(r.origin for r in rows) == {REAL_CHAIN: len(HISTORIES), "augmented": 2 * len(HISTORIES)}
    for row in rows:
        parent = parents[row.user_id]
        assert set(row.item_ids) <= {i for i, _, _ in CATALOG} and len(row.item_ids) == len(parent)
        if row.origin == "augmented":  # rate 1: every item that has a neighbour is substituted
            assert all(b in allowed[a] if a in allowed else a == b for a, b in zip(parent, row.item_ids)), row
