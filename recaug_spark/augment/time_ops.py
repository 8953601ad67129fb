"""Time-aware sequence operators: they read event timestamps and session boundaries.

Timestamps are int64 microseconds since the epoch, UTC, non-decreasing inside each sequence (as in
the ``sequences`` table). Every operator keeps them non-decreasing, keeps session ids attached to
their events, and draws its randomness per (user key, copy, position or session number), never
per batch. Sessions are runs of equal session ids; where an id is missing (null, or no session
column at all), a time gap longer than ``session_gap_minutes`` opens a new session instead.

Example::

    >>> from recaug_spark.augment.base import Draws
    >>> from recaug_spark.augment.registry import build
    >>> from recaug_spark.augment.batch import SequenceBatch, apply_edit
    >>> minute = 60_000_000
    >>> batch = SequenceBatch.from_lists([1], [list("abc")], timestamps=[[0, minute, 2 * minute]])
    >>> shifted = apply_edit(batch, build("time_shift", {"max_weeks": 1}).plan(batch, Draws(7, "s", batch.keys), None))
    >>> bool(abs(shifted.timestamps[0]) == 7 * 24 * 60 * minute)
    True
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from recaug_spark.augment.base import Augmenter, Params, box_muller, register
from recaug_spark.augment.batch import Edit, offsets_from_lengths
from recaug_spark.augment.kernels import (
    MINUTE_US,
    CatalogAugmenter,
    CatalogParams,
    ItemVocabulary,
    SessionParams,
    bounds,
    first_in_sequence,
    gaps,
    identity,
    keep,
    pick,
    random_start,
    rank_in_group,
    session_numbers,
    session_starts,
)

WEEK_US = 7 * 24 * 60 * MINUTE_US


@register
class TimeInsert(CatalogAugmenter):
    """Insert ``max(1, floor(rate * L))`` catalog items into the largest time gaps of each sequence.

    Only gaps of at least ``min_gap_minutes`` receive an item, at most one each (largest first,
    ties broken at random); a sequence without such a gap is left unchanged. The new item's
    timestamp is drawn inside the middle half of its gap; its event type, context and session id
    are those of the element before it. Items are drawn from the catalog uniformly or by
    popularity (``sampling``), like ``insert``.

    When it helps: a long pause is where a user most plausibly did something the log missed
    (another device, another shop); ``insert`` puts items anywhere, even inside a burst of clicks.
    """

    name = "time_insert"
    needs_real_time = True

    class Params(CatalogParams):
        min_gap_minutes: float = Field(30.0, gt=0, description="smallest gap that may receive an item")

    def plan(self, batch, draws, state: ItemVocabulary) -> Edit:
        p = self.params
        lengths = batch.lengths
        seq, pos = batch.sequence_of_element, batch.position_in_sequence
        gap = gaps(batch)
        eligible = ~first_in_sequence(batch) & (gap >= p.min_gap_minutes * MINUTE_US)
        eligible &= lengths[seq] >= p.min_length
        counts = np.maximum(1, np.floor(p.rate * lengths).astype(np.int64))
        candidates = np.flatnonzero(eligible)  # flat index of the element after each eligible gap
        rank = rank_in_group(seq[candidates], -gap[candidates], draws.per_element("tie", batch)[candidates])
        after = candidates[rank < counts[seq[candidates]]]
        new_seq, new_pos = seq[after], pos[after]
        keys = batch.keys[new_seq]
        fraction = 0.25 + 0.5 * draws.draw("time", keys, new_pos)
        new_ts = batch.timestamps[after - 1] + np.floor(gap[after] * fraction).astype(np.int64)
        new_items = state.sample(draws.draw("item", keys, new_pos), p.sampling) + 1
        total = int(batch.offsets[-1])
        order = np.lexsort((np.concatenate([2 * pos, 2 * new_pos - 1]), np.concatenate([seq, new_seq])))
        positions = np.concatenate([np.arange(total, dtype=np.int64), after - 1])[order]
        codes = np.concatenate([np.full(total, -1, dtype=np.int64), new_items])[order]
        timestamps = np.concatenate([batch.timestamps, new_ts])[order]
        added = np.bincount(new_seq, minlength=len(batch))
        return Edit(offsets_from_lengths(lengths + added), positions, item_codes=codes, timestamps=timestamps)


@register
class TimeCrop(Augmenter):
    """Keep the events of a random time window lasting ``span`` of the sequence's time span.

    The window starts at a random event (one whose window still fits before the last event) and
    keeps every event up to ``span * (last - first)`` later, so it is never empty. Unlike
    ``crop`` (a share of the *events*), the result covers a share of the *time*: a burst of 50
    clicks in one evening and one purchase a month later are not weighted alike.

    When it helps: histories with very uneven activity, where a count-based window would almost
    always land inside the densest burst.
    """

    name = "time_crop"
    needs_real_time = True

    class Params(Params):
        span: float = Field(0.5, gt=0, le=1, description="share of the sequence's time span kept")
        min_length: int = Field(2, ge=1, description="shorter sequences are left unchanged")

    def plan(self, batch, draws, state=None) -> Edit:
        if batch.offsets[-1] == 0:
            return identity(batch)
        lengths = batch.lengths
        seq, t = batch.sequence_of_element, batch.timestamps
        first, last = bounds(batch)
        width = np.floor(self.params.span * (last - first)).astype(np.int64)
        fits = t <= (last - width)[seq]  # events a window may start at: a prefix of each sequence
        starts = np.maximum(np.bincount(seq[fits], minlength=len(batch)), 1)
        index = pick(draws.per_sequence("start"), starts)
        start = t[np.minimum(batch.offsets[:-1] + index, len(t) - 1)]
        inside = (t >= start[seq]) & (t <= (start + width)[seq])
        return keep(batch, inside | (lengths < self.params.min_length)[seq])


@register
class SessionCrop(Augmenter):
    """Keep a random run of ``max(1, floor(share * S))`` whole consecutive sessions (S sessions).

    Sessions are never cut in the middle. Sequences with fewer than ``min_sessions`` sessions are
    left unchanged.

    When it helps: session-based models learn from coherent visits; a count-based crop often
    starts or ends mid-session and teaches transitions that never happened within one visit.
    """

    name = "session_crop"
    needs_real_time = True

    class Params(SessionParams):
        share: float = Field(0.6, gt=0, le=1, description="share of the sessions kept")
        min_sessions: int = Field(2, ge=2, description="sequences with fewer sessions are left unchanged")

    def plan(self, batch, draws, state=None) -> Edit:
        starts = session_starts(batch, self.params.session_gap_minutes)
        _, number, sessions = session_numbers(batch, starts)
        kept = np.where(sessions >= self.params.min_sessions,
                        np.maximum(1, np.floor(self.params.share * sessions).astype(np.int64)), sessions)
        first = random_start(draws, sessions, kept)
        seq = batch.sequence_of_element
        return keep(batch, (number >= first[seq]) & (number < (first + kept)[seq]))


@register
class SessionReorder(Augmenter):
    """Shuffle the events inside every session; never move one across a session boundary.

    Items, event types and context move together; timestamps stay in their slots, so they remain
    non-decreasing and each session keeps its time span. Sessions shorter than ``min_length`` keep
    their order. (``reorder`` shuffles one window that may straddle two visits.)

    When it helps: the order of items viewed within one visit is mostly noise (tabs, comparisons),
    while the order of visits is signal.
    """

    name = "session_reorder"
    needs_real_time = True

    class Params(SessionParams):
        min_length: int = Field(2, ge=2, description="shorter sessions keep their order")

    def plan(self, batch, draws, state=None) -> Edit:
        starts = session_starts(batch, self.params.session_gap_minutes)
        session, _, _ = session_numbers(batch, starts)
        shuffled = np.bincount(session)[session] >= self.params.min_length
        key = np.where(shuffled, draws.per_element("shuffle", batch), batch.position_in_sequence.astype(np.float64))
        order = np.lexsort((key, session)).astype(np.int64)
        return Edit(batch.offsets.copy(), order, timestamps=batch.timestamps.copy())


@register
class TimeShift(Augmenter):
    """Shift a whole sequence by a random non-zero whole number of weeks, at most ``max_weeks``.

    Hour-of-day and day-of-week (UTC) of every event stay exactly the same, and so do all intervals.
    ``direction: past`` only moves sequences earlier, so no training event lands after the
    held-out targets.

    When it helps: time-aware models (time embeddings, recency features) that would otherwise
    memorize absolute dates instead of weekly and daily rhythms.
    """

    name = "time_shift"
    needs_real_time = True

    class Params(Params):
        max_weeks: int = Field(4, ge=1, description="largest shift, in weeks")
        direction: Literal["both", "past", "future"] = Field(
            "both", description="shift earlier, later or either; past keeps every event before the held-out targets")

    def plan(self, batch, draws, state=None) -> Edit:
        w = self.params.max_weeks
        u = draws.per_sequence("weeks")
        if self.params.direction == "both":
            j = np.minimum(np.floor(u * 2 * w).astype(np.int64), 2 * w - 1)
            weeks = j - w + (j >= w)  # -w .. -1, 1 .. w
        else:
            weeks = 1 + np.minimum(np.floor(u * w).astype(np.int64), w - 1)
            weeks = -weeks if self.params.direction == "past" else weeks
        timestamps = batch.timestamps + (weeks * WEEK_US)[batch.sequence_of_element]
        return Edit(batch.offsets.copy(), np.arange(batch.offsets[-1], dtype=np.int64), timestamps=timestamps)


@register
class TimeJitter(Augmenter):
    """Move each event's timestamp by at most ``max_minutes``, keeping the order of events.

    Noise is uniform in ±max_minutes, or Gaussian with σ = max_minutes / 2 clipped there. Each
    event is then held between the midpoints to its neighbours, so timestamps stay non-decreasing
    and no event passes another. Hour-of-day and day-of-week are kept approximately: only events
    within ``max_minutes`` of an hour (or midnight) can change hour (or day); use ``time_shift``
    to keep them exactly.

    When it helps: time-aware models that over-fit exact intervals between clicks, which are
    mostly logging and latency noise at the scale of minutes.
    """

    name = "time_jitter"
    needs_real_time = True

    class Params(Params):
        max_minutes: float = Field(10.0, gt=0, le=24 * 60, description="largest move of one timestamp")
        distribution: Literal["uniform", "gaussian"] = Field(
            "uniform", description="uniform in ±max_minutes, or Gaussian with σ = max_minutes / 2 (clipped)")

    def plan(self, batch, draws, state=None) -> Edit:
        t = batch.timestamps
        m = round(self.params.max_minutes * MINUTE_US)
        u = draws.per_element("jitter", batch)
        if self.params.distribution == "uniform":
            delta = (2 * u - 1) * m
        else:
            z = box_muller(u, draws.per_element("angle", batch))
            delta = np.clip(z * m / 2, -m, m)
        low, high = t - m, t + m
        first = first_in_sequence(batch)
        if len(t) > 1:
            midpoints = t[:-1] + (t[1:] - t[:-1]) // 2  # between element i and i + 1
            low[1:] = np.where(first[1:], low[1:], np.maximum(low[1:], midpoints))
            high[:-1] = np.where(first[1:], high[:-1], np.minimum(high[:-1], midpoints))
        timestamps = np.minimum(np.maximum(t + np.round(delta).astype(np.int64), low), high)
        return Edit(batch.offsets.copy(), np.arange(len(t), dtype=np.int64), timestamps=timestamps)
