"""Catalog-aware correlation operators: insert and substitute with items correlated to their neighbours.

CoSeRec-style "substitute / insert by the most correlated item", made plausible by the catalog: an
item is only ever replaced by, or followed by, one of its *admissible neighbours*, items that

* co-occur with it within ``window`` positions in the training sequences, ranked by the cosine
  similarity ``count(i, j) / sqrt(freq(i) * freq(j))`` (``freq``: occurrences in the sequences);
* have the same category and the same price band (per-category quantile band of price).

The neighbour table is computed once with Spark (:func:`neighbour_table`); only the final top-k
table reaches the driver, where it becomes a small CSR structure (:class:`NeighbourState`) shipped
to the executors with the operator. ``plan`` is then a vectorized numpy/Arrow function of a batch
and keyed draws, like every other augmenter.

Missing catalog data is a value of its own, ``unknown``: items without a category (or absent from
the items table, or every item when no items table is given) form one category together; items of
a category that have no price form that category's ``unknown`` band. So unknown-category items
only pair with unknown-category items, and unpriced items only with unpriced items of their
category: the constraint is never silently dropped, and without any catalog the operators fall
back to plain co-occurrence neighbours.

Example::

    >>> from recaug_spark.augment.base import Draws
    >>> from recaug_spark.augment.registry import build
    >>> from recaug_spark.augment.batch import SequenceBatch, apply_edit
    >>> state = NeighbourState.from_table(["a", "b"], ["b", "a"], [1.0, 1.0])
    >>> batch = SequenceBatch.from_lists([1], [["a", "x", "a"]])
    >>> op = build("correlated_substitute", {"rate": 1.0})
    >>> extra = pa.concat_arrays([pa.array(["[mask]"]), state.items])
    >>> apply_edit(batch, op.plan(batch, Draws(7, "s", batch.keys), state), extra).to_lists()
    [['b', 'x', 'b']]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from recaug_spark.augment.base import Augmenter, Draws, FitContext, register
from recaug_spark.augment.batch import Edit, SequenceBatch, offsets_from_lengths
from recaug_spark.augment.kernels import RateParams, pick, rate_counts, select_per_sequence


@dataclass(frozen=True)
class NeighbourState:
    """Admissible neighbours of each item, as CSR arrays over a sorted vocabulary (fitted state).

    ``items``: the vocabulary (string ids, sorted; every item that has or is a neighbour).
    ``indptr``: int64, len V + 1; row ``r`` (item ``items[r]``) holds entries
    ``indptr[r] .. indptr[r + 1] - 1``. ``neighbours``: int32 vocabulary indexes, by decreasing
    similarity then item id. ``cumulative``: float64, the row's cumulative share of similarity
    offset by the row index, so row ``r``'s entries lie in ``(r, r + 1]`` (its last one is exactly
    ``r + 1``) and the whole array is sorted: one ``searchsorted`` draws for every row at once.
    Size: the vocabulary plus 12 bytes per neighbour (``top_k`` per item at most) and 8 per item.
    """

    items: pa.Array
    indptr: np.ndarray
    neighbours: np.ndarray
    cumulative: np.ndarray

    @classmethod
    def from_table(cls, item_ids, neighbour_ids, similarity) -> NeighbourState:
        """Build from an edge list (item, neighbour, similarity > 0); the order inside a row is kept."""
        item_ids = pa.array(item_ids).cast(pa.string())
        neighbour_ids = pa.array(neighbour_ids).cast(pa.string())
        weights = np.asarray(similarity, dtype=np.float64)
        vocabulary = pc.unique(pa.concat_arrays([item_ids, neighbour_ids]))
        vocabulary = vocabulary.take(pc.sort_indices(vocabulary))
        size = len(vocabulary)
        rows = pc.index_in(item_ids, value_set=vocabulary).to_numpy(zero_copy_only=False).astype(np.int64)
        columns = pc.index_in(neighbour_ids, value_set=vocabulary).to_numpy(zero_copy_only=False).astype(np.int64)
        order = np.argsort(rows, kind="stable")  # group by row, keep each row's given order
        rows, columns, weights = rows[order], columns[order], weights[order]
        indptr = offsets_from_lengths(np.bincount(rows, minlength=size))
        return cls(vocabulary, indptr, columns.astype(np.int32), _row_cumulative(indptr, rows, weights))

    def __len__(self) -> int:
        return len(self.items)

    def codes(self, items: pa.Array) -> np.ndarray:
        """Vocabulary index of each item (int64), -1 for items outside the vocabulary or null."""
        if len(self.items) == 0 or len(items) == 0:
            return np.full(len(items), -1, dtype=np.int64)
        found = pc.index_in(items, value_set=self.items)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def degree(self, codes: np.ndarray) -> np.ndarray:
        """Number of admissible neighbours of each code (0 for -1)."""
        codes = np.asarray(codes, dtype=np.int64)
        if len(self.items) == 0:
            return np.zeros(len(codes), dtype=np.int64)
        safe = np.maximum(codes, 0)
        return np.where(codes >= 0, self.indptr[safe + 1] - self.indptr[safe], 0)

    def draw(self, codes: np.ndarray, u: np.ndarray) -> np.ndarray:
        """A neighbour of each code drawn in proportion to similarity by uniforms ``u``; -1 where none."""
        codes = np.asarray(codes, dtype=np.int64)
        has = self.degree(codes) > 0
        if not has.any():
            return np.full(len(codes), -1, dtype=np.int64)
        safe = np.maximum(codes, 0)
        at = np.searchsorted(self.cumulative, safe + np.asarray(u, dtype=np.float64), side="right")
        at = np.clip(at, self.indptr[safe], self.indptr[safe + 1] - 1)  # float rounding at row ends
        return np.where(has, self.neighbours[np.where(has, at, 0)], -1).astype(np.int64)

    def neighbours_of(self, item: str) -> list[str]:
        """The admissible neighbours of one item, most similar first (tests, inspection)."""
        code = int(self.codes(pa.array([item], pa.string()))[0])
        if code < 0:
            return []
        row = self.neighbours[self.indptr[code]: self.indptr[code + 1]]
        return self.items.take(pa.array(row, pa.int64())).to_pylist()


def _row_cumulative(indptr: np.ndarray, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-row cumulative weight share, offset by the row index (see :class:`NeighbourState`)."""
    if len(weights) == 0:
        return np.zeros(0, dtype=np.float64)
    lengths = np.diff(indptr)
    running = np.cumsum(weights)
    before = np.concatenate([[0.0], running])[indptr[:-1]]  # running total before each row
    within = running - np.repeat(before, lengths)
    totals = np.repeat(within[np.maximum(indptr[1:] - 1, 0)], lengths)
    share = within / totals
    ends = indptr[1:][lengths > 0] - 1
    share[ends] = 1.0
    return rows.astype(np.float64) + share


