"""Sequences as flat arrays plus offsets (Arrow's list layout), and edits applied to all columns.

Augmenters never loop over rows in Python. A sequence operator *plans* an :class:`Edit` from the
lengths (and timestamps) of a whole batch: for every output element, which parent element it
copies (``positions``) and whether its item is replaced by an extra item (``item_codes``, an index
into ``[MASK, *vocabulary]``). :func:`apply_edit` applies it to every list column at once with
Arrow's ``take``, which copies strings without creating Python objects.

A chain of operators does not need the intermediate columns, only the final ones: a
:class:`LazyBatch` composes the edits (positions into the source batch, item replacements,
rewritten columns) and takes each column from the source once, when it is first read (an operator
that reads items, or the output). Columns an edit does not move (mask, substitute: identity
positions) are never copied.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MASK_TOKEN = "[mask]"


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

    # Derived arrays are computed once per batch (operators ask for them repeatedly) and read-only.
    @cached_property
    def lengths(self) -> np.ndarray:
        return _readonly(np.diff(self.offsets))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @cached_property
    def sequence_of_element(self) -> np.ndarray:
        """For each flat element, the index of its sequence."""
        return _readonly(np.repeat(np.arange(len(self), dtype=np.int64), self.lengths))

    @cached_property
    def position_in_sequence(self) -> np.ndarray:
        """For each flat element, its 0-based position inside its sequence."""
        return _readonly(np.arange(self.offsets[-1], dtype=np.int64) - np.repeat(self.offsets[:-1], self.lengths))

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
        """One range of elements per output sequence: ``lengths[i]`` elements from flat ``starts[i]``."""
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
    """The child batch of ``edit`` with every column materialized (columns it does not move are shared)."""
    return LazyBatch.wrap(batch).apply(edit, extra_items).materialize()


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


_IDENTITY = [np.zeros(0, dtype=np.int64)]  # one shared, read-only 0, 1, 2, ... (grown as needed)


def identity_positions(total: int) -> np.ndarray:
    """``np.arange(total)`` as a read-only view of one shared array: the positions of an edit that
    moves nothing (it only replaces items, timestamps or context), which :meth:`LazyBatch.apply`
    recognizes without comparing them element by element, and which is not allocated per batch."""
    shared = _IDENTITY[0]
    if len(shared) < total:
        shared = np.arange(max(total, 2 * len(shared), 1 << 16), dtype=np.int64)
        shared.flags.writeable = False
        _IDENTITY[0] = shared
    return shared[:total]


def _is_identity(positions: np.ndarray, total: int) -> bool:
    if len(positions) != total:
        return False
    if positions.base is _IDENTITY[0] and positions.ctypes.data == positions.base.ctypes.data:
        return True  # a view of identity_positions() with the right length
    step = max(1, total // 64)  # a few probes first: most edits that move anything fail them
    if not (positions[::step] == np.arange(0, total, step)).all():
        return False
    return bool((positions == np.arange(total)).all())


class LazyBatch(SequenceBatch):
    """A batch derived from a ``source`` batch by composed edits; its columns are taken on first use.

    State: ``positions`` (source flat position of each element; None: the source's own elements),
    ``item_codes`` (-1: the source item at that position, ``k >= 0``: ``extra_items[k]``; None:
    none replaced), concrete ``keys``, ``offsets`` and ``timestamps``, and ``replaced``: columns an
    edit rewrote (``"event_types"``, ``("context", name)``), aligned with the elements. ``cache``
    is shared by every batch derived from the same source: the ranges behind ``take``/``tail``
    positions and the columns taken through them (branches that move nothing share one take of
    the tail-cut base).
    """

    def __init__(self, source: SequenceBatch, keys: np.ndarray, offsets: np.ndarray, timestamps: np.ndarray,
                 positions: np.ndarray | None = None, item_codes: np.ndarray | None = None,
                 extra_items: pa.Array | None = None, replaced: dict | None = None, cache: dict | None = None):
        init = object.__setattr__  # a frozen dataclass: fields are set once, here
        init(self, "keys", keys)
        init(self, "offsets", offsets)
        init(self, "timestamps", timestamps)
        init(self, "_source", source)
        init(self, "_positions", positions)
        init(self, "_item_codes", item_codes)
        init(self, "_extra", extra_items)
        init(self, "_replaced", replaced or {})
        init(self, "_cache", cache if cache is not None else {})

    @classmethod
    def wrap(cls, batch: SequenceBatch) -> "LazyBatch":
        """An unchanged view of ``batch`` (``batch`` itself if it is lazy already)."""
        if isinstance(batch, LazyBatch):
            return batch
        return cls(batch, batch.keys, batch.offsets, batch.timestamps)

    def apply(self, edit: Edit, extra_items: pa.Array | None = None) -> "LazyBatch":
        """The child batch of ``edit`` (as :func:`apply_edit`), still lazy: nothing is taken here."""
        p = np.asarray(edit.positions, dtype=np.int64)
        total = int(self.offsets[-1])
        identity = _is_identity(p, total)
        if not identity and len(p) and (p.min() < 0 or p.max() >= total):  # columns are taken unchecked
            raise IndexError(f"edit positions outside the batch's {total} elements")
        positions = self._positions if identity else (p if self._positions is None else self._positions[p])
        codes = self._item_codes if (identity or self._item_codes is None) else self._item_codes[p]
        extra = self._extra
        if edit.item_codes is not None:
            new = np.asarray(edit.item_codes, dtype=np.int64)
            chosen = new >= 0
            if chosen.any():
                if extra_items is None:
                    raise ValueError("this edit replaces items but no extra items were given")
                if codes is None or extra is None or extra is extra_items:
                    extra = extra_items
                elif not (codes[~chosen] >= 0).any():  # the earlier replacements are all overwritten
                    extra = extra_items
                else:  # two different extra arrays in one chain: index into both
                    new = np.where(chosen, new + len(extra), -1)
                    extra = _concat_extras(extra, extra_items)
                codes = new if codes is None else np.where(chosen, new, codes)
        replaced = {name: values if identity else values.take(pa.array(p)) for name, values in self._replaced.items()}
        if edit.event_types is not None:
            replaced["event_types"] = edit.event_types
        for name, values in (edit.context or {}).items():
            replaced[("context", name)] = values
        timestamps = (edit.timestamps if edit.timestamps is not None
                      else self.timestamps if identity else self.timestamps[p])
        return LazyBatch(self._source, edit.keys if edit.keys is not None else self.keys,
                         np.asarray(edit.offsets, dtype=np.int64), np.asarray(timestamps, dtype=np.int64),
                         positions, codes, extra, replaced, self._cache)

    def _slice(self, starts: np.ndarray, lengths: np.ndarray, keys: np.ndarray) -> "LazyBatch":
        """``take``/``tail``, lazily: whole sequences or parts of them, one range each. Remembers the
        ranges, so that columns can be copied as slices of the source when the ranges join into a
        few long runs."""
        child = self.apply(Edit(offsets_from_lengths(lengths), ranges(starts, lengths), keys=keys))
        if self._positions is None and child._positions is not None:
            nonempty = lengths > 0
            starts, lengths = starts[nonempty], lengths[nonempty]
            joins = np.zeros(len(starts), dtype=bool)
            joins[1:] = starts[1:] == starts[:-1] + lengths[:-1]
            first = np.flatnonzero(~joins)
            runs = (starts[first], np.add.reduceat(lengths, first) if len(first) else lengths[:0])
            self._cache[("runs", id(child._positions))] = (child._positions, runs)
        return child

    def _column(self, name, values: pa.Array | None) -> pa.Array | None:
        """A source column through the composed positions.

        Columns of the bases built by ``take``/``tail`` are cached for every batch derived from the
        same source (the branches that move nothing share them); other positions belong to one
        batch only, whose own cached properties keep its columns.
        """
        return _through(self._cache, self._positions, name, values)

    @cached_property
    def items(self) -> pa.Array:
        base = self._source.items
        codes = self._item_codes
        chosen = np.flatnonzero(codes >= 0) if codes is not None else ()
        if len(chosen) == 0:
            return self._column("items", base)
        extra = self._extra if self._extra.type == base.type else self._extra.cast(base.type)
        if len(extra) > len(chosen):  # a large vocabulary: only the items used are appended
            extra, extra_index = extra.take(pa.array(codes[chosen])), np.arange(len(chosen), dtype=np.int64)
        else:
            extra_index = codes[chosen]
            if extra_index.max() >= len(extra):
                raise IndexError(f"item codes beyond the {len(extra)} extra items")
        index = np.arange(len(codes), dtype=np.int64) if self._positions is None else self._positions.copy()
        index[chosen] = len(base) + extra_index
        return pc.take(pa.concat_arrays([base, extra]), pa.array(index), boundscheck=False)

    @cached_property
    def event_types(self) -> pa.Array:
        replaced = self._replaced.get("event_types")
        return replaced if replaced is not None else self._column("event_types", self._source.event_types)

    @cached_property
    def session_ids(self) -> pa.Array | None:
        replaced = self._replaced.get("session_ids")
        return replaced if replaced is not None else self._column("session_ids", self._source.session_ids)

    @cached_property
    def context(self) -> Mapping[str, pa.Array]:
        names = list(self._source.context) + [k[1] for k in self._replaced if isinstance(k, tuple)
                                              and k[1] not in self._source.context]
        return _LazyContext(names, self._source.context, self._replaced, self._cache, self._positions)

    def materialize(self) -> SequenceBatch:
        """A plain batch with every column taken."""
        return SequenceBatch(keys=self.keys, offsets=self.offsets, items=self.items, timestamps=self.timestamps,
                             event_types=self.event_types, session_ids=self.session_ids, context=dict(self.context))


def _through(cache: dict, positions: np.ndarray | None, name, values: pa.Array | None) -> pa.Array | None:
    """``LazyBatch._column`` (a source column through the composed ``positions``), for the batch and
    its context, which must not hold the batch: a reference cycle would keep every batch's Arrow
    buffers alive until Python's cycle collector runs, instead of freeing them for the next batch."""
    if values is None or positions is None:
        return values
    runs = cache.get(("runs", id(positions)))  # holds ``positions``: its id is not reused
    if runs is None:
        return _gather(values, positions)
    key = (name, id(positions))
    if key not in cache:
        cache[key] = _gather(values, positions, runs[1])
    return cache[key]


class _LazyContext(Mapping):
    """``LazyBatch.context``: each field taken when first read (from what the batch would take it
    from, not from the batch itself: see :func:`_through`)."""

    def __init__(self, names: list[str], source: Mapping[str, pa.Array], replaced: dict, cache: dict,
                 positions: np.ndarray | None):
        self._names, self._values = names, {}
        self._source, self._replaced, self._cache, self._positions = source, replaced, cache, positions

    def __getitem__(self, name: str) -> pa.Array:
        if name not in self._values:
            if name not in self._names:
                raise KeyError(name)
            replaced = self._replaced.get(("context", name))
            self._values[name] = (replaced if replaced is not None
                                  else _through(self._cache, self._positions, ("context", name), self._source[name]))
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


_EXTRAS: dict = {}


def _concat_extras(first: pa.Array, second: pa.Array) -> pa.Array:
    """``first`` then ``second``, cached (a chain's extra arrays are the same for every batch)."""
    key = (id(first), id(second))
    hit = _EXTRAS.get(key)
    if hit is None:
        if len(_EXTRAS) > 64:
            _EXTRAS.clear()
        hit = _EXTRAS[key] = (first, second, pa.concat_arrays([first, second.cast(first.type)]))
    return hit[2]


_RUN = 64  # contiguous runs at least this long (on average) are copied as slices, not taken


def _gather(values: pa.Array, positions: np.ndarray, runs: tuple[np.ndarray, np.ndarray] | None = None) -> pa.Array:
    """``values[positions]``: Arrow's ``take``, or, when ``runs`` (first position and length of the
    contiguous runs making up ``positions``) are few and long, e.g. sequences cut to their most
    recent events, the concatenation of slices (~10× cheaper than a take). ``positions`` must be
    valid (unchecked, as ``LazyBatch.apply`` checks every edit's positions)."""
    if runs is not None and len(runs[0]) * _RUN <= len(positions):
        slices = [values.slice(first, length) for first, length in zip(runs[0].tolist(), runs[1].tolist())]
        return pa.concat_arrays(slices or [values.slice(0, 0)])
    # Positions are checked against the source when an edit is applied (LazyBatch.apply).
    return pc.take(values, pa.array(positions, type=pa.int64()), boundscheck=False)


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
