"""Random sequence operators (CL4SRec / CoSeRec family), vectorized over whole batches.

Every operator leaves sequences shorter than its ``min_length`` unchanged, never empties a
sequence, and draws its randomness per (user key, copy, position), never per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from recaug_spark import rng
from recaug_spark.augment.base import Augmenter, Draws, Params, register
from recaug_spark.augment.batch import Edit, SequenceBatch, offsets_from_lengths, ranges


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
            return np.minimum((u * len(self.items)).astype(np.int64), len(self.items) - 1)
        return np.minimum(np.searchsorted(self.cumulative, u, side="right"), len(self.items) - 1)


def fit_vocabulary(sequences) -> ItemVocabulary:
    """Item popularity in the training sequences (a Spark DataFrame with an ``item_ids`` column)."""
    from pyspark.sql import functions as F

    counts = (
        sequences.select(F.explode("item_ids").alias("item_id")).groupBy("item_id").count()
        .orderBy("item_id").toPandas()
    )
    return ItemVocabulary.from_counts(counts["item_id"], counts["count"])


def select_per_sequence(u: np.ndarray, batch: SequenceBatch, counts: np.ndarray) -> np.ndarray:
    """Boolean mask choosing exactly ``counts[i]`` elements of sequence i: those with the smallest u."""
    seq = batch.sequence_of_element
    order = np.lexsort((u, seq))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order)) - np.repeat(batch.offsets[:-1], batch.lengths)
    return rank < np.repeat(counts, batch.lengths)


class _RateParams(Params):
    rate: float = Field(0.2, gt=0, le=1, description="share of each sequence's items affected")
    min_length: int = Field(2, ge=1, description="shorter sequences are left unchanged")


def _counts(batch: SequenceBatch, rate: float, min_length: int, keep_one: bool = True) -> np.ndarray:
    lengths = batch.lengths
    counts = np.floor(rate * lengths).astype(np.int64)
    if keep_one:
        counts = np.minimum(counts, lengths - 1)
    return np.where(lengths >= min_length, np.maximum(counts, 0), 0)


@register
class Crop(Augmenter):
    """Keep a random contiguous sub-sequence of ``floor(eta * L)`` items (at least 1).

    When it helps: long, noisy histories; teaches the model to rely on local patterns instead of
    whole histories (CL4SRec "item crop"); the copies are also shorter, like real sparse users.
    """

    name = "crop"

    class Params(Params):
        eta: float = Field(0.6, gt=0, le=1, description="share of the sequence kept")
        min_length: int = Field(2, ge=1, description="shorter sequences are left unchanged")

    def plan(self, batch, draws, state=None) -> Edit:
        lengths = batch.lengths
        active = lengths >= self.params.min_length
        kept = np.where(active, np.maximum(1, np.floor(self.params.eta * lengths).astype(np.int64)), lengths)
        start = np.floor(draws.per_sequence("start") * (lengths - kept + 1)).astype(np.int64)
        return Edit(offsets_from_lengths(kept), ranges(batch.offsets[:-1] + start, kept))


@register
class Mask(Augmenter):
    """Hide ``floor(gamma * L)`` random items: replace them by the mask token, or drop them.

    The token variant is CL4SRec's "item mask"; ``mode: dropout`` removes the items instead.
    When it helps: over-fitting to specific items of a history; noisy or accidental clicks.
    """

    name = "mask"

    class Params(Params):
        gamma: float = Field(0.3, gt=0, le=1, description="share of items masked")
        mode: Literal["token", "dropout"] = Field("token", description="token: replace by [mask]; dropout: remove")
        min_length: int = Field(2, ge=1, description="shorter sequences are left unchanged")

    def plan(self, batch, draws, state=None) -> Edit:
        counts = _counts(batch, self.params.gamma, self.params.min_length, keep_one=self.params.mode == "dropout")
        chosen = select_per_sequence(draws.per_element("mask", batch), batch, counts)
        if self.params.mode == "dropout":
            return _drop(batch, chosen)
        codes = np.where(chosen, 0, -1).astype(np.int64)  # extra item 0 is the mask token
        return Edit(batch.offsets.copy(), np.arange(batch.offsets[-1], dtype=np.int64), item_codes=codes)


def _drop(batch: SequenceBatch, chosen: np.ndarray) -> Edit:
    kept_per_sequence = batch.lengths - np.bincount(batch.sequence_of_element[chosen], minlength=len(batch))
    return Edit(offsets_from_lengths(kept_per_sequence), np.flatnonzero(~chosen).astype(np.int64))


@register
class Reorder(Augmenter):
    """Shuffle the items inside one random window of ``max(2, floor(beta * L))`` positions.

    When it helps: users often buy related things in any order; this teaches the model not to
    over-fit the exact order of nearby events.
    """

    name = "reorder"

    class Params(Params):
        beta: float = Field(0.2, gt=0, le=1, description="share of the sequence shuffled")
        min_length: int = Field(2, ge=2, description="shorter sequences are left unchanged")

    def plan(self, batch, draws, state=None) -> Edit:
        lengths = batch.lengths
        active = lengths >= self.params.min_length
        window = np.where(active, np.clip(np.floor(self.params.beta * lengths).astype(np.int64), 2, None), 0)
        window = np.minimum(window, lengths)
        start = np.floor(draws.per_sequence("start") * (lengths - window + 1)).astype(np.int64)
        seq = batch.sequence_of_element
        pos = batch.position_in_sequence
        s, w = start[seq], window[seq]
        inside = (pos >= s) & (pos < s + w)
        key = np.where(inside, s - 0.5 + draws.per_element("shuffle", batch) * w, pos.astype(np.float64))
        order = np.lexsort((key, seq))
        return Edit(batch.offsets.copy(), order.astype(np.int64))


@register
class Delete(Augmenter):
    """Remove ``floor(rate * L)`` random items (never the last one left).

    When it helps: robustness to missing events (tracking gaps, ad blockers, lost sessions).
    """

    name = "delete"
    Params = _RateParams

    def plan(self, batch, draws, state=None) -> Edit:
        counts = _counts(batch, self.params.rate, self.params.min_length)
        return _drop(batch, select_per_sequence(draws.per_element("delete", batch), batch, counts))


class _CatalogParams(_RateParams):
    sampling: Literal["uniform", "popularity"] = Field(
        "popularity", description="how catalog items are drawn: uniformly, or in proportion to interactions")


class _CatalogAugmenter(Augmenter):
    """Operators that draw new items from the catalog: their state is the item vocabulary."""

    Params = _CatalogParams

    def fit(self, spark, sequences, items):
        return fit_vocabulary(sequences)


@register
class Substitute(_CatalogAugmenter):
    """Replace ``floor(rate * L)`` random items by catalog items (uniform or by popularity).

    When it helps: robustness to noise; with popularity sampling it also exposes the model to
    more of the catalog. Prefer ``correlated_substitute`` when plausibility matters.
    """

    name = "substitute"

    def plan(self, batch, draws, state: ItemVocabulary) -> Edit:
        counts = _counts(batch, self.params.rate, self.params.min_length, keep_one=False)
        chosen = select_per_sequence(draws.per_element("position", batch), batch, counts)
        sampled = state.sample(draws.per_element("item", batch), self.params.sampling) + 1
        codes = np.where(chosen, sampled, -1).astype(np.int64)
        return Edit(batch.offsets.copy(), np.arange(batch.offsets[-1], dtype=np.int64), item_codes=codes)


@register
class Insert(_CatalogAugmenter):
    """Insert ``max(1, floor(rate * L))`` catalog items at random positions.

    An inserted item takes the timestamp and event type of the item it is placed before.
    When it helps: sparse histories; random items add noise, so prefer ``correlated_insert`` or
    ``time_insert`` where plausibility matters.
    """

    name = "insert"

    def plan(self, batch, draws, state: ItemVocabulary) -> Edit:
        lengths = batch.lengths
        counts = np.where(lengths >= self.params.min_length,
                          np.maximum(1, np.floor(self.params.rate * lengths).astype(np.int64)), 0)
        new_seq = np.repeat(np.arange(len(batch), dtype=np.int64), counts)
        new_index = np.arange(len(new_seq), dtype=np.int64) - np.repeat(offsets_from_lengths(counts)[:-1], counts)
        keys = batch.keys[new_seq]
        extra_draws = Draws(draws.seed, draws.stream, keys, draws.copy)
        u_anchor = extra_draws._draw("anchor", keys, new_index)
        u_item = extra_draws._draw("item", keys, new_index)
        anchor = np.floor(u_anchor * lengths[new_seq]).astype(np.int64)
        seq = np.concatenate([batch.sequence_of_element, new_seq])
        sort_key = np.concatenate([batch.position_in_sequence.astype(np.float64), anchor - 0.5])
        tie = np.concatenate([np.zeros(batch.offsets[-1], dtype=np.int64), new_index])
        order = np.lexsort((tie, sort_key, seq))
        positions = np.concatenate([np.arange(batch.offsets[-1], dtype=np.int64), batch.offsets[new_seq] + anchor])
        codes = np.concatenate([np.full(batch.offsets[-1], -1, dtype=np.int64), state.sample(u_item, self.params.sampling) + 1])
        return Edit(offsets_from_lengths(lengths + counts), positions[order], item_codes=codes[order])


@register
class Prefixes(Augmenter):
    """Expand each sequence into its prefixes (``mode: prefixes``) or sliding windows.

    The classic "all-prefix" expansion of session-based models: a sequence of length L yields the
    prefixes of lengths ``min_length .. L-1`` (the full sequence is the real row already).
    When it helps: models trained on whole sequences with one target (GRU4Rec-style, session
    models); every intermediate target becomes a training example.
    """

    name = "prefixes"

    class Params(Params):
        mode: Literal["prefixes", "windows"] = Field("prefixes", description="all prefixes, or sliding windows")
        min_length: int = Field(2, ge=1, description="shortest prefix emitted")
        window: int = Field(20, ge=1, description="windows mode: window size")
        stride: int = Field(10, ge=1, description="windows mode: step between windows")
        max_per_sequence: int = Field(50, ge=1, description="cap on outputs per sequence (the longest kept)")

    def plan(self, batch, draws, state=None) -> Edit:
        lengths = batch.lengths
        p = self.params
        if p.mode == "prefixes":
            per_seq = np.clip(lengths - p.min_length, 0, p.max_per_sequence)
            parents = np.repeat(np.arange(len(batch), dtype=np.int64), per_seq)
            index = np.arange(len(parents), dtype=np.int64) - np.repeat(offsets_from_lengths(per_seq)[:-1], per_seq)
            out_lengths = lengths[parents] - 1 - index  # longest first: L-1, L-2, ...
            starts = batch.offsets[:-1][parents]
        else:
            usable = lengths > p.window
            per_seq = np.where(usable, np.minimum((lengths - p.window) // p.stride + 1, p.max_per_sequence), 0)
            parents = np.repeat(np.arange(len(batch), dtype=np.int64), per_seq)
            index = np.arange(len(parents), dtype=np.int64) - np.repeat(offsets_from_lengths(per_seq)[:-1], per_seq)
            out_lengths = np.full(len(parents), p.window, dtype=np.int64)
            starts = batch.offsets[:-1][parents] + lengths[parents] - p.window - index * p.stride  # latest first
        keys = rng.mix64(batch.keys[parents] ^ rng.mix64(index.astype(np.uint64) + np.uint64(1)))
        return Edit(offsets_from_lengths(out_lengths), ranges(starts, out_lengths), parents=parents, keys=keys)
