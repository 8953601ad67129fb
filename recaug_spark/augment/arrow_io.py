"""Arrow record batches ↔ the augmenters' batches: what ``mapInArrow`` hands over and must return.

Sequences arrive as Arrow list columns (the ``sequences`` table's) and become a
:class:`~recaug_spark.augment.batch.SequenceBatch` without copying the flat values; an augmented
batch goes back as list columns over its flat arrays, plus the provenance columns, as a record
batch of the output schema (``schemas.AUGMENTED_SEQUENCES`` / ``AUGMENTED_ITEMS``). Items travel
as pandas frames, the form the item operators work on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recaug_spark import rng
from recaug_spark.augment.balance_ops import NEGATIVE_CONTEXT
from recaug_spark.augment.batch import SequenceBatch
from recaug_spark.schemas import CONTEXT_COLUMNS

# Batch context name -> output column: the per-event context, and the sampled negatives.
OUTPUT_CONTEXT_COLUMNS = {**{name: column for column, name in CONTEXT_COLUMNS.items()},
                          NEGATIVE_CONTEXT: "negative_item_ids"}
ITEM_COLUMNS = ("item_id", "title", "description", "category", "price", "price_imputed", "attributes")

_TIMESTAMP = pa.timestamp("us", tz="UTC")


def batch_from_arrow(record_batch: pa.RecordBatch) -> tuple[SequenceBatch, pa.Array]:
    """A SequenceBatch (keys hashed from user ids) and the user id column of an Arrow batch."""
    user_ids = record_batch.column("user_id")
    items = record_batch.column("item_ids")
    offsets = items.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]

    def flat(name):
        return record_batch.column(name).flatten()

    def aligned(name):  # a per-event list column that may be absent, null or of other lengths
        if name not in record_batch.schema.names:
            return None
        return aligned_values(record_batch.column(name), offsets)

    ts = flat("timestamps").cast(_TIMESTAMP).cast(pa.int64()).to_numpy(zero_copy_only=False)
    context = {name: aligned(column) for column, name in CONTEXT_COLUMNS.items()}
    return SequenceBatch(
        keys=rng.key_strings(user_ids), offsets=offsets, items=items.flatten(), timestamps=ts,
        event_types=flat("event_types"), session_ids=aligned("session_ids"),
        context={name: values for name, values in context.items() if values is not None},
    ), user_ids


def aligned_values(column: pa.ListArray, offsets: np.ndarray) -> pa.Array:
    """The flat values of a per-event list column, laid out on the items' ``offsets`` (starting at 0):
    a row whose list is null or of another length than its items gets one null per event.

    Decided row by row, so a row's values never depend on the other rows of its batch (the batch
    boundaries depend on the partitioning); ``recaug_spark.augment.engine.real_rows`` does the same
    in Spark."""
    total = int(offsets[-1])
    own = column.offsets.to_numpy().astype(np.int64)  # into column.values (a slice's offsets are absolute)
    lengths, own_lengths = np.diff(offsets), np.diff(own)
    valid = column.is_valid().to_numpy(zero_copy_only=False) if column.null_count else np.ones(len(column), bool)
    ok = valid & (own_lengths == lengths)
    if ok.all():
        return column.flatten()
    if not ok.any():
        return pa.nulls(total, pa.string())
    # source index of every output element (own start of its row + position), masked where not ok
    start = np.repeat(own[:-1] - offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
    keep = np.repeat(ok, lengths)
    return column.values.take(pa.array(np.where(keep, start, 0), pa.int64(), mask=~keep))


def _timestamps(values: np.ndarray) -> pa.Array:
    """int64 µs as an Arrow timestamp array, without a copy."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(_TIMESTAMP, len(values), [None, pa.py_buffer(values)])


def _list(offsets: pa.Array, values: pa.Array) -> pa.ListArray:
    return pa.ListArray.from_arrays(offsets, values)


def batch_to_arrow(batch: SequenceBatch, columns: dict[str, pa.Array | Any], schema: pa.Schema) -> pa.RecordBatch:
    """A record batch of ``schema``: the list columns of ``batch`` plus ``columns`` (see :func:`to_record_batch`)."""
    n = len(batch)
    offsets = pa.array(batch.offsets.astype(np.int32))
    context = batch.context
    data = {
        "item_ids": _list(offsets, batch.items),
        "timestamps": _list(offsets, _timestamps(batch.timestamps)),
        "event_types": _list(offsets, batch.event_types),
        "session_ids": _list(offsets, batch.session_ids if batch.session_ids is not None
                             else pa.nulls(int(batch.offsets[-1]), pa.string())),
        "length": pa.array(batch.lengths.astype(np.int32)),
    }
    for name, column in OUTPUT_CONTEXT_COLUMNS.items():
        values = context.get(name)
        data[column] = _list(offsets, values) if values is not None else pa.nulls(n, pa.list_(pa.string()))
    return to_record_batch({**data, **columns}, schema, n)