def neighbour_table(sequences, items=None, *, window: int = 3, price_bands: int = 4, top_k: int = 10,
                    min_count: int = 1):
    """The top-k admissible neighbours of every item, as a Spark DataFrame (pure transformation).

    Columns: item_id, neighbour_id, count (co-occurrences within ``window`` positions, both
    orders), similarity (``count / sqrt(freq_i * freq_j)``), rank (1 = most similar; ties broken by
    neighbour id). Pairs are generated per sequence with array functions (``window`` shifted
    copies of the item list, so cost is linear in events even for very long histories), counted
    with one aggregation, joined with item frequencies and catalog groups, and ranked with a
    window function. Price bands: within each category, items ranked by price (ties share a rank)
    and cut into ``price_bands`` equal-count bands, ``band = (rank - 1) * price_bands // n``.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    size = F.size("item_ids")

    def shifted(d: int, reverse: bool):
        def pair(x, i):
            y = F.col("item_ids")[i + d]
            return F.struct((y if reverse else x).alias("a"), (x if reverse else y).alias("b"))
        return F.transform(F.slice("item_ids", F.lit(1), F.greatest(size - d, F.lit(0))), pair)

    arrays = [shifted(d, reverse) for d in range(1, window + 1) for reverse in (False, True)]
    pairs = (sequences.select(F.explode(F.flatten(F.array(*arrays))).alias("p"))
             .select("p.a", "p.b")
             .where(F.col("a").isNotNull() & F.col("b").isNotNull() & (F.col("a") != F.col("b")))
             .groupBy("a", "b").agg(F.count(F.lit(1)).alias("count"))
             .where(F.col("count") >= min_count))
    freq = (sequences.select(F.explode("item_ids").alias("item")).where(F.col("item").isNotNull())
            .groupBy("item").agg(F.count(F.lit(1)).alias("freq")))
    groups = _catalog_groups(sequences.sparkSession, items, price_bands)

    def side(name):
        return (freq.join(groups, freq.item == groups.item_id, "left")
                .select(F.col("item").alias(name), F.col("freq").alias(f"freq_{name}"),
                        F.col("category").alias(f"category_{name}"), F.col("band").alias(f"band_{name}")))

    scored = (pairs.join(side("a"), "a").join(side("b"), "b")
              .where(F.col("category_a").eqNullSafe(F.col("category_b")) & F.col("band_a").eqNullSafe(F.col("band_b")))
              .select(F.col("a").alias("item_id"), F.col("b").alias("neighbour_id"), "count",
                      (F.col("count") / F.sqrt(F.col("freq_a").cast("double") * F.col("freq_b"))).alias("similarity")))
    ranking = Window.partitionBy("item_id").orderBy(F.col("similarity").desc(), F.col("neighbour_id").asc())
    return scored.withColumn("rank", F.row_number().over(ranking)).where(F.col("rank") <= top_k)


def _catalog_groups(spark, items, price_bands: int):
    """item_id, category, band (null: unknown) of every catalog item; empty without a catalog."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if items is None:
        return spark.createDataFrame([], "item_id string, category string, band int")
    category = F.col("category").cast("string") if "category" in items.columns else F.lit(None).cast("string")
    price = F.col("price").cast("double") if "price" in items.columns else F.lit(None).cast("double")
    catalog = (items.where(F.col("item_id").isNotNull())
               .groupBy("item_id").agg(F.max(category).alias("category"), F.max(price).alias("price")))
    priced = Window.partitionBy("category", F.col("price").isNull())
    by_price = priced.orderBy("price")
    band = F.floor((F.rank().over(by_price) - 1) * price_bands / F.count(F.lit(1)).over(priced))
    return catalog.select("item_id", "category", F.when(F.col("price").isNotNull(), band).cast("int").alias("band"))


