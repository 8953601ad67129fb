"""The clean stage's per-user steps without Spark: hand-made events with known answers."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from recaug_spark.config import BotConfig, CleanConfig
from recaug_spark.stages import clean_steps as S

T0 = dt.datetime(2024, 3, 1, 10, 0, 0)
RAW = pa.schema([
    ("user_id", pa.string()), ("item_id", pa.string()), ("event_type", pa.string()),
    ("ts", pa.timestamp("us", tz="UTC")), ("quantity", pa.int32()), ("price", pa.float64()),
    ("session_id", pa.string()), ("order_id", pa.string()), ("country", pa.string()), ("device", pa.string()),
    ("source", pa.string()), ("dt", pa.date32()),
])


def ev(user, item, seconds, event_type="view", quantity=1, price=1.0, order_id=None, source_session=None):
    ts = T0 + dt.timedelta(seconds=seconds)
    return (user, item, event_type, ts, quantity, price, source_session, order_id, "gb", "web", "test", ts.date())


def table(rows) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(RAW.names, row)) for row in rows], schema=RAW)


def annotated(rows, cfg=CleanConfig(), **kwargs) -> pa.Table:
    return S.annotate(S.sort_in_time_order(table(rows)), cfg, **kwargs)


def by_key(result: pa.Table, *columns):
    """{(user_id, item_id, seconds after T0, event_type): [value of columns per row]}."""
    out = {}
    for row in result.to_pylist():
        key = (row["user_id"], row["item_id"], int((row["ts"].replace(tzinfo=None) - T0).total_seconds()),
               row["event_type"])
        value = tuple(row[c] for c in columns)
        out.setdefault(key, []).append(value if len(value) > 1 else value[0])
    return out


# ---- duplicates -------------------------------------------------------------------------------

def test_exact_and_near_duplicates():
    rows = [
        ev("u", "a", 0), ev("u", "a", 5), ev("u", "a", 30), ev("u", "a", 30),  # near dup at +5, exact at +30
        ev("u", "a", 2, "cart"),  # another type: its own chain
        ev("u", "b", 3),  # another item
        ev("v", "a", 1), ev("v", "a", 9), ev("v", "a", 18),  # a chain: each within 10 s of the previous
        ev("w", "a", 0, "purchase", quantity=1), ev("w", "a", 0, "purchase", quantity=2),  # not exact: near
        ev("x", "a", 0, price=float("nan")), ev("x", "a", 0, price=float("nan")),  # NaN equals NaN
        ev("y", "a", 0, price=None), ev("y", "a", 0, price=None),  # null equals null
    ]
    out = by_key(annotated(rows, CleanConfig(near_duplicate_seconds=10)), S.REASON)
    assert out[("u", "a", 0, "view")] == [None]
    assert out[("u", "a", 5, "view")] == ["near_duplicate"]
    assert out[("u", "a", 30, "view")] == [None, "exact_duplicate"]  # the first copy stays
    assert out[("u", "a", 2, "cart")] == [None] and out[("u", "b", 3, "view")] == [None]
    assert [out[("v", "a", s, "view")] for s in (1, 9, 18)] == [[None], ["near_duplicate"], ["near_duplicate"]]
    assert out[("w", "a", 0, "purchase")] == [None, "near_duplicate"]
    assert out[("x", "a", 0, "view")] == out[("y", "a", 0, "view")] == [None, "exact_duplicate"]

    disabled = by_key(annotated(rows, CleanConfig(near_duplicate_seconds=0)), S.REASON)
    assert disabled[("u", "a", 5, "view")] == [None]
    assert disabled[("u", "a", 30, "view")] == [None, "exact_duplicate"]


# ---- bots -------------------------------------------------------------------------------------

def test_bot_users_by_minute_and_by_day_counted_after_dedup():
    cfg = CleanConfig(bots=BotConfig(max_events_per_minute=3, max_events_per_day=5))
    rows = (
        [ev("burst", f"i{k}", 50 + 10 * k) for k in range(4)]  # 4 events within 30 s, across a minute edge
        + [ev("steady", f"i{k}", 30 * k) for k in range(4)]  # never more than 3 in 60 s
        + [ev("edge", f"i{k}", 60 * k // 2) for k in range(3)] + [ev("edge", "i3", 60)]  # 0, 30, 60 s... and 60 s
        + [ev("daily", f"i{k}", 3600 * k) for k in range(6)]  # 6 in one day
        + [ev("two_days", f"i{k}", 3600 * k + 86_400 * (k % 2)) for k in range(10)]  # 5 per day
        + [ev("dups", f"i{k}", k) for k in range(3)] + [ev("dups", "i0", 0)]  # 3 + an exact duplicate
        + [ev("basket", f"i{k}", 500, "purchase", 1, 1.0, "o1") for k in range(8)]  # one order's 8 lines: one action
        + [ev("views_at_once", f"i{k}", 500) for k in range(4)]  # 4 views in one second: 4 actions
    )
    reasons = {(r["user_id"], r[S.REASON]) for r in annotated(rows, cfg).to_pylist()}
    assert reasons == {
        ("burst", "bot_user"), ("daily", "bot_user"), ("steady", None), ("two_days", None),
        ("edge", None),  # 30, 60, 60 s in the window ending at 60 s: 3; the event at 0 s is 60 s away
        ("dups", None), ("dups", "exact_duplicate"),  # the duplicate keeps its first reason
        ("basket", None), ("views_at_once", "bot_user"),
    }


def test_the_minute_window_spans_59_999_999_microseconds_back():
    cfg = CleanConfig(bots=BotConfig(max_events_per_minute=1, max_events_per_day=100))
    at = [T0, T0 + dt.timedelta(microseconds=59_999_999), T0 + dt.timedelta(seconds=200),
          T0 + dt.timedelta(seconds=260)]
    rows = [("close", "a", "view", at[0], 1, 1.0, None, None, "gb", "web", "t", T0.date()),
            ("close", "b", "view", at[1], 1, 1.0, None, None, "gb", "web", "t", T0.date()),
            ("apart", "a", "view", at[2], 1, 1.0, None, None, "gb", "web", "t", T0.date()),
            ("apart", "b", "view", at[3], 1, 1.0, None, None, "gb", "web", "t", T0.date())]
    reasons = {r["user_id"]: r[S.REASON] for r in annotated(rows, cfg).to_pylist()}
    assert reasons == {"close": "bot_user", "apart": None}


# ---- returns ----------------------------------------------------------------------------------

def test_returns_net_against_earlier_purchases_oldest_first():
    rows = [
        ev("u", "a", 0, "purchase", 6), ev("u", "a", 100, "return", 2),  # → purchase 4, return netted
        ev("u", "b", 0, "purchase", 2), ev("u", "b", 100, "return", -2),  # credit-note sign: both go
        ev("u", "c", 100, "return", 1),  # nothing bought: unmatched
        ev("u", "d", 50, "return", 1), ev("u", "d", 100, "purchase", 3),  # return before the purchase
        ev("u", "e", 0, "purchase", 2), ev("u", "e", 10, "purchase", 3), ev("u", "e", 20, "return", 4),  # FIFO
        ev("u", "f", 0, "purchase", 2), ev("u", "f", 10, "return", 3),  # partly matched
        ev("u", "g", 0, "purchase", 1), ev("u", "g", 0, "return", 1),  # same timestamp: purchase first
        ev("u", "h", 0, "purchase", None), ev("u", "h", 5, "return", 1),  # a null quantity is one unit
        ev("u", "k", 0, "purchase", 2), ev("u", "k", 10, "return", 1), ev("u", "k", 20, "return", 1),
        ev("v", "a", 100, "return", 1),  # another user's purchase does not count
    ]
    out = by_key(annotated(rows, CleanConfig(near_duplicate_seconds=0)), "quantity", S.REASON)
    assert out[("u", "a", 0, "purchase")] == [(4, None)]
    assert out[("u", "a", 100, "return")] == [(2, "return_netted")]
    assert out[("u", "b", 0, "purchase")] == [(2, "returned")]
    assert out[("u", "b", 100, "return")] == [(-2, "return_netted")]
    assert out[("u", "c", 100, "return")] == [(1, "unmatched_return")]
    assert out[("u", "d", 50, "return")] == [(1, "unmatched_return")]
    assert out[("u", "d", 100, "purchase")] == [(3, None)]
    assert out[("u", "e", 0, "purchase")] == [(2, "returned")]  # the oldest goes first
    assert out[("u", "e", 10, "purchase")] == [(1, None)]
    assert out[("u", "e", 20, "return")] == [(4, "return_netted")]
    assert out[("u", "f", 0, "purchase")] == [(2, "returned")]
    assert out[("u", "f", 10, "return")] == [(3, "unmatched_return")]
    assert out[("u", "g", 0, "purchase")] == [(1, "returned")] and out[("u", "g", 0, "return")] == [(1, "return_netted")]
    assert out[("u", "h", 0, "purchase")] == [(None, "returned")]
    assert out[("u", "k", 0, "purchase")] == [(2, "returned")]  # two returns of one unit each
    assert out[("u", "k", 10, "return")] == out[("u", "k", 20, "return")] == [(1, "return_netted")]
    assert out[("v", "a", 100, "return")] == [(1, "unmatched_return")]


def test_bot_users_are_not_netted_and_netting_can_be_off():
    cfg = CleanConfig(bots=BotConfig(max_events_per_minute=2, max_events_per_day=100))
    rows = [ev("bot", "a", 0, "purchase", 2), ev("bot", "a", 1, "return", 1), ev("bot", "b", 2)]
    out = by_key(annotated(rows, cfg), "quantity", S.REASON)
    assert out[("bot", "a", 0, "purchase")] == [(2, "bot_user")]  # untouched quantity, one reason
    assert out[("bot", "a", 1, "return")] == [(1, "bot_user")]

    rows = [ev("u", "a", 0, "purchase", 6), ev("u", "a", 100, "return", 2)]
    out = by_key(annotated(rows, CleanConfig(net_returns=False)), "quantity", S.REASON)
    assert out == {("u", "a", 0, "purchase"): [(6, None)], ("u", "a", 100, "return"): [(2, None)]}


# ---- sessions and counts ----------------------------------------------------------------------

def test_sessions_split_on_gaps_longer_than_the_threshold():
    rows = [ev("u", "a", 0), ev("u", "b", 600), ev("u", "c", 600 + 2400), ev("u", "d", 600 + 2400 + 1800),
            ev("v", "a", 0)]
    out = by_key(annotated(rows, CleanConfig(session_gap_minutes=30)), S.SESSION)
    assert [out[("u", i, s, "view")] for i, s in (("a", 0), ("b", 600), ("c", 3000), ("d", 4800))] == [
        ["u-1"], ["u-1"], ["u-2"], ["u-2"]  # gaps 10, 40, exactly 30 minutes
    ]
    assert out[("v", "a", 0, "view")] == ["v-1"]


def test_removed_events_neither_start_nor_bridge_sessions():
    rows = table([ev("u", "a", 0), ev("u", "b", 1500), ev("u", "c", 3000)])  # 25 + 25 minutes
    rows = rows.append_column(S.REASON, pa.array([None, "bot_user", None], pa.string()))
    result = S.annotate(rows, CleanConfig(session_gap_minutes=30), remove=False)
    out = by_key(result, S.SESSION, S.REASON)
    assert out[("u", "a", 0, "view")] == [("u-1", None)] and out[("u", "b", 1500, "view")] == [(None, "bot_user")]
    assert out[("u", "c", 3000, "view")] == [("u-2", None)]  # the removed event does not bridge a 50 minute gap


def test_sequence_counts_cover_kept_sequence_events_only():
    rows = [ev("u", "a", 0), ev("u", "a", 1), ev("u", "b", 60, "return"), ev("u", "c", 120, "cart"),
            ev("u", "d", 180, "purchase")]
    out = by_key(annotated(rows), S.REASON, S.SEQUENCE_EVENTS, S.SEQUENCE_RANK)
    assert out[("u", "a", 0, "view")] == [(None, 3, 1)]
    assert out[("u", "a", 1, "view")] == [("near_duplicate", 3, 1)]  # not counted
    assert out[("u", "b", 60, "return")] == [("unmatched_return", 3, 1)]
    assert out[("u", "c", 120, "cart")] == [(None, 3, 2)] and out[("u", "d", 180, "purchase")] == [(None, 3, 3)]


def test_unknown_reasons_are_refused():
    rows = table([ev("u", "a", 0)]).append_column(S.REASON, pa.array(["lost"], pa.string()))
    with pytest.raises(ValueError, match="unknown removal reason 'lost'"):
        S.annotate(rows, CleanConfig(), remove=False)


def test_empty_tables_keep_their_schema():
    result = S.annotate(table([]), CleanConfig())
    assert result.num_rows == 0 and result.column_names == [*RAW.names, S.REASON, S.SESSION, "_n", "_k"]


# ---- order and batching -----------------------------------------------------------------------

def test_time_order_breaks_ties_by_item_then_type_rank():
    rows = [ev("u", "b", 0), ev("u", "a", 0, "return"), ev("u", "a", 0, "purchase"), ev("u", "a", 0, "cart"),
            ev("t", "z", 5)]
    ordered = S.sort_in_time_order(table(rows))
    assert list(zip(ordered["user_id"].to_pylist(), ordered["item_id"].to_pylist(),
                    ordered["event_type"].to_pylist())) == [
        ("t", "z", "view"), ("u", "a", "cart"), ("u", "a", "purchase"), ("u", "a", "return"), ("u", "b", "view"),
    ]


def test_whole_users_never_splits_a_user_across_tables():
    ordered = S.sort_in_time_order(table([ev(u, f"i{k}", k) for u in "abc" for k in range(5)]))
    batches = [*ordered.slice(0, 3).to_batches(), *ordered.slice(3, 0).to_batches(),
               *ordered.slice(3, 9).to_batches(), *ordered.slice(12).to_batches()]  # a: 3+2, b: 5 in one, c: 2+…
    tables = list(S.whole_users(batches))
    assert sum(t.num_rows for t in tables) == 15
    owners = [set(t["user_id"].to_pylist()) for t in tables]
    assert all(not (a & b) for i, a in enumerate(owners) for b in owners[i + 1:])  # no user in two tables
    assert set().union(*owners) == {"a", "b", "c"}
    whole = S.annotate(ordered, CleanConfig())
    pieces = pa.concat_tables([S.annotate(t, CleanConfig()) for t in tables])
    assert pieces.equals(whole)  # batching does not change a single value


# ---- sequences --------------------------------------------------------------------------------

def test_sequences_cut_each_users_events_into_lists_in_order():
    rows = table([ev("a", "x", 0), ev("a", "y", 60, "cart"), ev("b", "z", 5), ev("c", "x", 1), ev("c", "z", 2)])
    result = S.sequences_of(S.sort_in_time_order(rows)).to_pylist()
    assert [(r["user_id"], r["item_ids"], r["event_types"], r["length"]) for r in result] == [
        ("a", ["x", "y"], ["view", "cart"], 2), ("b", ["z"], ["view"], 1), ("c", ["x", "z"], ["view", "view"], 2),
    ]
    assert [t.replace(tzinfo=None) for t in result[0]["timestamps"]] == [T0, T0 + dt.timedelta(seconds=60)]
    assert result[0]["countries"] == ["gb", "gb"] and result[2]["session_ids"] == [None, None]


def test_sequences_refuse_users_out_of_order():
    rows = table([ev("b", "x", 0), ev("a", "y", 1)])
    with pytest.raises(ValueError, match="ascending user_id"):
        S.sequences_of(rows)
    with pytest.raises(ValueError, match="ascending user_id"):
        S.sequences_of(table([ev("a", "x", 0), ev("b", "y", 1), ev("a", "z", 2)]))
