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
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from recaug_spark import rng
from recaug_spark.augment.base import Augmenter, Draws, build
from recaug_spark.augment.batch import MASK_TOKEN, LazyBatch, SequenceBatch
from recaug_spark.augment.targeting import Targeting, fit_targeting
from recaug_spark.config import AugmentConfig
from recaug_spark.delta import replace_rows_by_key, rows_by_partition
from recaug_spark.runs import RunContext, StageResult
from recaug_spark.stages.augment_items import write_augmented_items
from recaug_spark.schemas import CONTEXT_COLUMNS

OUTPUT_CONTEXT_COLUMNS = {**{name: column for column, name in CONTEXT_COLUMNS.items()},
                          "negative_item_id": "negative_item_ids"}  # batch context name -> output column
REAL_CHAIN = "real"  # operator_chain of the real rows: the augmented tables are real ∪ augmented

AUGMENTED_SEQUENCES = T.StructType([
    T.StructField("sequence_id", T.StringType(), False),  # user_id for real rows, user_id~branch:copy[:k] otherwise
    T.StructField("user_id", T.StringType(), False),  # the real user whose training sequence is the parent
    T.StructField("item_ids", T.ArrayType(T.StringType()), False),
    T.StructField("timestamps", T.ArrayType(T.TimestampType()), False),
    T.StructField("event_types", T.ArrayType(T.StringType()), False),
    T.StructField("session_ids", T.ArrayType(T.StringType()), True),
    T.StructField("countries", T.ArrayType(T.StringType()), True),
    T.StructField("devices", T.ArrayType(T.StringType()), True),
    T.StructField("negative_item_ids", T.ArrayType(T.StringType()), True),  # sampled negative per position
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
    target: Targeting
    params_json: str
    origin: str = "augmented"  # "synthetic" when an operator of the chain writes synthetic users
    generator: str | None = None  # name@version of the generator models the chain uses


def compile_branches(cfg: AugmentConfig, sequences: DataFrame | None, items: DataFrame | None,
                     models_dir: str | None = None) -> list[CompiledBranch]:
    """Build every branch's operators and fit their state and target once (on the driver, with Spark).

    Generator-backed operators find their models in ``models_dir`` (``recaug fit``'s artifacts)."""
    from recaug_spark.augment.generator_ops import GeneratorAugmenter

    branches, fitted = [], {}
    spark = sequences.sparkSession if sequences is not None else None
    for index, branch in enumerate(cfg.branches):
        operators = tuple(build(name, branch.params.get(name)) for name in branch.operators)
        states = []
        for op in operators:
            key = (type(op), json.dumps(op.describe(), sort_keys=True))
            if key not in fitted:
                fitted[key] = (op.fit(spark, sequences, items, models_dir=models_dir)
                               if isinstance(op, GeneratorAugmenter) else op.fit(spark, sequences, items))
            states.append(fitted[key])
        targeting = {"max_length": branch.max_length, "cold_start_days": branch.cold_start_days,
                     "long_tail_share": branch.long_tail_share}
        if branch.cold_start_days is None and branch.long_tail_share is None:
            target = Targeting(max_length=branch.max_length)
        else:
            target = fit_targeting(sequences, **targeting)
        params = {op.name: op.params.model_dump(mode="json") for op in operators}
        params["_input"] = {"max_input_events": cfg.max_input_events,
                            **{k: v for k, v in targeting.items() if v is not None}}
        generators = [op.generator_tag(state) for op, state in zip(operators, states) if isinstance(op, GeneratorAugmenter)]
        origin = "synthetic" if any(getattr(op, "origin", "augmented") == "synthetic" for op in operators) else "augmented"
        branches.append(CompiledBranch(index, ">".join(branch.operators), operators, tuple(states), branch.copies,
                                       target, json.dumps(params, sort_keys=True), origin,
                                       ",".join(dict.fromkeys(generators)) or None))
    return branches


def augment_batch(batch: SequenceBatch, branches: list[CompiledBranch], seed: int,
                  max_input_events: int | None = None) -> Iterator[tuple[CompiledBranch, int, SequenceBatch, np.ndarray]]:
    """Yield (branch, copy, augmented batch, parent index per output row) for one real batch.

    Augmenters see each targeted sequence's most recent ``max_input_events`` events only. The
    augmented batches are lazy (:class:`LazyBatch`): edits compose, and each output column is taken
    from ``batch`` once, when read; untargeted branches share one tail-cut base.
    """
    source = LazyBatch.wrap(batch)
    everyone = np.arange(len(batch), dtype=np.int64)
    shared = None  # the base of untargeted branches
    for branch in branches:
        if branch.target.selects_all:
            if shared is None:
                shared = source if max_input_events is None else source.tail(max_input_events)
            parents, base = everyone, shared
        else:
            parents = branch.target.select(batch)
            base = source.take(parents)
            if max_input_events is not None:
                base = base.tail(max_input_events)
        for copy in range(branch.copies):
            current, lineage = base, parents
            for position, (op, state) in enumerate(zip(branch.operators, branch.states)):
                draws = Draws(seed, f"{branch.index}:{position}:{op.name}", current.keys, copy)
                edit = op.plan(current, draws, state)
                if edit.parents is not None:
                    lineage = lineage[edit.parents]
                current = current.apply(edit, _extra_items(state))
            yield branch, copy, current, lineage


_MASK_ONLY = pa.array([MASK_TOKEN], pa.string())
_EXTRA_ITEMS: dict[int, tuple[Any, pa.Array]] = {}


def _extra_items(state) -> pa.Array:
    """``[MASK, *vocabulary]`` of an operator's state, built once per state (the same array every batch)."""
    vocabulary = getattr(state, "items", None)
    if vocabulary is None:
        return _MASK_ONLY
    hit = _EXTRA_ITEMS.get(id(state))
    if hit is None or hit[0] is not state:
        if len(_EXTRA_ITEMS) > 64:
            _EXTRA_ITEMS.clear()
        hit = _EXTRA_ITEMS[id(state)] = (state, pa.concat_arrays([_MASK_ONLY, vocabulary.cast(pa.string())]))
    return hit[1]


def batch_from_arrow(record_batch: pa.RecordBatch) -> tuple[SequenceBatch, pa.Array]:
    """A SequenceBatch (keys hashed from user ids) and the user id column of an Arrow batch."""
    user_ids = record_batch.column("user_id")
    items = record_batch.column("item_ids")
    offsets = items.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    total = int(offsets[-1])

    def flat(name):
        return record_batch.column(name).flatten()

    def aligned(name):  # a per-event list column that may be absent, null or of other lengths
        if name not in record_batch.schema.names:
            return None
        column = record_batch.column(name)
        if column.null_count:
            return pa.nulls(total, pa.string())
        own = column.offsets.to_numpy()
        if len(own) != len(offsets) or not np.array_equal(own - own[0], offsets):
            return pa.nulls(total, pa.string())
        return column.flatten()

    ts = flat("timestamps").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    context = {name: aligned(column) for column, name in CONTEXT_COLUMNS.items()}
    return SequenceBatch(
        keys=rng.key_strings(user_ids), offsets=offsets, items=items.flatten(), timestamps=ts,
        event_types=flat("event_types"), session_ids=aligned("session_ids"),
        context={name: values for name, values in context.items() if values is not None},
    ), user_ids


_TIMESTAMP = pa.timestamp("us", tz="UTC")


def _timestamps(values: np.ndarray) -> pa.Array:
    """int64 µs as an Arrow timestamp array, without a copy."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(_TIMESTAMP, len(values), [None, pa.py_buffer(values)])


def _list(offsets: pa.Array, values: pa.Array) -> pa.ListArray:
    return pa.ListArray.from_arrays(offsets, values)


def batch_to_arrow(batch: SequenceBatch, columns: dict[str, pa.Array | Any], schema: pa.Schema) -> pa.RecordBatch:
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
    for name, value in columns.items():
        data[name] = value if isinstance(value, (pa.Array, pa.ChunkedArray)) else _constant(value, schema.field(name).type, n)
    return pa.RecordBatch.from_arrays([data[f.name] for f in schema], schema=schema)


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


def _sequence_ids(parent_ids: pa.Array, lineage: np.ndarray, branch: int, copy: int) -> pa.Array:
    """``<user_id>~<branch>:<copy>``, then ``:<k>`` for the k-th (k > 0) output of one parent."""
    suffix = pa.scalar(f"~{branch}:{copy}", pa.string())
    k = np.arange(len(lineage)) - np.searchsorted(lineage, lineage)  # lineage is sorted
    if not k.any():
        return pc.binary_join_element_wise(parent_ids, suffix, "")
    extra = pc.if_else(pa.array(k > 0), pc.binary_join_element_wise(":", pc.cast(pa.array(k), pa.string()), ""), "")
    return pc.binary_join_element_wise(parent_ids, suffix, extra, "")


class _SuffixedIds:
    """``<user_id><suffix>`` for every user id of a batch, for several suffixes: the id bytes are laid
    out once per suffix length, then each suffix is written into its slots (a string join per
    branch and copy costs several times more)."""

    def __init__(self, user_ids: pa.Array):
        self.user_ids = user_ids
        self.layouts: dict[int, tuple] = {}

    def get(self, suffix: str) -> pa.Array:
        ids = self.user_ids
        if not isinstance(ids, pa.Array) or ids.type != pa.string() or ids.null_count:
            return pc.binary_join_element_wise(ids, pa.scalar(suffix, pa.string()), "")
        raw = np.frombuffer(suffix.encode(), dtype=np.uint8)
        layout = self.layouts.get(len(raw))
        if layout is None:
            layout = self.layouts[len(raw)] = self._layout(len(raw))
        offsets, data, slots = layout
        out = data.copy()
        out[slots] = raw
        return pa.Array.from_buffers(pa.string(), len(ids), [None, offsets, pa.py_buffer(out)])

    def _layout(self, width: int) -> tuple:
        ids, n = self.user_ids, len(self.user_ids)
        offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32)[ids.offset: ids.offset + n + 1].astype(np.int64)
        lengths = np.diff(offsets)
        out_offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lengths + width, out=out_offsets[1:])
        data = np.zeros(int(out_offsets[-1]), dtype=np.uint8)
        size = int(offsets[-1] - offsets[0])
        if size:
            source = np.frombuffer(ids.buffers()[2], dtype=np.uint8)[int(offsets[0]): int(offsets[-1])]
            data[np.arange(size, dtype=np.int64) + np.repeat(np.arange(n, dtype=np.int64) * width, lengths)] = source
        slots = (out_offsets[1:].astype(np.int64) - width)[:, None] + np.arange(width, dtype=np.int64)
        return pa.py_buffer(out_offsets), data, slots


def augment_record_batch(record_batch: pa.RecordBatch, branches: list[CompiledBranch], cfg: AugmentConfig, seed: int,
                         run_id: str, config_hash: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The stage's work on one Arrow batch of sequences: its real rows, then every branch's and copy's
    augmented rows, as Arrow batches of ``schema`` (``AUGMENTED_SEQUENCES``), as mapInArrow returns them."""
    if record_batch.num_rows == 0:
        return
    real, user_ids = batch_from_arrow(record_batch)
    common = {"seed": seed, "run_id": run_id, "config_hash": config_hash, "generator": None}
    yield batch_to_arrow(real, {**common, "sequence_id": user_ids, "user_id": user_ids, "origin": "real",
                                "operator_chain": REAL_CHAIN, "branch": None, "copy": None, "params": None},
                         schema)
    suffixed = _SuffixedIds(user_ids)
    for branch, copy, out, lineage in augment_batch(real, branches, seed, cfg.max_input_events):
        if len(out) == 0:
            continue
        if len(lineage) == len(real) and bool((lineage == np.arange(len(real))).all()):  # one row per user
            parent_ids, sequence_ids = user_ids, suffixed.get(f"~{branch.index}:{copy}")
        else:
            parent_ids = user_ids.take(pa.array(lineage, pa.int64()))
            sequence_ids = _sequence_ids(parent_ids, lineage, branch.index, copy)
        yield batch_to_arrow(out, {**common, "sequence_id": sequence_ids, "generator": branch.generator,
                                   "user_id": parent_ids, "origin": branch.origin, "operator_chain": branch.chain,
                                   "branch": branch.index, "copy": copy, "params": branch.params_json},
                             schema)


def augment_sequences(sequences: DataFrame, cfg: AugmentConfig, seed: int, run_id: str, config_hash: str,
                      items: DataFrame | None = None, fit_on: DataFrame | None = None,
                      models_dir: str | None = None) -> DataFrame:
    """Real sequences ∪ their augmented copies, as a DataFrame with provenance columns.

    Fitted state (popularity, co-occurrence, targets) comes from ``fit_on`` (default: ``sequences``):
    an incremental run augments a few users with the statistics of all of them.
    """
    from pyspark.sql.pandas.types import to_arrow_schema

    branches = compile_branches(cfg, fit_on if fit_on is not None else sequences, items, models_dir)
    schema = to_arrow_schema(AUGMENTED_SEQUENCES)
    schema = pa.schema([f.with_nullable(True) for f in schema])

    def augment_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for record_batch in batches:
            yield from augment_record_batch(record_batch, branches, cfg, seed, run_id, config_hash, schema)

    spark = sequences.sparkSession
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_rows))
    columns = ["user_id", "item_ids", "timestamps", "event_types", "session_ids",
               *[c for c in CONTEXT_COLUMNS if c in sequences.columns]]
    partitioned = sequences.select(*columns).repartition(cfg.partitions, "user_id")
    return partitioned.mapInArrow(augment_partition, AUGMENTED_SEQUENCES)


