"""Targeting: which real sequences a branch augments (short ones, cold-start users, long-tail items).

Augmenting everyone equally mostly adds volume; the gains reported for sequential recommenders
come from the sparse part of the data. A branch can therefore be restricted, by config, to

* ``max_length: M`` — sequences of at most M training events (short histories);
* ``cold_start_days: D`` — users whose first training event lies within the last D days of the
  training data (new users: few events, and recent);
* ``long_tail_share: s`` — sequences holding at least one long-tail item: an item among the least
  popular share ``s`` of the items seen in training (by interactions, ties broken by item id).

Conditions combine with AND. The statistics (the training data's last timestamp, the long-tail
item set) are fitted once with Spark; selection is a vectorized function of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recaug_spark.augment.batch import SequenceBatch

MICROS_PER_DAY = 86_400_000_000


@dataclass(frozen=True)
class Targeting:
    """A fitted branch target; ``select`` returns the indexes of the targeted sequences."""

    max_length: int | None = None
    cold_start_after_us: int | None = None  # first event at or after this instant ⇒ cold-start user
    long_tail_items: pa.Array | None = None

    @property
    def selects_all(self) -> bool:
        return self.max_length is None and self.cold_start_after_us is None and self.long_tail_items is None

    def select(self, batch: SequenceBatch) -> np.ndarray:
        chosen = np.ones(len(batch), dtype=bool)
        lengths = batch.lengths
        if self.max_length is not None:
            chosen &= lengths <= self.max_length
        if self.cold_start_after_us is not None:
            first = batch.timestamps[np.minimum(batch.offsets[:-1], max(len(batch.timestamps) - 1, 0))]
            chosen &= (lengths > 0) & (first >= self.cold_start_after_us)
        if self.long_tail_items is not None:
            is_tail = pc.is_in(batch.items, value_set=self.long_tail_items).to_numpy(zero_copy_only=False)
            tail_per_sequence = np.bincount(batch.sequence_of_element[is_tail], minlength=len(batch))
            chosen &= tail_per_sequence > 0
        return np.flatnonzero(chosen)


def fit_targeting(sequences, *, max_length: int | None, cold_start_days: int | None,
                  long_tail_share: float | None) -> Targeting:
    """Fit the statistics a target needs from the training ``sequences`` (a Spark DataFrame)."""
    from pyspark.sql import functions as F

    cold_start_after_us = long_tail_items = None
    if cold_start_days is not None:
        last_us = sequences.select(F.unix_micros(F.max(F.element_at("timestamps", -1))).alias("last")).first().last
        if last_us is not None:
            cold_start_after_us = int(last_us) - cold_start_days * MICROS_PER_DAY
    if long_tail_share is not None:
        counts = (sequences.select(F.explode("item_ids").alias("item_id")).groupBy("item_id").count()
                  .orderBy("count", "item_id").toPandas())
        tail = int(np.floor(long_tail_share * len(counts)))
        long_tail_items = pa.array(counts["item_id"].iloc[:tail].tolist(), pa.string())
    return Targeting(max_length, cold_start_after_us, long_tail_items)
