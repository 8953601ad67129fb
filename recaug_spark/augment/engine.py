"""The augmentation engine: configured branches compiled once, then run over batches.

A branch is a chain of operators applied to the targeted real rows, ``copies`` times.
:func:`compile_branches` builds its operators and fits their state and its target once, on the
driver (Spark); :func:`augment_batch` then runs every branch over one batch of sequences.
:func:`augment_sequences` does it to a whole DataFrame: Spark writes the real rows and the
provenance constants itself, and only the branch rows are made in Python, by
:func:`branch_record_batch` under ``mapInArrow`` (an Arrow batch of sequences in, Arrow batches of
:data:`BRANCH_ROWS` out). :func:`augment_record_batch` / :func:`augment_sequences_round_trip` are
the former path, every row through Python, kept as the reference for the same rows. The item side
is :func:`compile_item_branches` and :func:`augment_item_record_batch` (``schemas.AUGMENTED_ITEMS``).
Nothing here depends on how the rows are partitioned: randomness is keyed per entity (``base.Draws``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pyspark.sql import types as T

from recaug_spark.augment.arrow_io import (
    ITEM_COLUMNS,
    SuffixedIds,
    batch_from_arrow,
    batch_to_arrow,
    items_to_arrow,
    output_schema,
    sequence_ids,
    to_record_batch,
)
from recaug_spark.augment.base import Augmenter, Draws, FitContext
from recaug_spark.augment.batch import MASK_TOKEN, LazyBatch, SequenceBatch
from recaug_spark.augment.item_ops import ItemAugmenter, ItemState, apply_chain
from recaug_spark.augment.registry import build, build_item
from recaug_spark.augment.targeting import Targeting, fit_targeting
from recaug_spark.schemas import AUGMENTED_SEQUENCES, CONTEXT_COLUMNS, REAL_CHAIN

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from recaug_spark.config import AugmentConfig, ItemAugmentConfig

LONG_TAIL_COLUMN = "_long_tail"  # boolean column of the items given to augment_item_record_batch


def provenance(branch, copy: int | None, *, seed: int, run_id: str, config_hash: str) -> dict[str, Any]:
    """The provenance columns (``schemas.PROVENANCE_FIELDS``) of the rows of ``branch``'s copy
    ``copy`` (a compiled sequence or item branch); ``branch`` None: the real rows."""
    written = {"seed": seed, "run_id": run_id, "config_hash": config_hash}
    if branch is None:
        return {**written, "origin": REAL_CHAIN, "operator_chain": REAL_CHAIN, "branch": None, "copy": None,
                "params": None, "generator": None}
    return {**written, "origin": branch.origin, "operator_chain": branch.chain, "branch": branch.index,
            "copy": copy, "params": branch.params_json, "generator": branch.generator}


# --------------------------------------------------------------------------------------------
# Sequences


@dataclass(frozen=True)
class CompiledBranch:
    """A sequence branch ready to run: its operators with their fitted states, and its target."""

    index: int
    chain: str
    operators: tuple[Augmenter, ...]
    states: tuple[Any, ...]
    copies: int
    target: Targeting
    params_json: str
    origin: str = "augmented"  # "synthetic" when an operator of the chain writes synthetic users
    generator: str | None = None  # name@version of the generator models the chain uses


def compile_branches(cfg: AugmentConfig, sequences, items, models_dir: str | None = None) -> list[CompiledBranch]:
    """Build every branch's operators and fit their state and target once (on the driver, with Spark).

    ``sequences`` and ``items`` are Spark DataFrames (``items`` may be None); generator-backed
    operators find their models in ``models_dir`` (``recaug fit``'s artifacts). Operators with the
    same name and parameters share one fitted state."""
    context = FitContext(sequences, items, models_dir)
    branches, fitted = [], {}
    for index, branch in enumerate(cfg.branches):
        operators = tuple(build(name, branch.params.get(name)) for name in branch.operators)
        states = []
        for op in operators:
            key = (type(op), json.dumps(op.describe(), sort_keys=True))
            if key not in fitted:
                fitted[key] = op.fit(context)
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
        tags = [op.generator_tag(state) for op, state in zip(operators, states)]
        origin = "synthetic" if any(op.origin == "synthetic" for op in operators) else "augmented"
        branches.append(CompiledBranch(index, ">".join(branch.operators), operators, tuple(states), branch.copies,
                                       target, json.dumps(params, sort_keys=True), origin,
                                       ",".join(dict.fromkeys(t for t in tags if t)) or None))
    return branches


def augment_batch(batch: SequenceBatch, branches: list[CompiledBranch], seed: int, max_input_events: int | None = None
                  ) -> Iterator[tuple[CompiledBranch, int, SequenceBatch, np.ndarray]]:
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


def augment_record_batch(record_batch: pa.RecordBatch, branches: list[CompiledBranch], cfg: AugmentConfig, seed: int,
                         run_id: str, config_hash: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Every row of one Arrow batch of sequences in Python: its real rows, then every branch's and copy's
    augmented rows, as Arrow batches of ``schema`` (``AUGMENTED_SEQUENCES``) with provenance.

    The round-trip path (:func:`augment_sequences_round_trip`): the stage itself writes real rows in
    Spark and sends only the branch rows through Python (:func:`branch_record_batch`)."""
    if record_batch.num_rows == 0:
        return
    real, user_ids = batch_from_arrow(record_batch)
    stamp = {"seed": seed, "run_id": run_id, "config_hash": config_hash}
    yield batch_to_arrow(real, {"sequence_id": user_ids, "user_id": user_ids, **provenance(None, None, **stamp)},
                         schema)
    for branch, copy, out, ids, parent_ids in _branch_outputs(real, user_ids, branches, seed, cfg.max_input_events):
        yield batch_to_arrow(out, {"sequence_id": ids, "user_id": parent_ids, **provenance(branch, copy, **stamp)},
                             schema)


def branch_record_batch(record_batch: pa.RecordBatch, branches: list[CompiledBranch], seed: int,
                        max_input_events: int | None, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The augmented rows of one Arrow batch of sequences, as batches of ``schema``
    (:data:`BRANCH_ROWS`: no real rows, and of provenance only ``branch`` and ``copy``; Spark adds
    the rest, see :func:`with_provenance`)."""
    if record_batch.num_rows == 0:
        return
    real, user_ids = batch_from_arrow(record_batch)
    for branch, copy, out, ids, parent_ids in _branch_outputs(real, user_ids, branches, seed, max_input_events):
        yield batch_to_arrow(out, {"sequence_id": ids, "user_id": parent_ids, "branch": branch.index, "copy": copy},
                             schema)


def _branch_outputs(real: SequenceBatch, user_ids: pa.Array, branches: list[CompiledBranch], seed: int,
                    max_input_events: int | None):
    """(branch, copy, augmented batch, sequence ids, parent user ids) of every non-empty branch output."""
    suffixed = SuffixedIds(user_ids)
    for branch, copy, out, lineage in augment_batch(real, branches, seed, max_input_events):
        if len(out) == 0:
            continue
        if len(lineage) == len(real) and bool((lineage == np.arange(len(real))).all()):  # one row per user
            parent_ids, ids = user_ids, suffixed.get(f"~{branch.index}:{copy}")
        else:
            parent_ids = user_ids.take(pa.array(lineage, pa.int64()))
            ids = sequence_ids(parent_ids, lineage, branch.index, copy)
        yield branch, copy, out, ids, parent_ids


# The provenance columns Spark adds to the branch rows (constant per branch); the rest crosses from Python.
SPARK_PROVENANCE = ("origin", "operator_chain", "params", "seed", "generator", "run_id", "config_hash")
BRANCH_ROWS = T.StructType([f for f in AUGMENTED_SEQUENCES.fields if f.name not in SPARK_PROVENANCE])
STAGE_INPUT_COLUMNS = ("user_id", "item_ids", "timestamps", "event_types", "session_ids")  # + CONTEXT_COLUMNS


def augment_sequences(sequences: DataFrame, cfg: AugmentConfig, seed: int, run_id: str, config_hash: str,
                      items: DataFrame | None = None, fit_on: DataFrame | None = None,
                      models_dir: str | None = None) -> DataFrame:
    """Real sequences ∪ their augmented copies, as a DataFrame of ``AUGMENTED_SEQUENCES``.

    Real rows never cross into Python: Spark projects them from ``sequences`` (:func:`real_rows`).
    Only the branch rows are made in Python: sequences are hash-partitioned by user id and
    augmented with ``mapInArrow`` in bounded Arrow batches (:func:`branch_record_batch`; the
    compiled branches, fitted state included, travel to the executors in the function's closure),
    and Spark adds their constant provenance columns (:func:`with_provenance`). The rows are those
    of :func:`augment_sequences_round_trip`, where every row crosses into Python and back.

    Fitted state (popularity, co-occurrence, targets) comes from ``fit_on`` (default: ``sequences``):
    an incremental run augments a few users with the statistics of all of them.
    """
    branches = compile_branches(cfg, fit_on if fit_on is not None else sequences, items, models_dir)
    real = real_rows(sequences, seed, run_id, config_hash)
    if not branches:
        return real
    schema = output_schema(BRANCH_ROWS)
    max_input_events = cfg.max_input_events

    def augment_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for record_batch in batches:
            yield from branch_record_batch(record_batch, branches, seed, max_input_events, schema)

    augmented = _stage_input(sequences, cfg).mapInArrow(augment_partition, BRANCH_ROWS)
    return real.unionByName(with_provenance(augmented, branches, seed, run_id, config_hash))


def augment_sequences_round_trip(sequences: DataFrame, cfg: AugmentConfig, seed: int, run_id: str, config_hash: str,
                                 items: DataFrame | None = None, fit_on: DataFrame | None = None,
                                 models_dir: str | None = None) -> DataFrame:
    """The same rows as :func:`augment_sequences` with every row, real ones included, through Python
    (:func:`augment_record_batch`): the stage's path before real rows stayed in Spark, kept as the
    reference that tests and ``benchmarks/augment_throughput.py`` compare the stage's output with."""
    branches = compile_branches(cfg, fit_on if fit_on is not None else sequences, items, models_dir)
    schema = output_schema(AUGMENTED_SEQUENCES)

    def augment_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for record_batch in batches:
            yield from augment_record_batch(record_batch, branches, cfg, seed, run_id, config_hash, schema)

    return _stage_input(sequences, cfg).mapInArrow(augment_partition, AUGMENTED_SEQUENCES)


def _stage_input(sequences: DataFrame, cfg: AugmentConfig) -> DataFrame:
    """The columns the branches read, hash-partitioned by user id into ``cfg.partitions``; sets the
    session's Arrow batch size to ``cfg.arrow_batch_rows``."""
    sequences.sparkSession.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_rows))
    columns = [*STAGE_INPUT_COLUMNS, *[c for c in CONTEXT_COLUMNS if c in sequences.columns]]
    return sequences.select(*columns).repartition(cfg.partitions, "user_id")


def real_rows(sequences: DataFrame, seed: int, run_id: str, config_hash: str) -> DataFrame:
    """The real rows of ``AUGMENTED_SEQUENCES``, projected by Spark: each sequence whole, its
    ``session_ids`` and context lists kept where they hold one value per event (else one null per
    event; an absent context column: a null list), and the real provenance."""
    from pyspark.sql import functions as F

    events = F.size("item_ids")
    nulls = F.array_repeat(F.lit(None).cast("string"), events)

    def aligned(name: str):
        if name not in sequences.columns:
            return nulls if name == "session_ids" else F.lit(None).cast("array<string>")
        column = F.col(name)
        return F.when(column.isNotNull() & (F.size(column) == events), column).otherwise(nulls)

    values = {"sequence_id": F.col("user_id"), "user_id": F.col("user_id"), "item_ids": F.col("item_ids"),
              "timestamps": F.col("timestamps"), "event_types": F.col("event_types"),
              "session_ids": aligned("session_ids"), **{c: aligned(c) for c in CONTEXT_COLUMNS},
              "negative_item_ids": F.lit(None), "length": events,
              **provenance(None, None, seed=seed, run_id=run_id, config_hash=config_hash)}
    return sequences.select(*[_typed(values[f.name], f) for f in AUGMENTED_SEQUENCES.fields])


def with_provenance(augmented: DataFrame, branches: list[CompiledBranch], seed: int, run_id: str,
                    config_hash: str) -> DataFrame:
    """Branch rows (:data:`BRANCH_ROWS`) with the provenance columns of their branch, as
    ``AUGMENTED_SEQUENCES``: a constant per branch index, looked up by Spark."""
    from pyspark.sql import functions as F

    def by_branch(name: str):
        *rest, last = branches
        value = provenance(last, 0, seed=seed, run_id=run_id, config_hash=config_hash)[name]
        expr = F.lit(value)
        for branch in reversed(rest):
            own = provenance(branch, 0, seed=seed, run_id=run_id, config_hash=config_hash)[name]
            expr = F.when(F.col("branch") == branch.index, F.lit(own)).otherwise(expr)
        return expr

    return augmented.select(*[_typed(by_branch(f.name) if f.name in SPARK_PROVENANCE else F.col(f.name), f)
                              for f in AUGMENTED_SEQUENCES.fields])


def _typed(value, field):
    """``value`` (a Column or a Python constant) cast to ``field``'s type and named after it."""
    from pyspark.sql import Column
    from pyspark.sql import functions as F

    column = value if isinstance(value, Column) else F.lit(value)
    return column.cast(field.dataType).alias(field.name)


# --------------------------------------------------------------------------------------------
# Items


@dataclass(frozen=True)
class CompiledItemBranch:
    """An item branch ready to run: its operators, and whether it augments long-tail items only."""

    index: int
    chain: str
    operators: tuple[ItemAugmenter, ...]
    copies: int
    long_tail_only: bool
    params_json: str
    generator: str | None
    origin: str = "augmented"


def compile_item_branches(cfg: ItemAugmentConfig, lexicon_name: str | None,
                          generators: dict | None = None) -> list[CompiledItemBranch]:
    """The configured branches, each with its ``generator`` provenance: the lexicon (text operators)
    and the ``name@version`` of each generator model its operators use (``generators``: artifact
    name → ArtifactRef)."""
    branches = []
    for index, branch in enumerate(cfg.branches):
        operators = tuple(build_item(name, branch.params.get(name)) for name in branch.operators)
        tail_only = cfg.long_tail_only if branch.long_tail_only is None else branch.long_tail_only
        params = {op.name: op.params.model_dump(mode="json") for op in operators}
        params["_target"] = {"long_tail_share": cfg.long_tail_share} if tail_only else {}
        tags = [lexicon_name] if any(op.kind == "text" for op in operators) and lexicon_name else []
        tags += [generators[op.artifact].tag for op in operators
                 if op.artifact and generators and op.artifact in generators]
        branches.append(CompiledItemBranch(index, ">".join(branch.operators), operators, branch.copies, tail_only,
                                           json.dumps(params, sort_keys=True), ",".join(dict.fromkeys(tags)) or None))
    return branches


def augment_item_record_batch(record_batch: pa.RecordBatch, branches: list[CompiledItemBranch], state: ItemState,
                              seed: int, run_id: str, config_hash: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The item side of the augment stage on one Arrow batch of items (``ITEM_COLUMNS`` and
    :data:`LONG_TAIL_COLUMN`): its real rows, then every branch's and copy's variants of the items
    it targets, as Arrow batches of ``schema`` (``AUGMENTED_ITEMS``)."""
    n = record_batch.num_rows
    if n == 0:
        return
    stamp = {"seed": seed, "run_id": run_id, "config_hash": config_hash}
    real = {name: record_batch.column(name).cast(schema.field(name).type) for name in ITEM_COLUMNS}
    yield to_record_batch({**real, "variant_id": real["item_id"], **provenance(None, None, **stamp)}, schema, n)
    frame = record_batch.select(list(ITEM_COLUMNS)).to_pandas()
    tail = record_batch.column(LONG_TAIL_COLUMN).to_numpy(zero_copy_only=False).astype(bool)
    for branch in branches:
        chosen = frame[tail] if branch.long_tail_only else frame
        if chosen.empty:
            continue
        chosen = chosen.reset_index(drop=True)
        for copy in range(branch.copies):
            out = apply_chain(chosen, branch.operators, state, seed=seed, branch=branch.index, copy=copy)
            columns = items_to_arrow(out, schema)
            variants = SuffixedIds(columns["item_id"]).get(f"~{branch.index}:{copy}")
            yield to_record_batch({**columns, "variant_id": variants, **provenance(branch, copy, **stamp)},
                                  schema, len(out))