def run_augment(ctx: RunContext) -> StageResult:
    """Write ``augmented_sequences`` (real ∪ augmented): all users, or with ``augment.incremental``
    only the users whose training sequence changed since the last augment run."""
    cfg = ctx.cfg.augment
    sequences = ctx.warehouse.read("sequences")
    sequences_version = ctx.warehouse.version("sequences")
    previous = _previous_augment(ctx) if cfg.incremental else None
    if previous is not None:
        written, changed = _augment_incrementally(ctx, sequences, previous)
    else:
        augmented = augment_sequences(sequences, cfg, ctx.cfg.run.seed, ctx.run_id, ctx.cfg.hash,
                                      items=ctx.warehouse.read("items"), models_dir=ctx.models_dir)
        written = ctx.warehouse.write("augmented_sequences", augmented, mode="overwrite",
                                      partition_by=["operator_chain"], txn=ctx.txn("augment"))
        changed = None
    tables = {"augmented_sequences": written.version, SEQUENCES_READ: sequences_version}
    items_version, items_per_chain = write_augmented_items(ctx)
    if items_version is not None:
        tables["augmented_items"] = items_version
    if written.skipped:
        return StageResult("augment", rows_in=0, rows_out=0, tables=tables, skipped=True)
    per_chain = rows_by_partition(written.uri, "operator_chain", written.version)
    counts_by_chain = {f"rows.{chain}": rows for chain, rows in sorted(per_chain.items())}
    real = counts_by_chain.get(f"rows.{REAL_CHAIN}", 0)
    total = sum(counts_by_chain.values())
    counts = {**counts_by_chain, "augmentation_factor_x1000": int(round(1000 * total / real)) if real else 0}
    counts |= {f"items.rows.{chain}": rows for chain, rows in items_per_chain.items()}
    if cfg.incremental:
        counts["incremental"] = int(changed is not None)  # 0: no comparable previous run, so all users
        counts["users_reaugmented"] = changed if changed is not None else real
    return StageResult("augment", rows_in=real, rows_out=total, counts=counts, tables=tables)


