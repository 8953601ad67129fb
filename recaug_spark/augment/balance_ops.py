"""Class balance: sampled training negatives, and oversampling of rare positive event types.

``negative_sample`` leaves every sequence as it is and adds one sampled negative item per position
(batch context ``"negative_item_id"``, output column ``negative_item_ids``), drawn uniformly, by
popularity, or from the positive item's own category (hard negatives). ``oversample_events``
emits, for each rare positive event (a purchase among views), the prefix that ends at it: one more
training example whose target is that event.

Randomness is keyed by (user key, copy, position, resampling round), never by batch composition,
and planning is vectorized over the whole batch (the only loop is over at most ``max_rounds``
resampling rounds, each redrawing only the positions still colliding).

Example::

    >>> from recaug_spark.augment.base import Draws
    >>> from recaug_spark.augment.registry import build
    >>> from recaug_spark.augment.batch import SequenceBatch, apply_edit
    >>> state = NegativeState.build(["a", "b", "c", "x"], [5, 3, 2, 1])
    >>> batch = SequenceBatch.from_lists([1], [["a", "b", "c"]])
    >>> op = build("negative_sample", {"mode": "uniform"})
    >>> apply_edit(batch, op.plan(batch, Draws(7, "n", batch.keys), state)).context["negative_item_id"].to_pylist()
    ['x', 'x', 'x']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from recaug_spark import rng
from recaug_spark.augment.base import Augmenter, Draws, FitContext, Params, register
from recaug_spark.augment.batch import Edit, SequenceBatch, offsets_from_lengths, ranges
from recaug_spark.augment.kernels import inverse_cdf, pick

NEGATIVE_CONTEXT = "negative_item_id"  # batch context name (arrow_io.OUTPUT_CONTEXT_COLUMNS)


def _cumulative(weights: np.ndarray) -> np.ndarray:
    """Cumulative shares in (0, 1], the last exactly 1; all zeros when the weights sum to 0."""
    total = weights.sum()
    if len(weights) == 0 or total <= 0:
        return np.zeros(len(weights))
    cumulative = np.cumsum(weights) / total
    cumulative[-1] = 1.0
    return cumulative


@dataclass(frozen=True)
class NegativeState:
    """Fitted state of ``negative_sample``: the catalog, its popularity and its categories.

    ``item_ids``: the vocabulary (catalog ∪ items seen in the training sequences), sorted.
    ``cumulative``: cumulative popularity weights (``count ** power``), same order; all zeros when
    nothing was ever interacted with (popularity draws are then uniform).
    ``category_of``: per item, the index of its category, -1 when it has none or is the only
    item of its category (no hard negative exists: such positives fall back to popularity).
    Categories as CSR: the items of category c are ``category_items[category_indptr[c]:
    category_indptr[c + 1]]``, and ``category_cumulative`` over the same slice holds ``c + `` the
    cumulative popularity share inside the category (uniform when the category's items were never
    interacted with), so one ``searchsorted`` of ``c + u`` over the whole array samples in c.
    """

    item_ids: pa.Array
    cumulative: np.ndarray
    category_of: np.ndarray
    category_indptr: np.ndarray
    category_items: np.ndarray
    category_cumulative: np.ndarray
    category_names: pa.Array

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def build(cls, item_ids, counts, categories=None, power: float = 1.0) -> NegativeState:
        """The state from item ids, their interaction counts and (optional) categories, any order."""
        ids = pa.array(list(item_ids) if not isinstance(item_ids, pa.Array) else item_ids, pa.string())
        order = pc.sort_indices(ids).to_numpy()
        ids = ids.take(pa.array(order, pa.int64()))
        counts = np.asarray(counts, dtype=np.float64)[order]
        weights = np.where(counts > 0, np.power(np.maximum(counts, 0), power), 0.0)
        if categories is None:
            categories = pa.nulls(len(ids), pa.string())
        categories = pa.array(categories, pa.string()) if not isinstance(categories, pa.Array) else categories
        encoded = pc.dictionary_encode(categories.take(pa.array(order, pa.int64())).cast(pa.string()))
        raw = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        sizes = np.bincount(raw[raw >= 0], minlength=len(encoded.dictionary))
        usable = np.flatnonzero(sizes >= 2)  # a category needs a second item to give a hard negative
        renumber = np.full(len(sizes), -1, dtype=np.int64)
        renumber[usable] = np.arange(len(usable), dtype=np.int64)
        category_of = np.where(raw >= 0, renumber[np.maximum(raw, 0)] if len(sizes) else -1, -1).astype(np.int64)
        members = np.flatnonzero(category_of >= 0)
        members = members[np.argsort(category_of[members], kind="stable")]
        member_cat = category_of[members]
        indptr = offsets_from_lengths(np.bincount(member_cat, minlength=len(usable)))
        member_w = weights[members]
        totals = np.bincount(member_cat, weights=member_w, minlength=len(usable))
        member_w = np.where(totals[member_cat] > 0, member_w, 1.0)  # never interacted: uniform inside
        totals = np.bincount(member_cat, weights=member_w, minlength=len(usable))
        running = np.cumsum(member_w)
        before = np.concatenate([[0.0], running])[indptr[:-1]]
        within = (running - before[member_cat]) / np.where(totals > 0, totals, 1.0)[member_cat]
        within[indptr[1:][indptr[1:] > 0] - 1] = 1.0
        return cls(ids, _cumulative(weights), category_of, indptr, members.astype(np.int64),
                   member_cat + within, encoded.dictionary.take(pa.array(usable, pa.int64())))

    def codes(self, items: pa.Array) -> np.ndarray:
        """Vocabulary index of each item, -1 for items outside it (mask token, unseen items)."""
        value_set = self.item_ids if self.item_ids.type == items.type else self.item_ids.cast(items.type)
        return pc.index_in(items, value_set=value_set).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def sample(self, mode: str, u: np.ndarray, positives: np.ndarray) -> np.ndarray:
        """Vocabulary indexes for uniforms ``u``; ``positives``: the positive's index (same_category)."""
        size = len(self)
        if mode == "uniform" or not self.cumulative.any():
            popular = pick(u, size)
        else:
            popular = inverse_cdf(self.cumulative, u)
        if mode != "same_category" or len(self.category_items) == 0:
            return popular
        category = np.where(positives >= 0, self.category_of[np.maximum(positives, 0)], -1)
        hard = category >= 0
        c = category[hard]
        slot = np.searchsorted(self.category_cumulative, c + u[hard], side="right")
        slot = np.clip(slot, self.category_indptr[c], self.category_indptr[c + 1] - 1)
        out = popular.copy()
        out[hard] = self.category_items[slot]
        return out


