"""Sequences as flat arrays plus offsets (Arrow's list layout), and edits applied to all columns.

Augmenters never loop over rows in Python. A sequence operator *plans* an :class:`Edit` from the
lengths (and timestamps) of a whole batch: for every output element, which parent element it
copies (``positions``) and whether its item is replaced by an extra item (``item_codes``, an index
into ``[MASK, *vocabulary]``). The edit is then applied to every list column at once with Arrow's
``take``, which copies strings without creating Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MASK_TOKEN = "[mask]"
LIST_COLUMNS = ("item_ids", "timestamps", "event_types")


@dataclass(frozen=True)
class SequenceBatch:
    """A batch of sequences: per-sequence keys and offsets, and flat Arrow value arrays."""

    keys: np.ndarray  # uint64, one entity key per sequence (from the user id)
    offsets: np.ndarray  # int64, len n + 1
    items: pa.Array  # flat item ids (string)
    timestamps: np.ndarray  # flat int64 microseconds since the epoch, UTC
    event_types: pa.Array  # flat event types (string)
    session_ids: pa.Array | None = None  # flat session ids (string), when the source has them
    # Other per-event columns carried along by every edit, flat like ``items``: context fields
    # ("country", "device"), sampled negatives ("negative_item_id"), ... (name -> values).
    context: dict[str, pa.Array] = field(default_factory=dict)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def sequence_of_element(self) -> np.ndarray:
        """For each flat element, the index of its sequence."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    @property
    def position_in_sequence(self) -> np.ndarray:
        """For each flat element, its 0-based position inside its sequence."""
        return np.arange(self.offsets[-1], dtype=np.int64) - np.repeat(self.offsets[:-1], self.lengths)

    @classmethod
    def from_lists(cls, keys, items, timestamps=None, event_types=None, session_ids=None,
                   **context) -> "SequenceBatch":
        """Build a batch from Python lists (tests and small examples); ``context``: name -> lists."""
        lengths = np.array([len(s) for s in items], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat_items = [i for s in items for i in s]
        if timestamps is None:
            timestamps = [list(range(len(s))) for s in items]
        if event_types is None:
            event_types = [["view"] * len(s) for s in items]
        return cls(
            keys=np.asarray(keys, dtype=np.uint64),
            offsets=offsets,
            items=pa.array(flat_items, type=pa.string()),
            timestamps=np.array([t for s in timestamps for t in s], dtype=np.int64),
            event_types=pa.array([e for s in event_types for e in s], type=pa.string()),
            session_ids=None if session_ids is None else pa.array([x for s in session_ids for x in s], pa.string()),
            context={name: pa.array([x for s in lists for x in s], pa.string()) for name, lists in context.items()},
        )

    def to_lists(self) -> list[list[str]]:
        items = self.items.to_pylist()
        return [items[self.offsets[i]: self.offsets[i + 1]] for i in range(len(self))]

    def timestamps_lists(self) -> list[list[int]]:
        return [self.timestamps[self.offsets[i]: self.offsets[i + 1]].tolist() for i in range(len(self))]

    def take(self, rows: np.ndarray) -> "SequenceBatch":
        """The sub-batch of sequences ``rows`` (indexes, in the given order)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == len(self) and (rows == np.arange(len(self))).all():
            return self
        return self._slice(self.offsets[:-1][rows], self.lengths[rows], self.keys[rows])

    def tail(self, max_events: int) -> "SequenceBatch":
        """Each sequence cut to its most recent ``max_events`` elements (heavy users stay cheap)."""
        lengths = self.lengths
        if len(lengths) == 0 or lengths.max() <= max_events:
            return self
        kept = np.minimum(lengths, max_events)
        return self._slice(self.offsets[1:] - kept, kept, self.keys)

    def _slice(self, starts: np.ndarray, lengths: np.ndarray, keys: np.ndarray) -> "SequenceBatch":
        flat = ranges(starts, lengths)
        positions = pa.array(flat, pa.int64())
        return SequenceBatch(
            keys=keys, offsets=offsets_from_lengths(lengths), items=self.items.take(positions),
            timestamps=self.timestamps[flat], event_types=self.event_types.take(positions),
            session_ids=None if self.session_ids is None else self.session_ids.take(positions),
            context={name: values.take(positions) for name, values in self.context.items()},
        )

    def lists(self, values: pa.Array | np.ndarray) -> list[list]:
        """Any flat column of this batch split into per-sequence Python lists (tests, debugging)."""
        flat = values.to_pylist() if isinstance(values, (pa.Array, pa.ChunkedArray)) else list(values)
        return [flat[self.offsets[i]: self.offsets[i + 1]] for i in range(len(self))]


@dataclass(frozen=True)
class Edit:
    """How to build a child batch from its parent batch (see the module docstring).

    ``positions``: for each output element, the parent flat position it copies (timestamps and
    event types always come from there). ``item_codes``: -1 keeps the parent's item, ``k >= 0``
    takes ``extra_items[k]``. ``timestamps``: optional new flat timestamps (inserted elements).
    ``parents``/``keys``: for operators that emit several sequences per parent (prefix expansion),
    the parent index and a fresh entity key of each output sequence; by default one per parent.
    ``event_types`` / ``context``: optional new flat values of those columns for the output
    (after ``positions`` is applied), for operators that rewrite them (context swap, negatives).
    """

    offsets: np.ndarray
    positions: np.ndarray
    item_codes: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    parents: np.ndarray | None = None
    keys: np.ndarray | None = None
    event_types: pa.Array | None = None
    context: dict[str, pa.Array] | None = None


def apply_edit(batch: SequenceBatch, edit: Edit, extra_items: pa.Array | None = None) -> SequenceBatch:
    positions = pa.array(edit.positions, type=pa.int64())
    items = batch.items.take(positions)
    if edit.item_codes is not None and (edit.item_codes >= 0).any():
        if extra_items is None:
            raise ValueError("this edit replaces items but no extra items were given")
        replaced = extra_items.take(pa.array(np.maximum(edit.item_codes, 0), type=pa.int64()))
        items = pc.if_else(pa.array(edit.item_codes >= 0), replaced, items)
    timestamps = edit.timestamps if edit.timestamps is not None else batch.timestamps[edit.positions]
    return SequenceBatch(
        keys=edit.keys if edit.keys is not None else batch.keys,
        offsets=edit.offsets.astype(np.int64),
        items=items,
        timestamps=np.asarray(timestamps, dtype=np.int64),
        event_types=edit.event_types if edit.event_types is not None else batch.event_types.take(positions),
        session_ids=None if batch.session_ids is None else batch.session_ids.take(positions),
        context={**{name: values.take(positions) for name, values in batch.context.items()}, **(edit.context or {})},
    )


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(start, start + length)`` for each pair, vectorized."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = offsets_from_lengths(lengths)
    return np.repeat(np.asarray(starts, dtype=np.int64) - offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
