"""Random sequence operators (CL4SRec / CoSeRec family), vectorized over whole batches.

Every operator leaves sequences shorter than its ``min_length`` unchanged, never empties a
sequence, and draws its randomness per (user key, copy, position), never per batch.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from recaug_spark import rng
from recaug_spark.augment.base import Augmenter, Params, register
from recaug_spark.augment.batch import Edit, identity_positions, offsets_from_lengths, ranges
from recaug_spark.augment.kernels import (
    CatalogAugmenter,
    ItemVocabulary,
    RateParams,
    element_keys,
    grouped_argsort,
    keep,
    random_start,
    rate_counts,
    select,
    top16,
)


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
        start = random_start(draws, lengths, kept)
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
        counts = rate_counts(batch, self.params.gamma, self.params.min_length, keep_one=self.params.mode == "dropout")
        chosen = select(element_keys(draws, "mask", batch), batch, counts)
        if self.params.mode == "dropout":
            return keep(batch, ~chosen)
        codes = np.where(chosen, np.int64(0), np.int64(-1))  # extra item 0 is the mask token
        return Edit(batch.offsets.copy(), identity_positions(int(batch.offsets[-1])), item_codes=codes)


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
        start = random_start(draws, lengths, window)
        # Only the window moves: its elements, ordered by a keyed uniform, fill its slots in turn.
        inside = ranges(batch.offsets[:-1] + start, window)  # flat, grouped by sequence, in order
        owner = np.repeat(np.arange(len(batch), dtype=np.int64), window)
        shuffle = top16(draws.bits("shuffle", owner, inside - batch.offsets[:-1][owner]))
        positions = np.arange(batch.offsets[-1], dtype=np.int64)
        positions[inside] = inside[grouped_argsort(shuffle, owner, len(batch))]
        return Edit(batch.offsets.copy(), positions)


@register
class Delete(Augmenter):
    """Remove ``floor(rate * L)`` random items (never the last one left).

    When it helps: robustness to missing events (tracking gaps, ad blockers, lost sessions).
    """

    name = "delete"
    Params = RateParams

    def plan(self, batch, draws, state=None) -> Edit:
        counts = rate_counts(batch, self.params.rate, self.params.min_length)
        return keep(batch, ~select(element_keys(draws, "delete", batch), batch, counts))


@register
class Substitute(CatalogAugmenter):
    """Replace ``floor(rate * L)`` random items by catalog items (uniform or by popularity).

    When it helps: robustness to noise; with popularity sampling it also exposes the model to
    more of the catalog. Prefer ``correlated_substitute`` when plausibility matters.
    """

    name = "substitute"

    def plan(self, batch, draws, state: ItemVocabulary) -> Edit:
        counts = rate_counts(batch, self.params.rate, self.params.min_length, keep_one=False)
        chosen = np.flatnonzero(select(element_keys(draws, "position", batch), batch, counts))
        u = rng.to_uniform(draws.bits("item", batch.sequence_of_element[chosen], batch.position_in_sequence[chosen]))
        codes = np.full(batch.offsets[-1], -1, dtype=np.int64)
        codes[chosen] = state.sample(u, self.params.sampling) + 1  # drawn for the chosen positions only
        return Edit(batch.offsets.copy(), identity_positions(int(batch.offsets[-1])), item_codes=codes)


@register
class Insert(CatalogAugmenter):
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
        u_anchor = rng.to_uniform(draws.bits("anchor", new_seq, new_index))
        u_item = rng.to_uniform(draws.bits("item", new_seq, new_index))
        anchor = np.floor(u_anchor * lengths[new_seq]).astype(np.int64)
        # Each new item goes right before its anchor, after earlier new items of the same anchor
        # (by index). No sort of the whole batch: count the items inserted at or before each element.
        total = int(batch.offsets[-1])
        flat_anchor = batch.offsets[new_seq] + anchor
        at = np.bincount(flat_anchor, minlength=total)
        before_or_at = np.cumsum(at)
        in_order = (grouped_argsort(anchor.astype(np.uint16), new_seq, len(batch)) if total and lengths.max() <= 1 << 16
                    else np.argsort(flat_anchor, kind="stable"))
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
