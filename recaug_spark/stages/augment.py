"""The augment stage: real training sequences plus augmented copies, with provenance on every row.

Sequences (the training part only: held-out targets live in another table) are hash-partitioned
by user id; each partition is augmented with ``mapInArrow`` in bounded Arrow batches by the pure
augmenters of ``recaug_spark.augment``. Fitted state (item popularity for insert/substitute) is
computed once with Spark and shipped to the executors with the function's closure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from recaug_spark import rng
from recaug_spark.augment.base import Augmenter, Draws, build
from recaug_spark.augment.batch import MASK_TOKEN, SequenceBatch, apply_edit, offsets_from_lengths, ranges
from recaug_spark.config import AugmentConfig
from recaug_spark.delta import rows_by_partition
from recaug_spark.runs import RunContext, StageResult

REAL_CHAIN = "real"  # operator_chain of the real rows: the augmented tables are real ∪ augmented

AUGMENTED_SEQUENCES = T.StructType([
    T.StructField("sequence_id", T.StringType(), False),  # user_id for real rows, user_id~branch:copy[:k] otherwise
    T.StructField("user_id", T.StringType(), False),  # the real user whose training sequence is the parent
    T.StructField("item_ids", T.ArrayType(T.StringType()), False),
    T.StructField("timestamps", T.ArrayType(T.TimestampType()), False),
    T.StructField("event_types", T.ArrayType(T.StringType()), False),
    T.StructField("session_ids", T.ArrayType(T.StringType()), True),
    T.StructField("length", T.IntegerType(), False),
    T.StructField("origin", T.StringType(), False),  # real / augmented
    T.StructField("operator_chain", T.StringType(), False),  # "real", or e.g. "crop>mask"
    T.StructField("branch", T.IntegerType(), True),  # index of the config branch
    T.StructField("copy", T.IntegerType(), True),
    T.StructField("params", T.StringType(), True),  # JSON: operator -> parameters
    T.StructField("seed", T.LongType(), False),
    T.StructField("generator", T.StringType(), True),  # name@version for model-based operators
    T.StructField("run_id", T.StringType(), False),
    T.StructField("config_hash", T.StringType(), False),
])


@dataclass(frozen=True)
class CompiledBranch:
    index: int
    chain: str
    operators: tuple[Augmenter, ...]
    states: tuple[Any, ...]
    copies: int
    max_length: int | None
    params_json: str


def compile_branches(cfg: AugmentConfig, sequences: DataFrame | None, items: DataFrame | None) -> list[CompiledBranch]:
    """Build every branch's operators and fit their state once (on the driver, with Spark)."""
    branches, fitted = [], {}
    for index, branch in enumerate(cfg.branches):
        operators = tuple(build(name, branch.params.get(name)) for name in branch.operators)
        states = []
        for op in operators:
            key = (type(op), json.dumps(op.describe(), sort_keys=True))
            if key not in fitted:
                fitted[key] = op.fit(sequences.sparkSession if sequences is not None else None, sequences, items)
            states.append(fitted[key])
        params = {op.name: op.params.model_dump(mode="json") for op in operators}
        branches.append(CompiledBranch(index, ">".join(branch.operators), operators, tuple(states), branch.copies,
                                       branch.max_length, json.dumps(params, sort_keys=True)))
    return branches


def augment_batch(batch: SequenceBatch, branches: list[CompiledBranch], seed: int) -> Iterator[tuple[CompiledBranch, int, SequenceBatch, np.ndarray]]:
    """Yield (branch, copy, augmented batch, parent index per output row) for one real batch."""
    for branch in branches:
        parents = np.arange(len(batch), dtype=np.int64)
        if branch.max_length is not None:
            parents = np.flatnonzero(batch.lengths <= branch.max_length)
        base = _subset(batch, parents)
        for copy in range(branch.copies):
            current, lineage = base, parents
            for position, (op, state) in enumerate(zip(branch.operators, branch.states)):
                draws = Draws(seed, f"{branch.index}:{position}:{op.name}", current.keys, copy)
                edit = op.plan(current, draws, state)
                if edit.parents is not None:
                    lineage = lineage[edit.parents]
                current = apply_edit(current, edit, _extra_items(state))
            yield branch, copy, current, lineage


def _extra_items(state) -> pa.Array:
    vocabulary = getattr(state, "items", None)
    mask = pa.array([MASK_TOKEN], pa.string())
    return mask if vocabulary is None else pa.concat_arrays([mask, vocabulary])


def _subset(batch: SequenceBatch, rows: np.ndarray) -> SequenceBatch:
    if len(rows) == len(batch):
        return batch
    lengths = batch.lengths[rows]
    positions = pa.array(ranges(batch.offsets[:-1][rows], lengths), pa.int64())
    return SequenceBatch(
        keys=batch.keys[rows], offsets=offsets_from_lengths(lengths), items=batch.items.take(positions),
        timestamps=batch.timestamps[positions.to_numpy()], event_types=batch.event_types.take(positions),
        session_ids=None if batch.session_ids is None else batch.session_ids.take(positions),
    )


