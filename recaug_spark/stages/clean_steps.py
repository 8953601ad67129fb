"""The clean stage's per-user event steps on Arrow tables, without Spark.

:func:`annotate` runs duplicates, bot users, returns netting, sessions and the split's counts in
one vectorized pass (numpy and pyarrow compute) over a table that holds **whole users in time
order** — what the stage gets from one shuffle by user and one sort within partitions, streamed
through :func:`whole_users`. The rules (precedence, FIFO netting, session gaps) are those of
:mod:`recaug_spark.stages.clean`, whose docstring is the reference.

Time order: ``user_id``, ``ts``, ``item_id``, event type rank (view < cart < purchase < return),
``event_type``, then :data:`TIEBREAK`; nulls first, strings by their UTF-8 bytes (Spark's order;
:func:`sort_in_time_order` is the same order in pyarrow). The key holds every ``events_raw``
column, so exact copies of a row are adjacent and an adjacent comparison finds them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recaug_spark.config import BotConfig, CleanConfig
from recaug_spark.schemas import EVENTS_RAW

REASON = "_reason"
SESSION = "_session"  # the computed session id (``session_id`` keeps the source's)
SEQUENCE_EVENTS = "_n"  # the user's kept sequence events
SEQUENCE_RANK = "_k"  # the running count of them (1-based on a sequence event)

# One tuple per step, in precedence order; a step sees events untouched by every earlier step.
STEPS: tuple[tuple[str, ...], ...] = (
    ("exact_duplicate",),
    ("near_duplicate",),
    ("bot_user",),
    ("returned", "return_netted", "unmatched_return"),
    ("kcore",),
)
REASONS: tuple[str, ...] = tuple(reason for step in STEPS for reason in step)
TYPE_RANKS = {"view": 0, "cart": 1, "purchase": 2, "return": 3}
TIEBREAK = ("order_id", "quantity", "price", "session_id", "country", "device", "source", "dt")
RAW_COLUMNS = tuple(EVENTS_RAW.fieldNames())

_CODES = {reason: code for code, reason in enumerate(REASONS, start=1)}  # 0 = kept
_LABELS = pa.array([None, *REASONS], pa.string())
_US_PER_DAY = 86_400_000_000
_DAY_BITS = 37  # 2**37 µs > one day: (group << 37) | µs-in-day is a sortable int64 key


def type_rank(event_type: pa.Array | pa.ChunkedArray) -> pa.Array:
    """0–3 for view, cart, purchase, return; 4 for anything else."""
    ranks = pc.index_in(event_type, value_set=pa.array(list(TYPE_RANKS)))
    return pc.fill_null(ranks, len(TYPE_RANKS))


def sort_in_time_order(table: pa.Table) -> pa.Table:
    """``table`` in time order (the order Spark's sort gives the stage; see the module docstring)."""
    keyed = table.append_column("__rank", type_rank(table["event_type"]))
    keys = ["user_id", "ts", "item_id", "__rank", "event_type"]
    for name in (c for c in TIEBREAK if c in table.column_names):
        if pa.types.is_floating(table.schema.field(name).type):  # Spark: null < numbers < NaN
            keyed = keyed.append_column(f"__nan_{name}", pc.is_nan(table[name]))
            keys.append(f"__nan_{name}")
        keys.append(name)
    order = pc.sort_indices(keyed, sort_keys=[(k, "ascending") for k in keys], null_placement="at_start")
    return table.take(order)


def whole_users(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.Table]:
    """Regroup a stream of batches sorted by ``user_id`` into tables that each hold whole users.

    A batch's last user may continue in the next batch: its rows wait for the next table. One
    user's rows are never split, however many batches they span.
    """
    pending: list[pa.RecordBatch] = []
    for batch in batches:
        if batch.num_rows == 0:
            continue
        users = batch.column("user_id")
        others = np.flatnonzero(~pc.equal(users, users[-1]).to_numpy(zero_copy_only=False))
        cut = int(others[-1]) + 1 if len(others) else 0  # where the last user's rows start
        if cut == 0:
            pending.append(batch)
            continue
        yield pa.Table.from_batches([*pending, batch.slice(0, cut)])
        pending = [batch.slice(cut)]
    if pending:
        yield pa.Table.from_batches(pending)


def annotate(table: pa.Table, cfg: CleanConfig, *, remove: bool = True) -> pa.Table:
    """``table`` (whole users, time order) with ``_reason``, ``_session``, ``_n`` and ``_k``.

    ``remove``: run the removal steps (duplicates, bots, netting — netting rewrites ``quantity``
    of partly returned purchases); ``False`` keeps the reasons the table already has (the k-core
    round trip) and only computes sessions and counts. Rows keep their order and count.

    Example::

        # views at t, t+5 s (a near duplicate) and t+45 min (a new session), gap 30 min
        annotate(sort_in_time_order(events), CleanConfig()).select(["_reason", "_session"])
    """
    table = table.combine_chunks()
    reason = _reason_codes(table)
    if table.num_rows == 0:
        return _with_outputs(table, reason, None, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    user, user_starts = _runs(table["user_id"])
    ts = table["ts"].cast(pa.int64()).to_numpy()
    event_type = table["event_type"]
    quantity = None
    if remove:
        _label(reason, _same_as_previous(table, [c for c in RAW_COLUMNS if c in table.column_names]), "exact_duplicate")
        item = pc.dictionary_encode(table["item_id"]).combine_chunks().indices.to_numpy()
        kind = type_rank(event_type).to_numpy()
        if cfg.near_duplicate_seconds > 0:
            near = _near_duplicates(user, item, kind, ts, reason == 0, cfg.near_duplicate_seconds * 1_000_000)
            _label(reason, near, "near_duplicate")
        _label(reason, _bot_user_events(user, ts, table["order_id"], reason == 0, cfg.bots), "bot_user")
        if cfg.net_returns:
            quantity = _net_returns(user, item, kind, table["quantity"], reason)
    ordinal = _session_ordinals(user, ts, reason == 0, cfg.session_gap_minutes * 60_000_000)
    is_sequence = (reason == 0) & pc.is_in(event_type, value_set=pa.array(list(cfg.sequence_event_types))).to_numpy(
        zero_copy_only=False)
    running = _running_sum(is_sequence.astype(np.int64), user, user_starts)
    per_user = np.bincount(user, weights=is_sequence, minlength=len(user_starts)).astype(np.int64)
    return _with_outputs(table, reason, quantity, ordinal, per_user[user], running)


SEQUENCE_FIELDS = (  # sequences list column ← event column
    ("item_ids", "item_id"), ("timestamps", "ts"), ("event_types", "event_type"),
    ("session_ids", "session_id"), ("countries", "country"), ("devices", "device"),
)


def sequences_of(table: pa.Table) -> pa.Table:
    """One row per user of ``table`` (whole users in time order): ``user_id``, a list column per
    :data:`SEQUENCE_FIELDS` holding the user's events in order, and ``length``.

    Raises when a user's rows are not adjacent, or users are not in ascending order (the input
    was not in the per-user pass's order).
    """
    table = table.combine_chunks()
    user, starts = _runs(table["user_id"])
    users = table["user_id"].take(pa.array(starts))
    if len(users) > 1 and pc.any(pc.less_equal(users.slice(1), users.slice(0, len(users) - 1))).as_py():
        raise ValueError("sequences_of needs whole users in ascending user_id order (the per-user pass's order)")
    offsets = pa.array(np.append(starts, table.num_rows), pa.int32())
    columns = {"user_id": users}
    for name, source in SEQUENCE_FIELDS:
        columns[name] = pa.ListArray.from_arrays(offsets, table[source].combine_chunks())
    columns["length"] = pa.array(np.diff(np.append(starts, table.num_rows)), pa.int32())
    return pa.table(columns)


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------

def _same_as_previous(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """True where every column equals the previous row's (nulls equal nulls, NaN equals NaN)."""
    n = table.num_rows
    same = np.ones(n - 1, bool)
    for name in columns:
        column = table[name]
        now, before = column.slice(1), column.slice(0, n - 1)
        equal = pc.fill_null(pc.equal(now, before), False)
        both_missing = pc.and_(pc.is_null(now, nan_is_null=True), pc.is_null(before, nan_is_null=True))
        same &= pc.or_(equal, both_missing).to_numpy(zero_copy_only=False)
    return np.concatenate([[False], same])


def _near_duplicates(user, item, kind, ts, present, window_us: int) -> np.ndarray:
    """Present events at most ``window_us`` after the previous present one of the same user,
    item and type (chains collapse onto their first event)."""
    rows = np.flatnonzero(present)
    key = (user[rows].astype(np.int64) * (int(item.max()) + 1) + item[rows]) * (len(TYPE_RANKS) + 1) + kind[rows]
    order = np.argsort(key, kind="stable")  # stable: time order within each (user, item, type)
    rows, key = rows[order], key[order]
    near = np.zeros(len(present), bool)
    near[rows[1:]] = (key[1:] == key[:-1]) & (ts[rows[1:]] - ts[rows[:-1]] <= window_us)
    return near


def _bot_user_events(user, ts, order_id, present, bots: BotConfig) -> np.ndarray:
    """Every event of a user with more than ``max_events_per_minute`` actions in a 60-second span
    of one UTC day, or more than ``max_events_per_day`` in one UTC day.

    An action is a present event, except an order line at the same instant as the previous line
    of that order (an invoice of 80 items is one action).
    """
    day = ts // _US_PER_DAY
    group, starts = _runs_of(np.concatenate([[True], (user[1:] != user[:-1]) | (day[1:] != day[:-1])]))
    same_order = pc.fill_null(pc.equal(order_id.slice(1), order_id.slice(0, len(ts) - 1)), False)
    same_line = (group[1:] == group[:-1]) & (ts[1:] == ts[:-1]) & same_order.to_numpy(zero_copy_only=False)
    action = present & ~np.concatenate([[False], same_line])
    actions_before = np.concatenate([[0], np.cumsum(action)])
    in_day = ts - day * _US_PER_DAY
    key = (group.astype(np.int64) << _DAY_BITS) | in_day  # sorted: rows are in (user, day, ts) order
    minute_start = (group.astype(np.int64) << _DAY_BITS) | np.maximum(in_day - 59_999_999, 0)
    per_minute = (actions_before[np.searchsorted(key, key, "right")]
                  - actions_before[np.searchsorted(key, minute_start, "left")])
    ends = np.append(starts[1:], len(ts))
    per_day = (actions_before[ends] - actions_before[starts])[group]
    burst = present & ((per_minute > bots.max_events_per_minute) | (per_day > bots.max_events_per_day))
    return (np.bincount(user, weights=burst) > 0)[user]


def _net_returns(user, item, kind, quantity: pa.Array, reason: np.ndarray) -> pa.Array:
    """Net returns against the same user's earlier purchases of the item, oldest first: labels
    ``returned`` / ``return_netted`` / ``unmatched_return`` in ``reason``; returns the quantities
    (partly returned purchases keep what is left)."""
    present = reason == 0
    is_purchase = present & (kind == TYPE_RANKS["purchase"])
    is_return = present & (kind == TYPE_RANKS["return"])
    if not is_return.any():
        return quantity
    key = user.astype(np.int64) * (int(item.max()) + 1) + item
    rows = np.flatnonzero(np.isin(key, key[is_return]) & (is_purchase | is_return))
    rows = rows[np.argsort(key[rows], kind="stable")]  # per (user, item), in time order
    units = np.abs(pc.fill_null(quantity, 1).to_numpy(zero_copy_only=False).astype(np.int64))
    kept = units.copy()
    for group in np.split(rows, np.flatnonzero(key[rows][1:] != key[rows][:-1]) + 1):
        for row, label in _net_fifo(group, is_return, kept):
            _label(reason, row, label)
    changed = is_purchase & (kept > 0) & (kept < units)
    return pc.if_else(pa.array(changed), pa.array(kept.astype(np.int32)), quantity)


def _net_fifo(rows: np.ndarray, is_return: np.ndarray, kept: np.ndarray) -> list[tuple[int, str]]:
    """One (user, item)'s events in time order: each return consumes the oldest purchases with
    units left (``kept`` is updated in place). Returns the (row, reason) labels."""
    labels, purchases = [], deque()
    for row in rows.tolist():
        if not is_return[row]:
            if kept[row] > 0:
                purchases.append(row)
            continue
        wanted = kept[row]
        while wanted and purchases:
            oldest = purchases[0]
            taken = min(wanted, kept[oldest])
            kept[oldest] -= taken
            wanted -= taken
            if kept[oldest] == 0:
                purchases.popleft()
                labels.append((oldest, "returned"))
        labels.append((row, "return_netted" if wanted == 0 else "unmatched_return"))
    return labels


def _session_ordinals(user, ts, alive, gap_us: int) -> np.ndarray:
    """1-based session number of each kept event within its user (0 for removed events): a new
    session at the user's first kept event and after every gap longer than ``gap_us``."""
    rows = np.flatnonzero(alive)
    ordinal = np.zeros(len(user), np.int64)
    if len(rows) == 0:
        return ordinal
    users, times = user[rows], ts[rows]
    first = np.concatenate([[True], users[1:] != users[:-1]])
    new = first | np.concatenate([[False], (times[1:] - times[:-1]) > gap_us])
    count = np.cumsum(new)
    ordinal[rows] = count - count[first][np.cumsum(first) - 1] + 1
    return ordinal


# --------------------------------------------------------------------------------------------
# Bookkeeping
# --------------------------------------------------------------------------------------------

def _label(reason: np.ndarray, where, label: str) -> None:
    """Give ``label`` to the events in ``where`` (mask or indices) that have no reason yet."""
    if isinstance(where, np.ndarray) and where.dtype == bool:
        reason[where & (reason == 0)] = _CODES[label]
    elif reason[where] == 0:
        reason[where] = _CODES[label]


def _reason_codes(table: pa.Table) -> np.ndarray:
    if REASON not in table.column_names:
        return np.zeros(table.num_rows, np.int8)
    codes = pc.index_in(table[REASON], value_set=_LABELS.slice(1))
    unknown = pc.and_(pc.is_valid(table[REASON]), pc.is_null(codes))
    if pc.any(unknown).as_py():
        bad = pc.filter(table[REASON], unknown)[0].as_py()
        raise ValueError(f"unknown removal reason {bad!r}; known: {list(REASONS)}")
    return (pc.fill_null(codes, -1).to_numpy() + 1).astype(np.int8)


def _runs(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(run index of each row, first row of each run) for a column whose equal values are adjacent."""
    n = len(column)
    change = np.ones(n, bool)
    if n > 1:
        change[1:] = pc.not_equal(column.slice(1), column.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return _runs_of(change)


def _runs_of(change: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.cumsum(change) - 1, np.flatnonzero(change)


def _running_sum(values: np.ndarray, run: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative sum of ``values`` restarting at every run."""
    total = np.cumsum(values)
    return total - (total - values)[starts][run]


def _with_outputs(table, reason, quantity, ordinal, sequence_events, sequence_rank) -> pa.Table:
    alive = pa.array(reason == 0)
    session = pc.if_else(
        alive, pc.binary_join_element_wise(table["user_id"], pc.cast(pa.array(ordinal), pa.string()), "-"),
        pa.scalar(None, pa.string()),
    )
    if quantity is not None:
        table = table.set_column(table.column_names.index("quantity"), "quantity", quantity)
    if REASON in table.column_names:
        table = table.drop_columns([REASON])
    return (table.append_column(REASON, _LABELS.take(pa.array(reason)))
            .append_column(SESSION, session)
            .append_column(SEQUENCE_EVENTS, pa.array(sequence_events, pa.int64()))
            .append_column(SEQUENCE_RANK, pa.array(sequence_rank, pa.int64())))
