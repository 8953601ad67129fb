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
    return _select(quantize(u), batch, counts)


def rank_in_sequence(u: np.ndarray, batch: SequenceBatch) -> np.ndarray:
    """0-based rank of each element's ``u`` among the elements of its sequence.

    ``u`` is compared on 16 bits (``u`` in [0, 1), anything >= 1 ranks last), ties by position:
    two linear-time radix passes instead of a comparison sort (``np.lexsort`` costs ~10× more).
    """
    return _rank(quantize(u), batch)


def _select(keys: np.ndarray, batch: SequenceBatch, counts: np.ndarray) -> np.ndarray:
    return _rank(keys, batch) < np.repeat(counts, batch.lengths)


def _rank(keys: np.ndarray, batch: SequenceBatch) -> np.ndarray:
    order = grouped_argsort(keys, batch.sequence_of_element, len(batch))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = batch.position_in_sequence  # sorting by sequence first leaves each sequence in place
    return rank


def _bits(draws: Draws, tag: str, owner: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The random bits behind ``draws._draw(tag, draws.keys[owner], index)``, each key mixed once."""
    draw = (np.uint64(draws.copy) << np.uint64(40)) + np.asarray(index, dtype=np.uint64)
    return rng.random_bits_grouped(draws.seed, f"{draws.stream}/{tag}", draws.keys, owner, draw)


def _element_keys(draws: Draws, tag: str, batch: SequenceBatch) -> np.ndarray:
    """One uint16 sort key per element: the top bits of its keyed draw (``draws.per_element``'s)."""
    return (_bits(draws, tag, batch.sequence_of_element, batch.position_in_sequence) >> np.uint64(48)).astype(np.uint16)


def quantize(u: np.ndarray) -> np.ndarray:
    """uint16 keys ordered like ``u``: [0, 1) onto 0..65534 (top 16 bits), >= 1 onto 65535."""
    return (np.clip(u, 0.0, 1.0) * 65535.0).astype(np.uint16)


def grouped_argsort(keys: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """The stable argsort of (group, key), for uint16 ``keys`` and non-decreasing ``groups``.

    Numpy's stable sort of 16-bit integers is a radix sort: one pass on the keys, one on the groups.
    """
    order = np.argsort(keys, kind="stable")
    group_keys = groups.astype(np.uint16) if n_groups <= 1 << 16 else groups
    return order[np.argsort(group_keys[order], kind="stable")]


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
        chosen = _select(_element_keys(draws, "mask", batch), batch, counts)
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
        # Only the window moves: its elements, ordered by a keyed uniform, fill its slots in turn.
        inside = ranges(batch.offsets[:-1] + start, window)  # flat, grouped by sequence, in order
        owner = np.repeat(np.arange(len(batch), dtype=np.int64), window)
        shuffle = (_bits(draws, "shuffle", owner, inside - batch.offsets[:-1][owner]) >> np.uint64(48)).astype(np.uint16)
        positions = np.arange(batch.offsets[-1], dtype=np.int64)
        positions[inside] = inside[grouped_argsort(shuffle, owner, len(batch))]
        return Edit(batch.offsets.copy(), positions)


@register
class Delete(Augmenter):
    """Remove ``floor(rate * L)`` random items (never the last one left).

    When it helps: robustness to missing events (tracking gaps, ad blockers, lost sessions).
    """

    name = "delete"
    Params = _RateParams

    def plan(self, batch, draws, state=None) -> Edit:
        counts = _counts(batch, self.params.rate, self.params.min_length)
        return _drop(batch, _select(_element_keys(draws, "delete", batch), batch, counts))


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
        chosen = np.flatnonzero(_select(_element_keys(draws, "position", batch), batch, counts))
        u = rng.to_uniform(_bits(draws, "item", batch.sequence_of_element[chosen], batch.position_in_sequence[chosen]))
        codes = np.full(batch.offsets[-1], -1, dtype=np.int64)
        codes[chosen] = state.sample(u, self.params.sampling) + 1  # drawn for the chosen positions only
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
        u_anchor = rng.to_uniform(_bits(draws, "anchor", new_seq, new_index))
        u_item = rng.to_uniform(_bits(draws, "item", new_seq, new_index))
        anchor = np.floor(u_anchor * lengths[new_seq]).astype(np.int64)
        # Each new item goes right before its anchor, after earlier new items of the same anchor
        # (by index). No sort of the whole batch: count the items inserted at or before each element.
        total = int(batch.offsets[-1])
        flat_anchor = batch.offsets[new_seq] + anchor
        at = np.bincount(flat_anchor, minlength=total)
        before_or_at = np.cumsum(at)
        in_order = grouped_argsort(anchor.astype(np.uint16), new_seq, len(batch)) if total and lengths.max() <= 1 << 16 \
            else np.argsort(flat_anchor, kind="stable")
        destination = np.empty(len(new_seq), dtype=np.int64)
        destination[in_order] = flat_anchor[in_order] + np.arange(len(new_seq), dtype=np.int64)
        positions = np.empty(total + len(new_seq), dtype=np.int64)
        codes = np.full(total + len(new_seq), -1, dtype=np.int64)
        positions[np.arange(total, dtype=np.int64) + before_or_at] = np.arange(total, dtype=np.int64)
        positions[destination] = flat_anchor
        codes[destination] = state.sample(u_item, self.params.sampling) + 1
        return Edit(offsets_from_lengths(lengths + counts), positions, item_codes=codes)


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