class _CorrelationParams(RateParams):
    top_k: int = Field(10, ge=1, description="neighbours kept per item; one is drawn in proportion to similarity")
    window: int = Field(3, ge=1, description="co-occurrence window: items at most this many positions apart")
    price_bands: int = Field(4, ge=1, description="per-category price quantile bands; neighbours share a band")
    min_count: int = Field(1, ge=1, description="co-occurrences needed for a pair to count as neighbours")


class _CorrelationAugmenter(Augmenter):
    """Operators whose state is the admissible-neighbour table (:class:`NeighbourState`)."""

    Params = _CorrelationParams

    def fit(self, context: FitContext) -> NeighbourState:
        p = self.params
        table = (neighbour_table(context.sequences, context.items, window=p.window, price_bands=p.price_bands, top_k=p.top_k,
                                 min_count=p.min_count)
                 .select("item_id", "neighbour_id", "similarity", "rank").toArrow())
        order = pc.sort_indices(table, sort_keys=[("item_id", "ascending"), ("rank", "ascending")])
        table = table.take(order)
        return NeighbourState.from_table(table.column("item_id").combine_chunks(),
                                         table.column("neighbour_id").combine_chunks(),
                                         table.column("similarity").to_numpy())


@register
class CorrelatedSubstitute(_CorrelationAugmenter):
    """Replace random items by correlated items of the same category and price band.

    Each sequence of at least ``min_length`` items gets ``min(floor(rate * L), m)`` substitutions,
    where ``m`` is the number of its items that have an admissible neighbour: positions are drawn
    among those items only, so items with no admissible neighbour (unseen, isolated, or alone in
    their category and band) are always left unchanged and the count can fall short of
    ``floor(rate * L)``. The replacement is drawn among the item's ``top_k`` neighbours in
    proportion to similarity (co-occurrence within ``window`` positions, cosine-normalised).

    When it helps: like CoSeRec's "substitute by correlated item", it adds variation while keeping
    the sequence plausible (a similar product at a similar price); useful for sparse data where
    random substitution mostly adds noise.
    """

    name = "correlated_substitute"

    def plan(self, batch: SequenceBatch, draws: Draws, state: NeighbourState) -> Edit:
        total = int(batch.offsets[-1])
        codes = state.codes(batch.items)
        eligible = state.degree(codes) > 0
        available = np.bincount(batch.sequence_of_element[eligible], minlength=len(batch))
        counts = np.minimum(rate_counts(batch, self.params.rate, self.params.min_length, keep_one=False), available)
        u = np.where(eligible, draws.per_element("position", batch), 2.0)  # ineligible ones rank last
        chosen = select_per_sequence(u, batch, counts)
        picked = state.draw(codes, draws.per_element("item", batch))
        item_codes = np.where(chosen & (picked >= 0), picked + 1, -1).astype(np.int64)
        return Edit(batch.offsets.copy(), np.arange(total, dtype=np.int64), item_codes=item_codes)


