"""Vectorized building blocks shared by the operator modules.

Selections (which elements of each sequence an operator touches), session and time arithmetic on
flat batches, keyed sampling by inverse CDF, and the parameter and state types that several
operator modules use (rate-based operators, session-aware operators, operators that draw items
from the catalog). Everything works on whole batches at once: no Python loop over rows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from recaug_spark.augment.base import Augmenter, Draws, FitContext, Params
from recaug_spark.augment.batch import Edit, SequenceBatch, offsets_from_lengths, ranges

MINUTE_US = 60_000_000


# ---- sampling


def pick(u, n):
    """The index in ``0 .. n-1`` that a uniform ``u`` in [0, 1) falls on (never ``n``, whatever the
    rounding); element-wise for arrays. A scalar stays a Python int: the text operators pick one
    word at a time."""
    if not isinstance(u, np.ndarray):
        return min(int(u * n), n - 1)
    return np.minimum((u * n).astype(np.int64), n - 1)


def inverse_cdf(cumulative: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Indexes drawn by uniforms ``u`` from cumulative shares ``cumulative`` (non-decreasing, last 1)."""
    return np.minimum(np.searchsorted(cumulative, u, side="right"), len(cumulative) - 1)


def random_start(draws: Draws, lengths: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Per sequence, a uniformly drawn start of a window of ``width`` slots among ``lengths``."""
    return np.floor(draws.per_sequence("start") * (lengths - width + 1)).astype(np.int64)


# ---- choosing elements inside each sequence


def quantize(u: np.ndarray) -> np.ndarray:
    """uint16 keys ordered like ``u``: [0, 1) onto 0..65534 (top 16 bits), >= 1 onto 65535."""
    return (np.clip(u, 0.0, 1.0) * 65535.0).astype(np.uint16)


def top16(bits: np.ndarray) -> np.ndarray:
    """The top 16 of 64 random bits: a uint16 sort key.

    On a little-endian machine they are the last of each value's four uint16 words: copied from a
    strided view, without the shifted uint64 array in between."""
    if bits.dtype == np.uint64 and bits.ndim == 1 and bits.flags.c_contiguous and sys.byteorder == "little":
        return bits.view(np.uint16)[3::4].copy()
    return (bits >> np.uint64(48)).astype(np.uint16)


def element_keys(draws: Draws, tag: str, batch: SequenceBatch) -> np.ndarray:
    """One uint16 sort key per element: the top bits of its keyed draw (``draws.per_element``'s)."""
    return top16(draws.bits(tag, batch.sequence_of_element, batch.position_in_sequence))


def grouped_argsort(keys: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """The stable argsort of (group, key), for uint16 ``keys`` and non-decreasing ``groups``.

    Numpy's stable sort of 16-bit integers is a radix sort: one pass on the keys, one on the groups.
    """
    order = np.argsort(keys, kind="stable")
    group_keys = groups.astype(np.uint16) if n_groups <= 1 << 16 else groups
    return order[np.argsort(group_keys[order], kind="stable")]


def select(keys: np.ndarray, batch: SequenceBatch, counts: np.ndarray) -> np.ndarray:
    """Boolean mask choosing ``counts[i]`` elements of sequence i: those with the smallest uint16 keys
    (ties by position). Two linear-time radix passes instead of a comparison sort."""
    order = grouped_argsort(keys, batch.sequence_of_element, len(batch))
    # Sorting by sequence first leaves each sequence's elements at its own offsets, smallest keys
    # first: the chosen ones are the first counts[i] of them.
    chosen = np.zeros(len(order), dtype=bool)
    chosen[order[ranges(batch.offsets[:-1], np.clip(counts, 0, batch.lengths))]] = True
    return chosen


def select_per_sequence(u: np.ndarray, batch: SequenceBatch, counts: np.ndarray) -> np.ndarray:
    """Boolean mask choosing exactly ``counts[i]`` elements of sequence i: those with the smallest u."""
    return select(quantize(u), batch, counts)


def rank_in_group(group: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """0-based rank of each entry inside its group, ordered by ``keys`` (first key most significant)."""
    order = np.lexsort((*reversed(keys), group))
    sorted_group = group[order]
    rank = np.empty(len(group), dtype=np.int64)
    rank[order] = np.arange(len(group), dtype=np.int64) - np.searchsorted(sorted_group, sorted_group)
    return rank


class RateParams(Params):
    rate: float = Field(0.2, gt=0, le=1, description="share of each sequence's items affected")
    min_length: int = Field(2, ge=1, description="shorter sequences are left unchanged")


def rate_counts(batch: SequenceBatch, rate: float, min_length: int, keep_one: bool = True) -> np.ndarray:
    """Elements affected per sequence: ``floor(rate * L)`` (at most ``L - 1`` with ``keep_one``),
    0 for sequences shorter than ``min_length``."""
    lengths = batch.lengths
    counts = np.floor(rate * lengths).astype(np.int64)
    if keep_one:
        counts = np.minimum(counts, lengths - 1)
    return np.where(lengths >= min_length, np.maximum(counts, 0), 0)


# ---- edits


def identity(batch: SequenceBatch) -> Edit:
    """The edit that leaves a batch as it is."""
    return Edit(batch.offsets.copy(), np.arange(batch.offsets[-1], dtype=np.int64))


def keep(batch: SequenceBatch, kept: np.ndarray) -> Edit:
    """The edit keeping the flat elements where ``kept`` is True, in order."""
    lengths = np.bincount(batch.sequence_of_element[kept], minlength=len(batch))
    return Edit(offsets_from_lengths(lengths), np.flatnonzero(kept).astype(np.int64))


# ---- time and sessions


def first_in_sequence(batch: SequenceBatch) -> np.ndarray:
    """True for each flat element that opens its sequence."""
    first = np.zeros(int(batch.offsets[-1]), dtype=bool)
    first[batch.offsets[:-1][batch.lengths > 0]] = True
    return first


def gaps(batch: SequenceBatch) -> np.ndarray:
    """For each flat element, the time (µs) since the previous element of its sequence; 0 for the first."""
    out = np.zeros(int(batch.offsets[-1]), dtype=np.int64)
    out[1:] = np.diff(batch.timestamps)
    out[first_in_sequence(batch)] = 0
    return out


def bounds(batch: SequenceBatch) -> tuple[np.ndarray, np.ndarray]:
    """First and last timestamp of each sequence (0 for empty sequences)."""
    nonempty = batch.lengths > 0
    first = np.zeros(len(batch), dtype=np.int64)
    last = np.zeros(len(batch), dtype=np.int64)
    first[nonempty] = batch.timestamps[batch.offsets[:-1][nonempty]]
    last[nonempty] = batch.timestamps[batch.offsets[1:][nonempty] - 1]
    return first, last


def session_starts(batch: SequenceBatch, gap_minutes: float) -> np.ndarray:
    """True for each flat element that opens a session.

    An element opens a session when it opens its sequence, when its session id differs from the
    previous element's, or, where either id is null (or the batch has no session ids), when more
    than ``gap_minutes`` passed since the previous element.
    """
    n = int(batch.offsets[-1])
    first = first_in_sequence(batch)
    by_gap = gaps(batch) > gap_minutes * MINUTE_US
    if batch.session_ids is None or n < 2:
        return first | by_gap
    ids = batch.session_ids
    previous, current = ids.slice(0, n - 1), ids.slice(1)
    known = np.zeros(n, dtype=bool)
    known[1:] = pc.and_(pc.is_valid(previous), pc.is_valid(current)).to_numpy(zero_copy_only=False)
    changed = np.zeros(n, dtype=bool)
    changed[1:] = pc.fill_null(pc.not_equal(current, previous), False).to_numpy(zero_copy_only=False)
    return first | np.where(known, changed, by_gap)


def session_numbers(batch: SequenceBatch, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(global session index per element, session number inside its sequence, sessions per sequence)."""
    global_index = np.cumsum(starts, dtype=np.int64) - 1
    per_sequence = np.bincount(batch.sequence_of_element[starts], minlength=len(batch)).astype(np.int64)
    number = global_index - offsets_from_lengths(per_sequence)[:-1][batch.sequence_of_element]
    return global_index, number, per_sequence


class SessionParams(Params):
    session_gap_minutes: float = Field(30.0, gt=0, description="where session ids are null, a longer gap "
                                       "opens a new session")


# ---- drawing items from the catalog


@dataclass(frozen=True)
class ItemVocabulary:
    """The catalog as seen by insert/substitute: item ids and their popularity (fitted state)."""

    items: pa.Array  # string item ids
    cumulative: np.ndarray  # cumulative popularity in (0, 1], same order

    @classmethod
    def from_counts(cls, items, counts) -> "ItemVocabulary":
        counts = np.asarray(counts, dtype=np.float64)
        return cls(pa.array(list(items), type=pa.string()), np.cumsum(counts) / counts.sum())

    def sample(self, u: np.ndarray, sampling: str) -> np.ndarray:
        """Indexes into ``items`` for uniforms ``u``: uniformly, or in proportion to popularity."""
        if sampling == "uniform":
            return pick(u, len(self.items))
        return inverse_cdf(self.cumulative, u)


def fit_vocabulary(sequences) -> ItemVocabulary:
    """Item popularity in the training sequences (a Spark DataFrame with an ``item_ids`` column)."""
    from pyspark.sql import functions as F

    counts = (
        sequences.select(F.explode("item_ids").alias("item_id")).groupBy("item_id").count()
        .orderBy("item_id").toPandas()
    )
    return ItemVocabulary.from_counts(counts["item_id"], counts["count"])


class CatalogParams(RateParams):
    sampling: Literal["uniform", "popularity"] = Field(
        "popularity", description="how catalog items are drawn: uniformly, or in proportion to interactions")


class CatalogAugmenter(Augmenter):
    """Operators that draw new items from the catalog: their state is the item vocabulary."""

    Params = CatalogParams

    def fit(self, context: FitContext) -> ItemVocabulary:
        return fit_vocabulary(context.sequences)