def fit_negative_state(sequences, items=None, power: float = 1.0) -> NegativeState:
    """Popularity from the training sequences, categories from ``items`` (Spark DataFrames).

    Only the aggregated per-item table (item id, count, category) reaches the driver.
    """
    from pyspark.sql import functions as F

    counts = (sequences.select(F.explode("item_ids").alias("item_id")).where(F.col("item_id").isNotNull())
              .groupBy("item_id").count())
    if items is not None:
        categories = (items.where(F.col("item_id").isNotNull()).groupBy("item_id")
                      .agg(F.max("category").alias("category")))
        table = counts.join(categories, "item_id", "full_outer")
    else:
        table = counts.withColumn("category", F.lit(None).cast("string"))
    table = table.select("item_id", F.coalesce(F.col("count"), F.lit(0)).alias("count"),
                         F.col("category").cast("string")).orderBy("item_id").toArrow()
    return NegativeState.build(table.column("item_id").combine_chunks(), table.column("count").to_numpy(),
                               table.column("category").combine_chunks(), power=power)


def _member(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``queries`` found in ``sorted_keys`` (sorted, unique), vectorized."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return sorted_keys[at] == queries


@register
class NegativeSample(Augmenter):
    """Add one sampled negative item per position (context ``negative_item_id``), items unchanged.

    ``negative_item_ids[t]`` is a negative for the positive ``item_ids[t]`` (the SASRec/BPR
    training negative; the trainer shifts both by one). ``mode``: ``uniform`` over the catalog;
    ``popularity``, in proportion to ``count ** popularity_power`` in the training sequences
    (never-interacted items are not drawn); ``same_category``, a hard negative from the positive's
    category, by popularity inside it (positives without a category, or alone in theirs, fall back
    to popularity). A negative is never an item of the sequence: colliding draws are redrawn with
    fresh keyed draws, up to ``max_rounds`` draws per position; a position still colliding after
    that (the user has consumed nearly every candidate, e.g. all of a small category) gets a null
    negative, which the trainer must skip. "The sequence" is what this operator sees: the most
    recent ``augment.max_input_events`` training events, after any earlier operator of the chain;
    put ``negative_sample`` last in a chain.

    When it helps: the trainer reads fixed, reproducible negatives instead of sampling its own;
    hard negatives teach fine distinctions inside a category, popularity negatives counter the
    popularity bias of uniform sampling.
    """

    name = "negative_sample"

    class Params(Params):
        mode: Literal["uniform", "popularity", "same_category"] = Field(
            "popularity", description="uniform over the catalog, by popularity, or hard: from the positive's category")
        max_rounds: int = Field(10, ge=1, le=100,
                                description="draws per position before giving up on collisions (null negative)")
        popularity_power: float = Field(1.0, ge=0, le=2,
                                        description="popularity weight = interactions ** power (0.75: word2vec)")

    def fit(self, context: FitContext) -> NegativeState:
        return fit_negative_state(context.sequences, context.items, self.params.popularity_power)

    def plan(self, batch: SequenceBatch, draws: Draws, state: NegativeState) -> Edit:
        total = int(batch.offsets[-1])
        negative = np.full(total, -1, dtype=np.int64)
        size = len(state)
        if total and size:
            seq = batch.sequence_of_element
            position = batch.position_in_sequence
            codes = state.codes(batch.items)
            known = codes >= 0
            owned = np.unique(seq[known] * size + codes[known])  # (sequence, item) pairs, one int64 each
            keys = batch.keys[seq]
            todo = np.arange(total, dtype=np.int64)
            for round_ in range(self.params.max_rounds):
                u = draws.draw(f"negative:{round_}", keys[todo], position[todo])
                candidate = state.sample(self.params.mode, u, codes[todo])
                clash = _member(owned, seq[todo] * size + candidate)
                negative[todo[~clash]] = candidate[~clash]
                todo = todo[clash]
                if len(todo) == 0:
                    break
        values = state.item_ids.take(pa.array(negative, pa.int64(), mask=negative < 0))
        return Edit(batch.offsets.copy(), np.arange(total, dtype=np.int64), context={NEGATIVE_CONTEXT: values})


_OVERSAMPLE_SALT = rng.stream_key(0, "oversample_events")


@register
class OversampleEvents(Augmenter):
    """Emit the prefix ending at each rare positive event (``event_types``, default purchases).

    Each emitted sequence is the training example whose target (last event) is that purchase, so
    purchase targets gain weight: in the real rows only sequences ending with a purchase have one
    as their target, while every output row of this operator does. With 1 purchase per 30 views,
    purchases are ~3% of the events but 100% of this operator's targets; a branch's ``copies``
    repeats the outputs (no randomness here), so k copies add k examples per purchase. Prefixes
    shorter than ``min_length`` are skipped; at most ``max_per_sequence`` per sequence are kept
    (the most recent), latest first. Sequences without such events emit nothing. Each output gets
    a fresh entity key derived from its parent's key and the target's position.

    When it helps: models trained on views and purchases that should rank what users buy, not only
    what they look at; the rare, valuable events otherwise drown among views.
    """

    name = "oversample_events"

    class Params(Params):
        event_types: tuple[str, ...] = Field(("purchase",), min_length=1,
                                             description="event types oversampled (the rare positives)")
        min_length: int = Field(2, ge=1, description="shortest prefix emitted (target included)")
        max_per_sequence: int = Field(10, ge=1, description="cap on outputs per sequence (the most recent kept)")

    def plan(self, batch: SequenceBatch, draws: Draws, state=None) -> Edit:
        p = self.params
        position = batch.position_in_sequence
        rare = pc.is_in(batch.event_types, value_set=pa.array(list(p.event_types), batch.event_types.type))
        eligible = rare.fill_null(False).to_numpy(zero_copy_only=False) & (position + 1 >= p.min_length)
        targets = np.flatnonzero(eligible).astype(np.int64)  # grouped by sequence, in order
        parents = batch.sequence_of_element[targets]
        per_seq = np.bincount(parents, minlength=len(batch)).astype(np.int64)
        from_end = per_seq[parents] - 1 - (np.arange(len(targets)) - offsets_from_lengths(per_seq)[:-1][parents])
        kept = from_end < p.max_per_sequence
        targets, parents, from_end = targets[kept], parents[kept], from_end[kept]
        order = np.lexsort((from_end, parents))  # per parent, latest first
        targets, parents = targets[order], parents[order]
        out_lengths = position[targets] + 1
        keys = rng.mix64(batch.keys[parents] ^ rng.mix64(position[targets].astype(np.uint64) ^ _OVERSAMPLE_SALT))
        return Edit(offsets_from_lengths(out_lengths), ranges(batch.offsets[:-1][parents], out_lengths),
                    parents=parents, keys=keys)