def items_to_arrow(items: pd.DataFrame, schema: pa.Schema) -> dict[str, pa.Array]:
    """The item columns of a frame of items, typed as in ``schema``."""
    return {name: pa.array(items[name], schema.field(name).type, from_pandas=True) for name in ITEM_COLUMNS}


def to_record_batch(columns: dict[str, pa.Array | Any], schema: pa.Schema, n: int) -> pa.RecordBatch:
    """A record batch of ``schema`` with ``n`` rows: Arrow arrays as they are, any other value
    repeated on every row (provenance constants)."""
    arrays = []
    for f in schema:
        value = columns[f.name]
        arrays.append(value if isinstance(value, (pa.Array, pa.ChunkedArray)) else _constant(value, f.type, n))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


_CONSTANTS: dict[tuple, pa.Array] = {}


def _constant(value, kind: pa.DataType, n: int) -> pa.Array:
    """``n`` copies of ``value``: a slice of one cached array per (value, type), grown as needed."""
    key = (value, kind)
    column = _CONSTANTS.get(key)
    if column is None or len(column) < n:
        if len(_CONSTANTS) > 256:
            _CONSTANTS.clear()
        size = max(n, 4096, 2 * len(column) if column is not None else 0)
        column = _CONSTANTS[key] = pa.nulls(size, kind) if value is None else pa.repeat(pa.scalar(value, kind), size)
    return column.slice(0, n)


def sequence_ids(parent_ids: pa.Array, lineage: np.ndarray, branch: int, copy: int) -> pa.Array:
    """``<user_id>~<branch>:<copy>``, then ``:<k>`` for the k-th (k > 0) output of one parent."""
    suffix = pa.scalar(f"~{branch}:{copy}", pa.string())
    k = np.arange(len(lineage)) - np.searchsorted(lineage, lineage)  # lineage is sorted
    if not k.any():
        return pc.binary_join_element_wise(parent_ids, suffix, "")
    extra = pc.if_else(pa.array(k > 0), pc.binary_join_element_wise(":", pc.cast(pa.array(k), pa.string()), ""), "")
    return pc.binary_join_element_wise(parent_ids, suffix, extra, "")


class SuffixedIds:
    """``<id><suffix>`` for every id of a batch, for several suffixes: the id bytes are laid out once
    per suffix length with the first suffix of that length in its slots; another suffix is a copy of
    that layout with only the bytes where it differs rewritten (``~0:1`` after ``~0:0``: one byte per
    id). A string join per branch and copy costs several times more."""

    def __init__(self, ids: pa.Array):
        self.ids = ids
        self.layouts: dict[int, tuple] = {}

    def get(self, suffix: str) -> pa.Array:
        ids = self.ids
        if not isinstance(ids, pa.Array) or ids.type != pa.string() or ids.null_count:
            return pc.binary_join_element_wise(ids, pa.scalar(suffix, pa.string()), "")
        raw = np.frombuffer(suffix.encode(), dtype=np.uint8)
        layout = self.layouts.get(len(raw))
        if layout is None:
            layout = self.layouts[len(raw)] = self._layout(raw)
        offsets, data, slots, written = layout
        out = data.copy()
        for j in np.flatnonzero(raw != written).tolist():
            out[slots[j]] = raw[j]
        return pa.Array.from_buffers(pa.string(), len(ids), [None, offsets, pa.py_buffer(out)])

    def _layout(self, raw: np.ndarray) -> tuple:
        """(offsets, bytes with ``raw`` in every id's suffix slots, slot positions by suffix byte, ``raw``)."""
        ids, n, width = self.ids, len(self.ids), len(raw)
        offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32)[ids.offset: ids.offset + n + 1].astype(np.int64)
        lengths = np.diff(offsets)
        out_offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lengths + width, out=out_offsets[1:])
        data = np.empty(int(out_offsets[-1]), dtype=np.uint8)
        slots = np.arange(width, dtype=np.int64)[:, None] + (out_offsets[1:].astype(np.int64) - width)
        id_bytes = np.ones(len(data), dtype=bool)
        id_bytes[slots] = False
        size = int(offsets[-1] - offsets[0])
        if size:  # every byte outside the slots is the next byte of the ids, in order
            data[id_bytes] = np.frombuffer(ids.buffers()[2], dtype=np.uint8)[int(offsets[0]): int(offsets[-1])]
        data[slots] = raw[:, None]
        return pa.py_buffer(out_offsets), data, slots, raw


def output_schema(struct) -> pa.Schema:
    """The Arrow schema of the batches a ``mapInArrow`` function returns for the Spark schema
    ``struct``, every field nullable (Spark checks the declared nullability on its side)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    return pa.schema([f.with_nullable(True) for f in to_arrow_schema(struct)])
