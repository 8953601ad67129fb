"""Random sequence operators, without Spark: known answers, invariants, keyed determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recaug_spark.augment.base import AugmenterError, Draws
from recaug_spark.augment.batch import MASK_TOKEN, SequenceBatch, apply_edit
from recaug_spark.augment.kernels import ItemVocabulary, select_per_sequence
from recaug_spark.augment.registry import build

VOCAB = ItemVocabulary.from_counts(["p", "q", "r"], [1, 1, 8])
EXTRA = pa.concat_arrays([pa.array([MASK_TOKEN]), VOCAB.items])
TEN = list("abcdefghij")


def run(name, params, batch, seed=42, copy=0):
    op = build(name, params)
    edit = op.plan(batch, Draws(seed, name, batch.keys, copy), VOCAB)
    return apply_edit(batch, edit, EXTRA)


def one(items, key=7):
    return SequenceBatch.from_lists([key], [items], timestamps=[[10 * i for i in range(len(items))]])


def test_crop_keeps_a_contiguous_window_of_the_announced_length():
    out = run("crop", {"eta": 0.6}, one(TEN)).to_lists()[0]
    assert len(out) == 6
    start = TEN.index(out[0])
    assert out == TEN[start:start + 6]


def test_mask_token_hides_exactly_floor_gamma_l_items_in_place():
    batch = one(TEN)
    out = run("mask", {"gamma": 0.3}, batch)
    items = out.to_lists()[0]
    assert items.count(MASK_TOKEN) == 3
    assert [a for a, b in zip(TEN, items) if b != MASK_TOKEN] == [b for b in items if b != MASK_TOKEN]
    assert out.timestamps_lists() == batch.timestamps_lists()


def test_mask_dropout_and_delete_remove_exactly_floor_rate_l_items_keeping_order():
    for name, params in [("mask", {"gamma": 0.3, "mode": "dropout"}), ("delete", {"rate": 0.3})]:
        out = run(name, params, one(TEN))
        items = out.to_lists()[0]
        assert len(items) == 7
        assert items == [i for i in TEN if i in items]  # a subsequence, in order
        assert out.timestamps_lists()[0] == [10 * TEN.index(i) for i in items]


def shuffled_in_one_window(before, after, width, must_differ=False):
    """True when some window of ``width`` slots holds a permutation of ``before``'s items there and
    every item outside it is unchanged (with ``must_differ``, the window's order must have changed)."""
    return any(after[:s] == before[:s] and after[s + width:] == before[s + width:]
               and sorted(after[s:s + width]) == sorted(before[s:s + width])
               and (not must_differ or after[s:s + width] != before[s:s + width])
               for s in range(len(before) - width + 1))


def test_reorder_permutes_only_inside_one_window():
    width = 5  # max(2, floor(beta * L)) = max(2, floor(0.5 * 10))
    items = run("reorder", {"beta": 0.5}, one(TEN)).to_lists()[0]
    assert shuffled_in_one_window(TEN, items, width, must_differ=True), items
    # Over 50 users every output keeps the one-window property; a window of 5 distinct items comes
    # back in its own order with probability 1/120, so nearly all of them change.
    outputs = run("reorder", {"beta": 0.5}, SequenceBatch.from_lists(list(range(50)), [TEN] * 50)).to_lists()
    assert all(shuffled_in_one_window(TEN, o, width) for o in outputs)
    assert sum(o != TEN for o in outputs) >= 45


def test_substitute_replaces_exactly_floor_rate_l_positions_with_catalog_items():
    for seed in range(20):
        items = run("substitute", {"rate": 0.3, "sampling": "uniform"}, one(TEN), seed=seed).to_lists()[0]
        changed = [(a, b) for a, b in zip(TEN, items) if a != b]
        assert len(items) == 10  # catalog items p/q/r never equal a-j, so every replacement shows
        assert len(changed) == 3 and all(b in {"p", "q", "r"} for _, b in changed)


def test_popularity_sampling_follows_the_counts():
    draws = np.linspace(0, 1, 10_000, endpoint=False)
    counts = Counter(VOCAB.items.take(pa.array(VOCAB.sample(draws, "popularity"))).to_pylist())
    assert counts == {"p": 1000, "q": 1000, "r": 8000}


def test_insert_adds_items_before_anchors_and_copies_their_timestamps():
    batch = one(TEN)
    out = run("insert", {"rate": 0.3}, batch)
    items, ts = out.to_lists()[0], out.timestamps_lists()[0]
    assert len(items) == 13
    assert [i for i in items if i in TEN] == TEN
    for position, item in enumerate(items):
        if item not in TEN:  # an inserted item sits before a real one and carries its timestamp
            following = next(i for i in items[position:] if i in TEN)
            assert ts[position] == 10 * TEN.index(following)
    assert ts == sorted(ts)


def test_prefix_and_window_expansion():
    batch = one(list("abcde"))
    prefixes = apply_edit(batch, build("prefixes", {}).plan(batch, Draws(1, "p", batch.keys), None))
    assert prefixes.to_lists() == [list("abcd"), list("abc"), list("ab")]
    assert len(set(prefixes.keys.tolist())) == 3  # each output has its own entity key
    windows = apply_edit(batch, build("prefixes", {"mode": "windows", "window": 2, "stride": 2}).plan(
        batch, Draws(1, "p", batch.keys), None))
    assert windows.to_lists() == [list("de"), list("bc")]


def test_short_sequences_are_left_unchanged():
    batch = SequenceBatch.from_lists([1, 2], [["a"], ["b"]])
    for name in ("crop", "mask", "reorder", "delete", "substitute", "insert"):
        assert run(name, {}, batch).to_lists() == [["a"], ["b"]], name


def test_draws_depend_on_the_entity_not_on_the_batch():
    alone = run("mask", {"gamma": 0.5}, one(TEN, key=99)).to_lists()[0]
    other = SequenceBatch.from_lists([5, 99, 6], [list("xyz"), TEN, list("uvwxyz")])
    assert run("mask", {"gamma": 0.5}, other).to_lists()[1] == alone
    assert run("mask", {"gamma": 0.5}, one(TEN, key=99), copy=1).to_lists()[0] != alone
    assert run("mask", {"gamma": 0.5}, one(TEN, key=99), seed=43).to_lists()[0] != alone


def test_unknown_names_and_parameters_fail_listing_what_is_known():
    with pytest.raises(AugmenterError, match="known: .*crop"):
        build("crp")
    with pytest.raises(AugmenterError, match="allowed: \\['eta', 'min_length'\\]"):
        build("crop", {"etta": 0.5})
    with pytest.raises(AugmenterError, match="eta"):
        build("crop", {"eta": 1.5})


sequences = st.lists(st.lists(st.sampled_from(TEN), min_size=0, max_size=30), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(sequences, st.integers(0, 2**32))
def test_operator_invariants(seqs, seed):
    batch = SequenceBatch.from_lists(np.arange(len(seqs)) * 7919 + seed, seqs)
    lengths = [len(s) for s in seqs]
    # Default parameters (recaug_spark/augment/sequence_ops.py, kernels.RateParams): min_length 2,
    # crop eta 0.6, mask gamma 0.3, reorder beta 0.2, delete/substitute/insert rate 0.2; shorter
    # sequences come back unchanged, longer ones change by exactly the documented counts.
    for name, check in [
        ("crop", lambda s, o: len(o) == max(1, int(0.6 * len(s))) and "".join(o) in "".join(s)),
        ("mask", lambda s, o: len(o) == len(s) and o.count(MASK_TOKEN) == int(0.3 * len(s))
         and all(b in (a, MASK_TOKEN) for a, b in zip(s, o))),
        ("reorder", lambda s, o: shuffled_in_one_window(s, o, min(len(s), max(2, int(0.2 * len(s)))))),
        ("delete", lambda s, o: len(o) == len(s) - min(int(0.2 * len(s)), len(s) - 1)
         and Counter(o) <= Counter(s)),
        ("substitute", lambda s, o: len(o) == len(s)  # p/q/r never equal a-j, so every replacement shows
         and sum(a != b for a, b in zip(s, o)) == int(0.2 * len(s)) and set(o) <= set(TEN) | {"p", "q", "r"}),
        ("insert", lambda s, o: len(o) == len(s) + max(1, int(0.2 * len(s))) and [i for i in o if i in TEN] == s),
    ]:
        out = run(name, {}, batch, seed=seed)
        assert len(out) == len(seqs) and np.array_equal(out.keys, batch.keys)
        outputs = out.to_lists()
        for s, o in zip(seqs, outputs):
            assert o == s if len(s) < 2 else check(s, o), (name, s, o)
        assert (np.diff(out.offsets) >= np.minimum(lengths, 1)).all()
        if name != "reorder" and max(lengths) >= 5:  # every count above is >= 1 from L = 5 on
            assert any(o != s for s, o in zip(seqs, outputs)), name


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=20), st.integers(0, 2**32))
def test_select_per_sequence_picks_exactly_the_requested_count(lengths, seed):
    batch = SequenceBatch.from_lists(np.arange(len(lengths)), [["a"] * n for n in lengths])
    counts = np.array([n // 2 for n in lengths])
    chosen = select_per_sequence(Draws(seed, "s", batch.keys).per_element("x", batch), batch, counts)
    assert np.array_equal(np.bincount(batch.sequence_of_element[chosen], minlength=len(lengths)), counts)


def test_keyed_bits_do_not_collide_for_small_keys_and_draws():
    from recaug_spark import rng

    keys, draws = np.meshgrid(np.arange(300, dtype=np.uint64), np.arange(300, dtype=np.uint64))
    bits = rng.random_bits(1, "s", keys.ravel(), draws.ravel())
    assert len(np.unique(bits)) == bits.size


def test_string_keys_are_a_pure_function_of_the_id_and_do_not_collide():
    from recaug_spark import rng

    ids = ["", "a", "a\x00", "abcdefgh", "abcdefgh\x00", "abcdefghi", "é"] + [f"user-{i}" for i in range(100_000)]
    keys = rng.key_strings(pa.array(ids))
    assert len(np.unique(keys)) == len(ids)
    assert np.array_equal(rng.key_strings(ids[3:50]), keys[3:50])  # other neighbours, lists or Arrow
    assert rng.key_strings(pa.array(ids).slice(5, 1))[0] == keys[5]


def test_grouped_draws_equal_the_plain_ones():
    from recaug_spark import rng

    keys = np.array([3, 99, 2**63 + 5], dtype=np.uint64)
    groups, draws = np.array([0, 0, 1, 2, 2, 2]), np.arange(6, dtype=np.uint64) + (np.uint64(3) << np.uint64(40))
    plain = rng.random_bits(7, "s", keys[groups], draws)
    assert np.array_equal(rng.random_bits_grouped(7, "s", keys, groups, draws), plain)
    # a draw index broadcast over the groups (the path that cannot reuse the product's array)
    assert np.array_equal(rng.random_bits_grouped(7, "s", keys, groups, np.uint64(4)),
                          rng.random_bits(7, "s", keys[groups], np.uint64(4)))


def test_select_chooses_the_smallest_keys_ties_by_position():
    from recaug_spark.augment.kernels import select

    generator = np.random.default_rng(3)
    lengths = generator.integers(0, 40, 300)
    batch = SequenceBatch.from_lists(np.arange(300), [["a"] * n for n in lengths])
    for key_range in (4, 1 << 16):  # many ties, then few
        keys = generator.integers(0, key_range, int(lengths.sum())).astype(np.uint16)
        counts = generator.integers(-1, 45, 300)  # below 0 and beyond the length too
        chosen = select(keys, batch, counts)
        for i in range(300):
            a, b = batch.offsets[i], batch.offsets[i + 1]
            by_key = sorted(range(b - a), key=lambda j: (keys[a + j], j))
            expected = np.zeros(b - a, dtype=bool)
            expected[by_key[:max(counts[i], 0)]] = True
            assert np.array_equal(chosen[a:b], expected), i


def test_top16_is_the_top_16_bits_for_any_layout():
    from recaug_spark.augment.kernels import top16

    bits = np.random.default_rng(1).integers(0, 2**64 - 1, 1001, dtype=np.uint64, endpoint=True)
    expected = (bits >> np.uint64(48)).astype(np.uint16)
    assert np.array_equal(top16(bits), expected)
    assert np.array_equal(top16(bits[::3]), expected[::3])  # strided: no view trick
    assert top16(bits).base is None  # a copy, not a view into the draws


def test_identity_positions_move_nothing_and_cannot_be_written():
    from recaug_spark.augment.batch import Edit, LazyBatch, identity_positions

    batch = SequenceBatch.from_lists([1, 2], [list("abc"), list("de")], session_ids=[list("xxy"), list("zz")])
    positions = identity_positions(5)
    assert positions.tolist() == [0, 1, 2, 3, 4] and not positions.flags.writeable
    assert identity_positions(100_000)[-1] == 99_999 and positions.tolist() == [0, 1, 2, 3, 4]  # grown, old views kept
    codes = np.array([-1, 0, -1, -1, 0])
    lazy = LazyBatch.wrap(batch).apply(Edit(batch.offsets, identity_positions(5), item_codes=codes), EXTRA)
    eager = apply_edit(batch, Edit(batch.offsets, np.arange(5), item_codes=codes), EXTRA)
    assert lazy.to_lists() == eager.to_lists() == [["a", MASK_TOKEN, "c"], ["d", MASK_TOKEN]]
    assert lazy.lists(lazy.session_ids) == [list("xxy"), list("zz")]


def test_suffixed_ids_equal_a_string_join_for_every_suffix():
    import pyarrow.compute as pc

    from recaug_spark.augment.arrow_io import SuffixedIds

    ids = pa.array(["u1", "", "user-é", "u1", "x" * 40]).slice(1)
    suffixed = SuffixedIds(ids)
    for suffix in ("~0:0", "~0:1", "~1:0", "~12:3", "~0:0", "~1:1"):
        assert suffixed.get(suffix).to_pylist() == pc.binary_join_element_wise(ids, suffix, "").to_pylist(), suffix


def test_lazy_chains_equal_applying_each_edit_in_turn():
    from recaug_spark.augment.batch import LazyBatch

    seqs = [TEN, TEN[:7], TEN[:3], TEN[:1], [], TEN[2:]]
    batch = SequenceBatch.from_lists(np.arange(len(seqs)) * 31 + 1, seqs,
                                     timestamps=[[10 * i for i in range(len(s))] for s in seqs],
                                     session_ids=[[f"s{i // 3}" for i in range(len(s))] for s in seqs],
                                     country=[[x.upper() for x in s] for s in seqs])
    lazy, eager = LazyBatch.wrap(batch).tail(8), batch.tail(8)
    for step, name in enumerate(("crop", "mask", "insert", "reorder", "substitute", "delete", "reorder")):
        edit = build(name, {"crop": {"eta": 0.9}}.get(name, {})).plan(eager, Draws(5, f"{step}", eager.keys), VOCAB)
        lazy, eager = lazy.apply(edit, EXTRA), apply_edit(eager, edit, EXTRA)
        assert lazy.to_lists() == eager.to_lists() and lazy.timestamps_lists() == eager.timestamps_lists(), name
        assert lazy.lists(lazy.session_ids) == eager.lists(eager.session_ids), name
        assert lazy.lists(lazy.context["country"]) == eager.lists(eager.context["country"]), name


def test_a_dropped_lazy_batch_is_freed_at_once_with_its_context():
    """No reference cycle between a batch and its context: else every branch output's Arrow buffers
    stayed alive until Python's cycle collector ran (the stage's memory grew with the batches)."""
    import gc
    import weakref

    from recaug_spark.augment.batch import LazyBatch

    batch = SequenceBatch.from_lists([1, 2], [list("abcd"), list("de")], country=[list("ABCD"), list("DE")])
    base = LazyBatch.wrap(batch).tail(3)
    enabled = gc.isenabled()
    gc.disable()
    try:
        lazy = base.apply(build("crop", {}).plan(base, Draws(1, "c", base.keys), None))
        assert lazy.lists(lazy.context["country"]) == [[x.upper() for x in s] for s in lazy.to_lists()]
        ref = weakref.ref(lazy)
        del lazy
        assert ref() is None
    finally:
        if enabled:
            gc.enable()