@register
class CorrelatedInsert(_CorrelationAugmenter):
    """Insert ``max(1, floor(rate * L))`` items correlated to the item next to each insertion point.

    An insertion point (a gap between items, or either end) is drawn uniformly among the gaps whose
    *anchor* has an admissible neighbour; the anchor is the item right before the gap, or the first
    item for the gap before it. The inserted item is drawn among the anchor's ``top_k`` neighbours
    (same category and price band) in proportion to similarity, and copies the anchor's timestamp,
    event type, session and context, so timestamps stay non-decreasing. Sequences shorter than
    ``min_length``, or none of whose items has an admissible neighbour, are left unchanged.

    When it helps: short or sparse histories (more plausible context per user than random
    ``insert``); CoSeRec's "insert correlated item".
    """

    name = "correlated_insert"

    def plan(self, batch: SequenceBatch, draws: Draws, state: NeighbourState) -> Edit:
        total = int(batch.offsets[-1])
        lengths = batch.lengths
        seq = batch.sequence_of_element
        position = batch.position_in_sequence
        codes = state.codes(batch.items)
        eligible = state.degree(codes) > 0
        # Eligible gaps as (sequence, gap): gap p + 1 after each eligible element p, and gap 0 when
        # the first element is eligible; grouped by sequence, in gap order.
        first = eligible & (position == 0)
        gap_seq = np.concatenate([seq[first], seq[eligible]])
        gap = np.concatenate([np.zeros(int(first.sum()), dtype=np.int64), position[eligible] + 1])
        order = np.lexsort((gap, gap_seq))
        gap_seq, gap = gap_seq[order], gap[order]
        gaps_per_seq = np.bincount(gap_seq, minlength=len(batch))
        counts = np.where((lengths >= self.params.min_length) & (gaps_per_seq > 0),
                          np.maximum(1, np.floor(self.params.rate * lengths).astype(np.int64)), 0)
        new_seq = np.repeat(np.arange(len(batch), dtype=np.int64), counts)
        new_index = np.arange(len(new_seq), dtype=np.int64) - np.repeat(offsets_from_lengths(counts)[:-1], counts)
        keys = batch.keys[new_seq]
        which = pick(draws.draw("gap", keys, new_index), gaps_per_seq[new_seq])
        new_gap = gap[offsets_from_lengths(gaps_per_seq)[new_seq] + which]
        anchor = batch.offsets[new_seq] + np.maximum(new_gap - 1, 0)  # flat index of the anchor element
        inserted = state.draw(codes[anchor], draws.draw("item", keys, new_index)) + 1
        all_seq = np.concatenate([seq, new_seq])
        sort_key = np.concatenate([position.astype(np.float64), new_gap - 0.5])
        tie = np.concatenate([np.zeros(total, dtype=np.int64), new_index])
        out = np.lexsort((tie, sort_key, all_seq))
        positions = np.concatenate([np.arange(total, dtype=np.int64), anchor])
        item_codes = np.concatenate([np.full(total, -1, dtype=np.int64), inserted])
        return Edit(offsets_from_lengths(lengths + counts), positions[out], item_codes=item_codes[out])