def batch_from_arrow(record_batch: pa.RecordBatch) -> tuple[SequenceBatch, pa.Array]:
    """A SequenceBatch (keys hashed from user ids) and the user id column of an Arrow batch."""
    user_ids = record_batch.column("user_id")
    items = record_batch.column("item_ids")
    offsets = items.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]

    def flat(name):
        return record_batch.column(name).flatten()

    ts = flat("timestamps").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    return SequenceBatch(
        keys=rng.key_strings(user_ids.to_pylist()), offsets=offsets, items=items.flatten(), timestamps=ts,
        event_types=flat("event_types"), session_ids=flat("session_ids"),
    ), user_ids


def _list(offsets: np.ndarray, values: pa.Array) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


def batch_to_arrow(batch: SequenceBatch, columns: dict[str, pa.Array | Any], schema: pa.Schema) -> pa.RecordBatch:
    n = len(batch)
    data = {
        "item_ids": _list(batch.offsets, batch.items),
        "timestamps": _list(batch.offsets, pa.array(batch.timestamps, pa.timestamp("us", tz="UTC"))),
        "event_types": _list(batch.offsets, batch.event_types),
        "session_ids": _list(batch.offsets, batch.session_ids if batch.session_ids is not None
                             else pa.nulls(int(batch.offsets[-1]), pa.string())),
        "length": pa.array(batch.lengths.astype(np.int32)),
    }
    for name, value in columns.items():
        data[name] = value if isinstance(value, (pa.Array, pa.ChunkedArray)) else pa.array([value] * n, schema.field(name).type)
    return pa.RecordBatch.from_arrays([data[f.name] for f in schema], schema=schema)


def augment_sequences(sequences: DataFrame, cfg: AugmentConfig, seed: int, run_id: str, config_hash: str,
                      items: DataFrame | None = None) -> DataFrame:
    """Real sequences ∪ their augmented copies, as a DataFrame with provenance columns."""
    from pyspark.sql.pandas.types import to_arrow_schema

    branches = compile_branches(cfg, sequences, items)
    schema = to_arrow_schema(AUGMENTED_SEQUENCES)
    schema = pa.schema([f.with_nullable(True) for f in schema])

    def augment_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for record_batch in batches:
            if record_batch.num_rows == 0:
                continue
            real, user_ids = batch_from_arrow(record_batch)
            common = {"seed": seed, "run_id": run_id, "config_hash": config_hash, "generator": None}
            yield batch_to_arrow(real, {**common, "sequence_id": user_ids, "user_id": user_ids, "origin": "real",
                                        "operator_chain": REAL_CHAIN, "branch": None, "copy": None, "params": None},
                                 schema)
            for branch, copy, out, lineage in augment_batch(real, branches, seed):
                if len(out) == 0:
                    continue
                parent_ids = user_ids.take(pa.array(lineage, pa.int64()))
                suffix = np.arange(len(out)) - np.searchsorted(lineage, lineage)  # k-th output of a parent
                ids = [f"{u}~{branch.index}:{copy}" + (f":{k}" if k else "")
                       for u, k in zip(parent_ids.to_pylist(), suffix.tolist())]
                yield batch_to_arrow(out, {**common, "sequence_id": pa.array(ids, pa.string()), "user_id": parent_ids,
                                           "origin": "augmented", "operator_chain": branch.chain,
                                           "branch": branch.index, "copy": copy, "params": branch.params_json},
                                     schema)

    spark = sequences.sparkSession
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_rows))
    columns = ["user_id", "item_ids", "timestamps", "event_types", "session_ids"]
    partitioned = sequences.select(*columns).repartition(cfg.partitions, "user_id")
    return partitioned.mapInArrow(augment_partition, AUGMENTED_SEQUENCES)


def run_augment(ctx: RunContext) -> StageResult:
    cfg = ctx.cfg.augment
    sequences = ctx.warehouse.read("sequences")
    augmented = augment_sequences(sequences, cfg, ctx.cfg.run.seed, ctx.run_id, ctx.cfg.hash,
                                  items=ctx.warehouse.read("items"))
    written = ctx.warehouse.write("augmented_sequences", augmented, mode="overwrite",
                                  partition_by=["operator_chain"], txn=ctx.txn("augment"))
    if written.skipped:
        return StageResult("augment", rows_in=0, rows_out=0, tables={"augmented_sequences": written.version},
                           skipped=True)
    per_chain = rows_by_partition(written.uri, "operator_chain", written.version)
    counts_by_chain = {f"rows.{chain}": rows for chain, rows in sorted(per_chain.items())}
    real = counts_by_chain.get(f"rows.{REAL_CHAIN}", 0)
    total = sum(counts_by_chain.values())
    counts = {**counts_by_chain, "augmentation_factor_x1000": int(round(1000 * total / real)) if real else 0}
    return StageResult("augment", rows_in=real, rows_out=total, counts=counts,
                       tables={"augmented_sequences": written.version})
