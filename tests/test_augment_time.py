"""Time-aware and context operators: known answers, invariants, keyed determinism, one Spark fit."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recaug_spark.augment.base import AugmenterError, Draws
from recaug_spark.augment.batch import MASK_TOKEN, SequenceBatch, apply_edit
from recaug_spark.augment.context_ops import CONTEXT_FIELDS, ContextDistribution
from recaug_spark.augment.kernels import MINUTE_US, ItemVocabulary
from recaug_spark.augment.registry import build
from recaug_spark.augment.time_ops import WEEK_US
from recaug_spark.schemas import REAL_CHAIN

VOCAB = ItemVocabulary.from_counts(["p", "q", "r"], [1, 1, 8])
CONTEXTS = ContextDistribution.from_counts(CONTEXT_FIELDS, [["DE", "DE", "FR"], ["ios", "web", "android"]], [5, 3, 2])
PAIRS = {("DE", "ios"), ("DE", "web"), ("FR", "android")}
T0 = 1_710_000_000 * 1_000_000  # 2024-03-09 16:00 UTC, in µs
EPOCH = dt.datetime(1970, 1, 1)
TIME_OPS = ("time_insert", "time_crop", "session_crop", "session_reorder", "time_shift", "time_jitter")
CONTEXT_OPS = ("context_swap", "context_drop")


def run(name, params, batch, seed=42, copy=0):
    state = CONTEXTS if name == "context_swap" else VOCAB
    edit = build(name, params).plan(batch, Draws(seed, name, batch.keys, copy), state)
    extra = pa.array([MASK_TOKEN]) if name == "context_swap" else pa.concat_arrays([pa.array([MASK_TOKEN]), VOCAB.items])
    return apply_edit(batch, edit, extra)


def minutes(values):
    return [T0 + round(m * MINUTE_US) for m in values]


def one(items, stamps, key=7, **columns):
    """A one-sequence batch; ``stamps`` in minutes; columns: session_ids, event_types or context lists."""
    return SequenceBatch.from_lists([key], [items], timestamps=[minutes(stamps)],
                                    **{name: [values] for name, values in columns.items()})


def snapshot(batch, row=0):
    """Everything a sequence carries, as plain lists (to compare outputs)."""
    take = batch.take([row])
    return (take.to_lists()[0], take.timestamps_lists()[0], take.lists(take.event_types)[0],
            None if take.session_ids is None else take.lists(take.session_ids)[0],
            {name: take.lists(values)[0] for name, values in sorted(take.context.items())})


def sessions_of(batch, row=0):
    items, _, _, sessions, _ = snapshot(batch, row)
    out: dict[str, list] = {}
    for item, session in zip(items, sessions):
        out.setdefault(session, []).append(item)
    return out


# ---- time_insert ----

def test_time_insert_lands_in_the_large_gap_with_a_timestamp_inside_and_the_previous_event_copied():
    batch = one(list("abcde"), [0, 1, 2, 100, 101], event_types=["view", "cart", "purchase", "view", "view"],
                session_ids=["s1", "s1", "s1", "s2", "s2"], country=["DE", "DE", "FR", "IT", "IT"],
                device=["d0", "d1", "d2", "d3", "d4"])
    for seed in range(10):
        items, ts, types, sessions, context = snapshot(run("time_insert", {"min_gap_minutes": 30}, batch, seed=seed))
        assert len(items) == 6 and items[:3] == list("abc") and items[4:] == list("de") and items[3] in "pqr"
        assert minutes([2])[0] < ts[3] < minutes([100])[0] and ts == sorted(ts)
        assert (types[3], sessions[3], context["country"][3], context["device"][3]) == ("purchase", "s1", "FR", "d2")
    # one gap qualifies, so a higher rate still inserts one item (at most one per gap)
    assert len(run("time_insert", {"rate": 0.6}, batch).to_lists()[0]) == 6


def test_time_insert_fills_the_largest_gaps_first_and_leaves_gapless_sequences_alone():
    batch = one(list("abcdef"), [0, 40, 50, 150, 160, 400])  # gaps 40, 10, 100, 10, 240
    items = run("time_insert", {"rate": 0.4}, batch).to_lists()[0]  # two items: gaps of 240 and 100
    assert [i in "pqr" for i in items] == [False, False, False, True, False, False, True, False]
    gapless = one(list("abcde"), [0, 1, 2, 3, 29])
    assert snapshot(run("time_insert", {"rate": 1.0}, gapless)) == snapshot(gapless)


# ---- time_crop, session_crop, session_reorder ----

def test_time_crop_keeps_a_contiguous_window_of_the_announced_time_span():
    batch = one(list("abcdefghij"), range(10))
    for seed in range(20):
        items = run("time_crop", {"span": 0.5}, batch, seed=seed).to_lists()[0]
        start = "abcdefghij".index(items[0])
        assert items == list("abcdefghij")[start:start + 5]  # 4.5 minutes of a 9-minute history
    uneven = one(list("abcdefghij"), [0, 1, 2, 3, 4, 5, 6, 7, 8, 1000])
    for seed in range(20):
        out = run("time_crop", {"span": 0.5}, uneven, seed=seed)
        ts = out.timestamps_lists()[0]
        assert ts and ts[-1] - ts[0] <= 500 * MINUTE_US and "j" not in out.to_lists()[0]


SESSIONS = ["s1", "s1", "s1", "s2", "s2", "s3", "s4", "s4"]
SESSION_STAMPS = [0, 1, 2, 100, 101, 300, 500, 501]


def test_session_crop_keeps_a_run_of_whole_sessions_from_ids_or_from_gaps():
    by_id = one(list("abcdefgh"), [0, 1, 2, 3, 4, 5, 6, 7], session_ids=SESSIONS)  # no gaps: ids decide
    by_gap = one(list("abcdefgh"), SESSION_STAMPS, session_ids=[None] * 8)  # null ids: gaps decide
    whole = {"s1": list("abc"), "s2": list("de"), "s3": list("f"), "s4": list("gh")}
    runs = set()
    for batch in (by_id, by_gap):
        for seed in range(20):
            items = run("session_crop", {"share": 0.5}, batch, seed=seed).to_lists()[0]
            kept = [s for s in ("s1", "s2", "s3", "s4") if whole[s][0] in items]
            assert items == [i for s in kept for i in whole[s]]  # whole sessions only
            assert len(kept) == 2 and ["s1", "s2", "s3", "s4"].index(kept[1]) == ["s1", "s2", "s3", "s4"].index(kept[0]) + 1
            runs.add(tuple(kept))
    assert len(runs) == 3
    single = one(list("abc"), [0, 1, 2], session_ids=["s1"] * 3)
    assert snapshot(run("session_crop", {}, single)) == snapshot(single)


def test_session_reorder_shuffles_only_inside_sessions_and_keeps_timestamps_in_their_slots():
    items = list("abcdefgh")
    batch = one(items, SESSION_STAMPS, session_ids=SESSIONS, device=[f"d-{i}" for i in items])
    moved = False
    for seed in range(10):
        out = run("session_reorder", {}, batch, seed=seed)
        got, ts, _, sessions, context = snapshot(out)
        assert sessions == SESSIONS and ts == minutes(SESSION_STAMPS)
        assert {s: sorted(v) for s, v in sessions_of(out).items()} == {s: sorted(v) for s, v in sessions_of(batch).items()}
        assert context["device"] == [f"d-{i}" for i in got]  # context travels with its event
        moved |= got != items
    assert moved


# ---- time_shift, time_jitter ----

def test_time_shift_keeps_hour_of_day_and_weekday_exactly():
    stamps = [0, 61, 600, 1439, 3000, 9000.5]
    batch = SequenceBatch.from_lists(np.arange(200), [["a"] * 6] * 200, timestamps=[minutes(stamps)] * 200)
    weeks = set()
    for direction in ("both", "past"):
        out = run("time_shift", {"max_weeks": 3, "direction": direction}, batch)
        for before, after in zip(batch.timestamps_lists(), out.timestamps_lists()):
            shift = {a - b for a, b in zip(after, before)}
            assert len(shift) == 1
            k, rest = divmod(shift.pop(), WEEK_US)
            assert rest == 0 and 1 <= abs(k) <= 3 and (direction == "both" or k < 0)
            weeks.add(k)
            for a, b in zip(after, before):
                a_dt, b_dt = (EPOCH + dt.timedelta(microseconds=x) for x in (a, b))  # UTC wall clock
                assert (a_dt.hour, a_dt.minute, a_dt.weekday()) == (b_dt.hour, b_dt.minute, b_dt.weekday())
    assert weeks == {-3, -2, -1, 1, 2, 3}


@pytest.mark.parametrize("distribution", ["uniform", "gaussian"])
def test_time_jitter_moves_each_event_a_little_and_keeps_the_order(distribution):
    stamps = [0, 0, 1, 3, 30, 31, 31.5, 200]
    batch = SequenceBatch.from_lists(np.arange(50), [list("abcdefgh")] * 50, timestamps=[minutes(stamps)] * 50)
    out = run("time_jitter", {"max_minutes": 5, "distribution": distribution}, batch)
    assert out.to_lists() == batch.to_lists()
    moved = 0
    for before, after in zip(batch.timestamps_lists(), out.timestamps_lists()):
        assert after == sorted(after)
        delta = np.array(after) - np.array(before)
        assert (np.abs(delta) <= 5 * MINUTE_US).all()
        mid = [(a + b) // 2 for a, b in pairwise(before)]  # never past the midpoint to a neighbour
        assert all(after[i] <= mid[i] <= after[i + 1] for i in range(len(mid)))
        moved += int((delta != 0).sum())
    assert moved > 200


# ---- context_swap, context_drop ----

def test_context_swap_draws_whole_sessions_from_the_observed_pairs():
    items = list("abcdefgh")
    batch = one(items, SESSION_STAMPS, session_ids=SESSIONS, country=["XX"] * 8, device=["zz"] * 8)
    for rate, changed_sessions in [(1.0, 4), (0.5, 2), (0.1, 1)]:
        for seed in range(10):
            got, _, _, sessions, context = snapshot(run("context_swap", {"rate": rate}, batch, seed=seed))
            assert got == items and sessions == SESSIONS
            per_session: dict[str, set] = {}
            for session, pair in zip(sessions, zip(context["country"], context["device"])):
                per_session.setdefault(session, set()).add(pair)
            assert all(len(pairs) == 1 for pairs in per_session.values())  # a session changes as a whole
            new = [pairs.pop() for pairs in per_session.values()]
            assert sum(pair in PAIRS for pair in new) == changed_sessions
            assert all(pair in PAIRS or pair == ("XX", "zz") for pair in new)


def test_context_swap_follows_the_joint_frequencies():
    users = SequenceBatch.from_lists(np.arange(4000), [["a"]] * 4000, country=[["XX"]] * 4000, device=[["zz"]] * 4000)
    out = run("context_swap", {"rate": 1.0}, users)
    counts = Counter(zip(out.context["country"].to_pylist(), out.context["device"].to_pylist()))
    assert set(counts) == PAIRS
    assert abs(counts["DE", "ios"] / 4000 - 0.5) < 0.04 and abs(counts["FR", "android"] / 4000 - 0.2) < 0.04


def test_context_drop_nulls_exactly_the_announced_count_on_the_same_events():
    batch = SequenceBatch.from_lists([1, 2, 3], [list("abcdefghij"), list("abc"), []],
                                     country=[["DE"] * 10, ["FR"] * 3, []], device=[["ios"] * 10, ["web"] * 3, []])
    out = run("context_drop", {"rate": 0.3}, batch)
    country, device = out.lists(out.context["country"]), out.lists(out.context["device"])
    assert [c.count(None) for c in country] == [3, 1, 0]  # max(1, floor(0.3 * L))
    assert [[x is None for x in c] for c in country] == [[x is None for x in d] for d in device]
    only_device = run("context_drop", {"rate": 0.5, "fields": ["device"]}, batch)
    assert only_device.context["country"].null_count == 0 and only_device.context["device"].null_count == 6
    with pytest.raises(AugmenterError, match="known: \\['country', 'device'\\]"):
        build("context_drop", {"fields": ["scene"]})


def test_context_operators_leave_batches_without_context_unchanged():
    bare = one(list("abcd"), [0, 1, 2, 3])
    for name in CONTEXT_OPS:
        out = run(name, {"rate": 1.0}, bare)
        assert out.context == {} and snapshot(out) == snapshot(bare)
    country_only = one(list("abcd"), [0, 1, 2, 3], country=["XX"] * 4)
    out = run("context_swap", {"rate": 1.0}, country_only)
    assert set(out.context) == {"country"} and set(out.context["country"].to_pylist()) <= {"DE", "FR"}
    empty = ContextDistribution.from_counts(CONTEXT_FIELDS, [[], []], [])
    edit = build("context_swap").plan(country_only, Draws(1, "s", country_only.keys), empty)
    assert snapshot(apply_edit(country_only, edit)) == snapshot(country_only)


def test_context_fields_match_the_schema():
    from recaug_spark.schemas import CONTEXT_COLUMNS

    assert CONTEXT_FIELDS == tuple(CONTEXT_COLUMNS.values())


# ---- determinism and invariants ----

def test_results_depend_on_the_entity_not_on_the_batch():
    items = list("abcdefgh")
    columns = {"session_ids": SESSIONS, "country": ["DE"] * 8, "device": [f"d-{i}" for i in items]}
    alone = one(items, SESSION_STAMPS, key=99, **columns)
    others = [(5, list("xyz"), [0, 50, 51]), (6, list("uvwxyz"), [0, 1, 90, 91, 92, 400])]
    big = SequenceBatch.from_lists(
        [5, 99, 6], [others[0][1], items, others[1][1]],
        timestamps=[minutes(others[0][2]), minutes(SESSION_STAMPS), minutes(others[1][2])],
        **{name: [[values[0]] * 3, values, [values[0]] * 6] for name, values in columns.items()})
    for name in TIME_OPS + CONTEXT_OPS:
        expected = snapshot(run(name, {}, alone))
        assert snapshot(run(name, {}, big), row=1) == expected, name
        if name != "time_insert":  # time_insert's positions are fixed (largest gaps); only items vary
            assert any(snapshot(run(name, {}, alone, seed=s)) != expected for s in (1, 2, 3)), name


@st.composite
def batches(draw):
    n = draw(st.integers(1, 8))
    with_ids = draw(st.booleans())
    items, stamps, sessions, countries = [], [], [], []
    for s in range(n):
        steps = draw(st.lists(st.sampled_from([0, 0.5, 1, 5, 29, 31, 45, 120, 2000]), max_size=14))
        stamps.append(minutes(np.cumsum([0, *steps])[: len(steps)]) if steps else [])
        items.append([f"{s}-{k}" for k in range(len(steps))])  # unique: positions can be traced
        breaks = draw(st.lists(st.booleans(), min_size=len(steps), max_size=len(steps)))
        sessions.append([f"s{v}" if with_ids else None for v in np.cumsum(breaks)])
        countries.append(["XX"] * len(steps))
    return SequenceBatch.from_lists(np.arange(n) * 7919 + 3, items, timestamps=stamps, session_ids=sessions,
                                    country=countries, device=[["zz"] * len(c) for c in countries])


@settings(max_examples=40, deadline=None)
@given(batches(), st.integers(0, 2**32))
def test_invariants(batch, seed):
    for name in TIME_OPS + CONTEXT_OPS:
        out = run(name, {}, batch, seed=seed)
        assert len(out) == len(batch) and np.array_equal(out.keys, batch.keys), name
        for row in range(len(batch)):
            items, ts, _, sessions, _ = snapshot(batch, row)
            o_items, o_ts, _, o_sessions, o_context = snapshot(out, row)
            assert o_ts == sorted(o_ts) and (len(o_items) >= 1 or not items), (name, items, o_items)
            real = [i for i in o_items if i not in "pqr"]
            if name == "time_insert":
                assert real == items and len(o_items) - len(items) <= max(1, len(items) // 5)
            elif name in ("time_crop", "session_crop"):
                assert o_items == items[items.index(o_items[0]):][: len(o_items)] if items else not o_items
            elif name == "session_reorder":
                assert o_ts == ts and o_sessions == sessions and sorted(o_items) == sorted(items)
            elif name == "time_shift":
                assert len({(a - b) % WEEK_US for a, b in zip(o_ts, ts)}) <= 1 and o_items == items
                assert not ts or (o_ts[0] - ts[0]) % WEEK_US == 0
            elif name == "time_jitter":
                assert o_items == items and all(abs(a - b) <= 10 * MINUTE_US for a, b in zip(o_ts, ts))
            elif name == "context_swap":
                pairs = list(zip(o_context["country"], o_context["device"]))
                assert o_items == items and set(pairs) <= PAIRS | {("XX", "zz")} and (not items or set(pairs) & PAIRS)
            elif name == "context_drop":
                assert o_context["country"].count(None) == (max(1, len(items) // 5) if items else 0)


# ---- Spark: fit of the joint distribution, end-to-end through the augment stage ----

def context_rows():
    """Six users, three sessions each (two hours apart), one (country, device) pair per session."""
    base = dt.datetime(2024, 3, 4, 9, 0)
    pairs = [("DE", "ios"), ("DE", "web"), ("FR", "android")]
    rows = []
    for u in range(6):
        items, stamps, sessions, countries, devices = [], [], [], [], []
        for s in range(3):  # three sessions of three events, two hours apart
            for k in range(3):
                items.append(f"i{(u * 7 + s * 3 + k) % 20}")
                stamps.append(base + dt.timedelta(hours=2 * s + 24 * u, minutes=k))
                sessions.append(f"u{u}-{s}")
                country, device = pairs[(u + s) % 3]
                countries.append(country)
                devices.append(device)
        rows.append((f"u{u}", items, stamps, ["view"] * 9, sessions, countries, devices, 9))
    return rows


def test_context_distribution_fit_and_end_to_end_augment(spark):
    from recaug_spark.augment.context_ops import fit_context_distribution
    from recaug_spark.augment.engine import augment_sequences
    from recaug_spark.config import AugmentConfig, BranchConfig
    from recaug_spark.schemas import SEQUENCES

    extra = [("v0", ["a", "b", "c"], [dt.datetime(2024, 3, 4)] * 3, ["view"] * 3, ["v0-1"] * 3,
              ["DE", None, None], ["ios", "web", None], 3),
             ("v1", ["a"], [dt.datetime(2024, 3, 4)], ["view"], ["v1-1"], None, ["ios"], 1)]
    frame = spark.createDataFrame(context_rows() + extra, SEQUENCES)
    fitted = fit_context_distribution(frame)
    counts = dict(zip(fitted.combinations(), np.diff(np.concatenate([[0], fitted.cumulative])) * 56))
    assert fitted.fields == ("country", "device")
    assert {k: round(v) for k, v in counts.items()} == {
        ("DE", "ios"): 19, ("DE", "web"): 18, ("FR", "android"): 18, (None, "web"): 1}  # v1: no countries, skipped

    sequences = spark.createDataFrame(context_rows(), SEQUENCES)
    cfg = AugmentConfig(partitions=2, branches=(
        BranchConfig(chain="time_insert", params={"time_insert": {"rate": 0.2}}),
        BranchConfig(chain="context_swap", params={"context_swap": {"rate": 1.0}})))
    rows = augment_sequences(sequences, cfg, 7, "run", "cfg").collect()
    real = {r.user_id: r for r in rows if r.origin == REAL_CHAIN}
    assert len(real) == 6 and len(rows) == 18
    for r in rows:
        parent = real[r.user_id]
        if r.operator_chain == "time_insert":  # one item into one of the two 2-hour gaps
            assert r.length == 10 and list(r.timestamps) == sorted(r.timestamps)
            new = next(k for k, t in enumerate(r.timestamps) if t not in parent.timestamps)
            assert new in (3, 6) and r.session_ids[new] == r.session_ids[new - 1]
            assert r.timestamps[new] - r.timestamps[new - 1] >= dt.timedelta(minutes=29)
        elif r.operator_chain == "context_swap":
            assert list(r.item_ids) == list(parent.item_ids)
            for s in set(r.session_ids):
                pairs = {(c, d) for c, d, x in zip(r.countries, r.devices, r.session_ids) if x == s}
                assert len(pairs) == 1 and pairs <= PAIRS