SEQUENCES_READ = "read:sequences"  # in the runs table: the sequences version an augment run read


def _augment_fingerprint(config: dict) -> str:
    """What must not change for an incremental run to extend the previous one: seed and augment config."""
    augment = {k: v for k, v in config["augment"].items() if k != "incremental"}
    return json.dumps({"seed": config["run"]["seed"], "augment": augment}, sort_keys=True)


def _previous_augment(ctx: RunContext) -> dict | None:
    """The sequences version read by the last augment run, if that run is comparable to this one."""
    from pyspark.sql import functions as F

    if not (ctx.warehouse.exists("runs") and ctx.warehouse.exists("augmented_sequences")):
        return None
    last = (ctx.warehouse.read("runs").where(F.col("stage") == "augment")
            .orderBy(F.col("started_at").desc()).limit(1).collect())
    if not last:
        return None
    tables, config = json.loads(last[0].tables), json.loads(last[0].config)
    if SEQUENCES_READ not in tables or _augment_fingerprint(config) != _augment_fingerprint(
            json.loads(ctx.cfg.to_json())):
        return None
    return {"sequences_version": tables[SEQUENCES_READ], "run_id": last[0].run_id}


def changed_users(before: DataFrame, after: DataFrame) -> DataFrame:
    """Users whose training sequence differs between two versions of ``sequences`` (new, changed or gone)."""
    from pyspark.sql import functions as F

    content = [c for c in before.columns if c != "user_id" and c in after.columns]
    old = before.select("user_id", F.struct(*content).alias("_old"))
    new = after.select("user_id", F.struct(*content).alias("_new"))
    return (old.join(new, "user_id", "full_outer")
            .where(~F.col("_old").eqNullSafe(F.col("_new"))).select("user_id"))


def _augment_incrementally(ctx: RunContext, sequences: DataFrame, previous: dict):
    """Re-augment the changed users and replace exactly their rows (one copy-on-write commit)."""
    from pyspark import StorageLevel

    before = ctx.warehouse.read("sequences", version=previous["sequences_version"])
    changed = changed_users(before, sequences).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        count = changed.count()
        targets = sequences.join(changed, "user_id", "left_semi")
        augmented = augment_sequences(targets, ctx.cfg.augment, ctx.cfg.run.seed, ctx.run_id, ctx.cfg.hash,
                                      items=ctx.warehouse.read("items"), fit_on=sequences, models_dir=ctx.models_dir)
        written = replace_rows_by_key(augmented, ctx.warehouse.uri("augmented_sequences"), key="user_id",
                                      keys=changed, txn=ctx.txn("augment"), backend=ctx.warehouse.backend)
    finally:
        changed.unpersist()
    return written, count
