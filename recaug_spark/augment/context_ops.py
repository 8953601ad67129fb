"""Context operators: redraw or hide the per-event context fields (country, device).

Context lives in ``SequenceBatch.context`` under the batch names of ``schemas.CONTEXT_COLUMNS``.
A batch without a field is left as it is (no field is ever added), so these operators are safe on
sources without context. Other entries of ``context`` (e.g. sampled negatives) are never touched.

Example::

    >>> from recaug_spark.augment.base import Draws
    >>> from recaug_spark.augment.registry import build
    >>> from recaug_spark.augment.batch import SequenceBatch, apply_edit
    >>> batch = SequenceBatch.from_lists([1], [list("abcd")], country=[["DE"] * 4], device=[["ios"] * 4])
    >>> op = build("context_drop", {"rate": 0.5, "fields": ["device"]})
    >>> apply_edit(batch, op.plan(batch, Draws(7, "d", batch.keys), None)).context["device"].null_count
    2
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from recaug_spark.augment.base import Augmenter, FitContext, Params, register
from recaug_spark.augment.batch import Edit
from recaug_spark.augment.kernels import (
    SessionParams,
    identity,
    inverse_cdf,
    rank_in_group,
    select_per_sequence,
    session_numbers,
    session_starts,
)

# Batch names of schemas.CONTEXT_COLUMNS, repeated here so augmenters import without pyspark
# (tests/test_augment_time.py checks that both agree).
CONTEXT_FIELDS = ("country", "device")


@dataclass(frozen=True)
class ContextDistribution:
    """Observed combinations of context fields and their frequencies (fitted state of context_swap).

    ``values[f][k]`` is field ``fields[f]`` of combination k (null where that field was missing
    while another was present); ``cumulative`` is the cumulative share of events, same order.
    """

    fields: tuple[str, ...]
    values: tuple[pa.Array, ...]
    cumulative: np.ndarray

    @classmethod
    def from_counts(cls, fields, columns, counts) -> ContextDistribution:
        counts = np.asarray(counts, dtype=np.float64)
        total = counts.sum()
        return cls(tuple(fields), tuple(pa.array(c, type=pa.string()) for c in columns),
                   np.cumsum(counts) / total if total > 0 else np.zeros(0))

    def __len__(self) -> int:
        return len(self.cumulative)

    def combinations(self) -> list[tuple]:
        """The observed combinations as tuples (tests, reports)."""
        return list(zip(*(v.to_pylist() for v in self.values)))

    def sample(self, u: np.ndarray) -> np.ndarray:
        """Indexes of combinations for uniforms ``u``, in proportion to their frequency."""
        return inverse_cdf(self.cumulative, u)


def fit_context_distribution(sequences) -> ContextDistribution:
    """Counts of each (country, device) combination over all events of the training sequences.

    Events whose context fields are all null are not counted. Context columns missing from
    ``sequences`` are left out; with none at all the distribution is empty (swap does nothing).
    """
    from pyspark.sql import functions as F

    from recaug_spark.schemas import CONTEXT_COLUMNS

    columns = [c for c in CONTEXT_COLUMNS if c in sequences.columns]
    fields = [CONTEXT_COLUMNS[c] for c in columns]
    if not columns:
        return ContextDistribution.from_counts((), (), [])
    events = sequences.select(F.explode(F.arrays_zip(*columns)).alias("event"))
    events = events.select(*[F.col("event")[c].alias(f) for c, f in zip(columns, fields)])
    counts = (
        events.where(" OR ".join(f"{f} IS NOT NULL" for f in fields)).groupBy(*fields).count()
        .orderBy(*[F.col(f).asc_nulls_first() for f in fields]).toArrow()
    )
    return ContextDistribution.from_counts(fields, [counts.column(f).combine_chunks() for f in fields],
                                           counts.column("count").to_numpy())


@register
class ContextSwap(Augmenter):
    """Give ``max(1, floor(rate * S))`` random sessions of each sequence (S sessions) a new context.

    Every event of a chosen session gets the same (country, device) combination, drawn from the
    joint distribution observed in the training sequences (fitted with Spark), so only plausible
    combinations appear (no desktop app in a country where nobody uses one) and a visit stays
    on one device. A draw may coincide with the original context. Sessions: as in ``time_ops``.

    When it helps: context-aware models that would otherwise tie items to the context of the few
    users who bought them; it teaches which preferences carry over across devices and markets.
    """

    name = "context_swap"

    class Params(SessionParams):
        rate: float = Field(0.3, gt=0, le=1, description="share of each sequence's sessions redrawn")

    def fit(self, context: FitContext) -> ContextDistribution:
        return fit_context_distribution(context.sequences)

    def plan(self, batch, draws, state: ContextDistribution) -> Edit:
        fields = [(f, v) for f, v in zip(state.fields, state.values) if f in batch.context]
        if not fields or len(state) == 0 or batch.offsets[-1] == 0:
            return identity(batch)
        starts = session_starts(batch, self.params.session_gap_minutes)
        session, number, sessions = session_numbers(batch, starts)
        counts = np.maximum(1, np.floor(self.params.rate * sessions).astype(np.int64))
        session_seq = batch.sequence_of_element[starts]  # one entry per session, in order
        keys, index = batch.keys[session_seq], number[starts]
        chosen = rank_in_group(session_seq, draws.draw("session", keys, index)) < counts[session_seq]
        combination = pa.array(state.sample(draws.draw("combination", keys, index))[session], pa.int64())
        mask = pa.array(chosen[session])
        context = {f: pc.if_else(mask, values.take(combination).cast(batch.context[f].type), batch.context[f])
                   for f, values in fields}
        return Edit(batch.offsets.copy(), np.arange(batch.offsets[-1], dtype=np.int64), context=context)


@register
class ContextDrop(Augmenter):
    """Set the context ``fields`` of ``max(1, floor(rate * L))`` random events to null.

    The same events lose all the listed fields (a missing context record). Sequences shorter than
    ``min_length`` are left unchanged.

    When it helps: serving often lacks context (new device, consent not given, geo lookup down);
    a model trained only on complete context degrades badly when it is missing.
    """

    name = "context_drop"

    class Params(Params):
        rate: float = Field(0.2, gt=0, le=1, description="share of each sequence's events affected")
        fields: tuple[str, ...] = Field(CONTEXT_FIELDS, min_length=1, description="context fields set to null")
        min_length: int = Field(1, ge=1, description="shorter sequences are left unchanged")

        @field_validator("fields")
        @classmethod
        def _known_fields(cls, fields: tuple[str, ...]) -> tuple[str, ...]:
            unknown = sorted(set(fields) - set(CONTEXT_FIELDS))
            if unknown:
                raise ValueError(f"unknown context fields {unknown}; known: {list(CONTEXT_FIELDS)}")
            return fields

    def plan(self, batch, draws, state=None) -> Edit:
        present = [f for f in self.params.fields if f in batch.context]
        if not present or batch.offsets[-1] == 0:
            return identity(batch)
        lengths = batch.lengths
        counts = np.maximum(1, np.floor(self.params.rate * lengths).astype(np.int64))
        counts = np.where(lengths >= self.params.min_length, np.minimum(counts, lengths), 0)
        mask = pa.array(select_per_sequence(draws.per_element("drop", batch), batch, counts))
        context = {f: pc.if_else(mask, pa.scalar(None, batch.context[f].type), batch.context[f]) for f in present}
        return Edit(batch.offsets.copy(), np.arange(batch.offsets[-1], dtype=np.int64), context=context)

