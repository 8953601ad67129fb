"""The augmentation engine: configured branches compiled once, then run over batches.

A branch is a chain of operators applied to the targeted real rows, ``copies`` times.
:func:`compile_branches` builds its operators and fits their state and its target once, on the
driver (Spark); :func:`augment_batch` then runs every branch over one batch of sequences, and
:func:`augment_record_batch` wraps it for ``mapInArrow``: an Arrow batch of sequences in, Arrow
batches of ``schemas.AUGMENTED_SEQUENCES`` out (the real rows, then each branch's and copy's
rows, with provenance); :func:`augment_sequences` does it to a whole DataFrame. The item side is the same with :func:`compile_item_branches` and
:func:`augment_item_record_batch` (``schemas.AUGMENTED_ITEMS``). Nothing here depends on how
the rows are partitioned: randomness is keyed per entity (``base.Draws``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

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


def augment_record_batch(record_batch: pa.RecordBatch, branches: list[CompiledBranch], cfg: AugmentConfig, seed: int,
                         run_id: str, config_hash: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The augment stage's work on one Arrow batch of sequences: its real rows, then every branch's and
    copy's augmented rows, as Arrow batches of ``schema`` (``AUGMENTED_SEQUENCES``), as mapInArrow
    returns them."""
    if record_batch.num_rows == 0:
        return
    real, user_ids = batch_from_arrow(record_batch)
    stamp = {"seed": seed, "run_id": run_id, "config_hash": config_hash}
    yield batch_to_arrow(real, {"sequence_id": user_ids, "user_id": user_ids, **provenance(None, None, **stamp)},
                         schema)
    suffixed = SuffixedIds(user_ids)
    for branch, copy, out, lineage in augment_batch(real, branches, seed, cfg.max_input_events):
        if len(out) == 0:
            continue
        if len(lineage) == len(real) and bool((lineage == np.arange(len(real))).all()):  # one row per user
            parent_ids, ids = user_ids, suffixed.get(f"~{branch.index}:{copy}")
        else:
            parent_ids = user_ids.take(pa.array(lineage, pa.int64()))
            ids = sequence_ids(parent_ids, lineage, branch.index, copy)
        yield batch_to_arrow(out, {"sequence_id": ids, "user_id": parent_ids, **provenance(branch, copy, **stamp)},
                             schema)


def augment_sequences(sequences: DataFrame, cfg: AugmentConfig, seed: int, run_id: str, config_hash: str,
                      items: DataFrame | None = None, fit_on: DataFrame | None = None,
                      models_dir: str | None = None) -> DataFrame:
    """Real sequences ∪ their augmented copies, as a DataFrame of ``AUGMENTED_SEQUENCES``.

    Sequences are hash-partitioned by user id and augmented with ``mapInArrow`` in bounded Arrow
    batches (:func:`augment_record_batch`); the compiled branches (fitted state included) travel
    to the executors in the function's closure.

    Fitted state (popularity, co-occurrence, targets) comes from ``fit_on`` (default: ``sequences``):
    an incremental run augments a few users with the statistics of all of them.
    """
    branches = compile_branches(cfg, fit_on if fit_on is not None else sequences, items, models_dir)
    schema = output_schema(AUGMENTED_SEQUENCES)

    def augment_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for record_batch in batches:
            yield from augment_record_batch(record_batch, branches, cfg, seed, run_id, config_hash, schema)

    spark = sequences.sparkSession
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_rows))
    columns = ["user_id", "item_ids", "timestamps", "event_types", "session_ids",
               *[c for c in CONTEXT_COLUMNS if c in sequences.columns]]
    partitioned = sequences.select(*columns).repartition(cfg.partitions, "user_id")
    return partitioned.mapInArrow(augment_partition, AUGMENTED_SEQUENCES)


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
        tags += [generators[op.artifact].tag for op in operators if op.artifact and generators and op.artifact in generators]
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
