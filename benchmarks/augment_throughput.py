"""Augment throughput benchmark: the augment stage against the I/O floor and a per-row Python baseline.

All figures come from one run on the same synthetic ``sequences`` data, so the ratios hold on a
shared, noisy machine where absolute seconds do not (interleaved rounds, best of ``--repeats``):

* stage        — read the ``sequences`` Parquet, ``augment_sequences`` (real ∪ augmented rows with
                 provenance), write the result as Parquet (a real write, not a noop sink);
* I/O floor    — plain Spark reading that input and writing an output of the same rows and bytes:
                 ``read input`` + ``write output``, where ``write output`` is the time to rewrite
                 the stage's own output (read it, write it as Parquet) less the time to only read
                 it. Rewriting the output alone would charge the floor a read of the (3-4× larger)
                 output instead of the input and flatter the stage; replicating the input to the
                 output's row count would not give the same bytes. Target: stage ≤ 2.0 × floor
                 for the default pipeline (below);
* skeleton     — what the stage cannot skip, none of its logic: read the input and shuffle it by user
                 into the stage's partitions (``shuffle input``) + ``write output`` as above.
                 Target: stage ≤ 1.3 × skeleton for the default pipeline;
* former path  — the same stage with every row, real ones included, through Python and back
                 (``augment_sequences_round_trip``, the stage before real rows stayed in Spark), timed
                 in the same rounds; both outputs' digests (row count and the sum of every row's
                 ``xxhash64`` over all columns) must be equal: same rows, provenance and all;
* batch size   — the stage at ``--events`` with each ``arrow_batch_rows`` of ``--batch-rows``;
* per operator — the same for each operator alone (``BranchConfig(chain=name)``, default
                 parameters) at ``--operator-events``;
* scaling      — stage and floor at each of ``--scales``: per-event cost (core-ns per input
                 event) must stay flat, i.e. not grow with the data;
* skew         — ``--heavy-users`` users holding ``--heavy-events`` each, the rest as usual, in
                 max(--events, 2 × heavy events) events: stage / floor, the wall time against
                 unskewed data of equal total events, the largest hash partition against the
                 median, and the longest augment task against the median (Spark's status store);
* one core     — the stage's own per-batch function against a per-row pure-Python function doing
                 the same work, both end to end on one core (Arrow set to one thread), on the same
                 sample of ``--baseline-events`` events read with pyarrow in the stage's batches
                 (``arrow_batch_rows`` sequences, the columns the stage selects): an Arrow batch of
                 sequences in, as ``mapInArrow`` hands it over, Arrow batches of the stage's output
                 schema (``AUGMENTED_SEQUENCES``: real rows, then each branch's and copy's augmented
                 rows with provenance) out, as ``mapInArrow`` must return them. Ours is
                 ``augment_record_batch`` (the former path's per-batch function, a superset of the
                 stage's ``branch_record_batch``, which leaves real rows and provenance to Spark:
                 ``batch_from_arrow`` with user-id hashing, ``augment_batch``, ``batch_to_arrow``).
                 The per-row side implements the operators the way RecBole / CL4SRec do (Python
                 ``random`` per row, list slicing, ``random.sample`` for mask, ``random.shuffle`` of
                 a sub-list for reorder) and pays what a per-row Python UDF has to: the input columns
                 to Python lists (by the fastest route we found, see ``_python_lists``) and its
                 output rows back to Arrow (``pa.array``); its real rows are passed through in Arrow
                 (cheaper than ours). Both apply each edit to every per-event column (items,
                 timestamps, event types, sessions, countries, devices) and see each sequence's most
                 recent ``max_input_events`` events; every output batch is checked to have the output
                 schema, and both sides' output rows and events are checked equal. Times are process
                 CPU seconds, sides interleaved for ``--core-repeats`` rounds;
                 the speedup is the ratio of the two sides' medians (the best-of ratio is reported
                 too), so other load on a shared machine counts little. Both sides allocate Arrow
                 buffers from glibc's malloc (``--arrow-pool system``, the default), the pool the
                 stage's Spark Python workers use (``recaug_spark/session.py`` sets
                 ``ARROW_DEFAULT_MEMORY_POOL=system``); ``--arrow-pool mimalloc`` measures pyarrow's
                 own default. Target: ≥ 20× for the default pipeline.

The default pipeline is the random operators only: ``AugmentConfig``'s crop, mask and reorder
branches with their default parameters (``default_config``). Not ``AugmentConfig()`` itself: its
generator-backed branches ``prehistory`` and ``synthetic_user`` need the models folder of ``recaug
fit`` (``benchmarks/generator_inference.py`` measures those).

Input data is synthesized with Spark by ``recaug_spark.augment.synthetic_sequences``, matching
``schemas.SEQUENCES``: long-tailed (Lomax, α = 1.6, mean ≈ 20) sequence lengths, Zipf(1) item
popularity, increasing timestamps grouped into sessions (``<user_id>-<n>`` session ids), event
types, countries and devices. It is not built with generate → ingest → clean because that takes
minutes per 10^7 events and per scale, and the augment stage only sees the ``sequences`` table;
the synthetic table lets every scale hold exactly the number of events asked for.

Usage: python benchmarks/augment_throughput.py [--events 10000000] [--scales 1e5,1e6,1e7]
       [--repeats 3] [--master local[2]] [--json PATH] [--skip-python-baseline] [--skip-skew]
       [--skip-round-trip] [--batch-rows 2048,8192]
       [--one-core-only --baseline-events 200000 --core-repeats 7 --arrow-pool system]
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from py4j.protocol import Py4JError

from recaug_spark.augment.arrow_io import output_schema
from recaug_spark.augment.batch import MASK_TOKEN
from recaug_spark.augment.engine import (
    augment_record_batch,
    augment_sequences,
    augment_sequences_round_trip,
    compile_branches,
)
from recaug_spark.augment.synthetic_sequences import MAX_LENGTH, SEED, parquet_bytes, synthesize
from recaug_spark.config import AugmentConfig, BranchConfig, SparkConfig
from recaug_spark.schemas import AUGMENTED_SEQUENCES, REAL_CHAIN
from recaug_spark.session import get_session

OPERATORS = ("crop", "mask", "reorder", "delete", "substitute", "insert", "prefixes")
DEFAULT_PIPELINE = ("crop", "mask", "reorder")  # the random branches of AugmentConfig(); see default_config
DEFAULT_PIPELINE_HELP = (f"Default pipeline: AugmentConfig's random branches {', '.join(DEFAULT_PIPELINE)} with their "
                         "default parameters, not its generator-backed prehistory / synthetic_user branches "
                         "(they need a fitted models folder: see benchmarks/generator_inference.py).")


def default_config() -> AugmentConfig:
    """The benchmark's default pipeline: ``AugmentConfig()`` with only its crop, mask and reorder branches."""
    cfg = AugmentConfig()
    branches = tuple(b for b in cfg.branches if b.chain in DEFAULT_PIPELINE)
    if [b.chain for b in branches] != list(DEFAULT_PIPELINE):
        raise RuntimeError(f"AugmentConfig() lacks the branches {DEFAULT_PIPELINE}: {[b.chain for b in cfg.branches]}")
    return cfg.model_copy(update={"branches": branches})


# --------------------------------------------------------------------------- Spark measurements

@dataclass
class Case:
    """One (data, config) pair: the augment stage and its I/O floor, measured interleaved."""

    name: str
    source: Path
    cfg: AugmentConfig
    events: int
    out: Path
    floor_out: Path
    with_floor: bool = True  # False: time the stage only
    with_round_trip: bool = False  # also time the round-trip path (every row through Python) and compare digests
    results: dict = field(default_factory=dict)  # measure -> best seconds
    info: dict = field(default_factory=dict)


class SparkBench:
    def __init__(self, spark, cores: int):
        self.spark = spark
        self.cores = cores

    def _noop_read(self, path: Path) -> None:
        self.spark.read.parquet(str(path)).write.format("noop").mode("overwrite").save()

    def stage(self, case: Case) -> dict:
        shutil.rmtree(case.out, ignore_errors=True)
        sc = self.spark.sparkContext
        group = f"bench-{case.name}-{time.monotonic_ns()}"
        sc.setJobGroup(group, case.name)
        try:
            frame = augment_sequences(self.spark.read.parquet(str(case.source)), case.cfg, SEED, "bench", "bench")
            frame.write.mode("overwrite").parquet(str(case.out))
        finally:
            sc.setLocalProperty("spark.jobGroup.id", None)
        return {"tasks": self._task_seconds(group)}

    def round_trip(self, case: Case) -> None:
        """The former path: every row, real ones included, through Python (``augment_sequences_round_trip``)."""
        out = round_trip_out(case)
        shutil.rmtree(out, ignore_errors=True)
        source = self.spark.read.parquet(str(case.source))
        frame = augment_sequences_round_trip(source, case.cfg, SEED, "bench", "bench")
        frame.write.mode("overwrite").parquet(str(out))

    def shuffle_input(self, case: Case) -> None:
        """Read the input and shuffle it by user into the stage's partitions (the skeleton's read side)."""
        frame = self.spark.read.parquet(str(case.source)).repartition(case.cfg.partitions, "user_id")
        frame.write.format("noop").mode("overwrite").save()

    def digest(self, path: Path) -> tuple[int, int]:
        """(rows, sum of the rows' xxhash64 over every column): equal for two tables with the same rows."""
        from pyspark.sql import functions as F

        columns = [f.name for f in AUGMENTED_SEQUENCES.fields]
        row = (self.spark.read.parquet(str(path)).select(F.xxhash64(*columns).cast("decimal(38,0)").alias("h"))
               .agg(F.count("*").alias("n"), F.sum("h").alias("s")).collect()[0])
        return int(row.n), int(row.s or 0)

    def read_input(self, case: Case) -> None:
        self._noop_read(case.source)

    def rewrite_output(self, case: Case) -> None:
        shutil.rmtree(case.floor_out, ignore_errors=True)
        self.spark.read.parquet(str(case.out)).write.mode("overwrite").parquet(str(case.floor_out))

    def read_output(self, case: Case) -> None:
        self._noop_read(case.out)

    def _task_seconds(self, group: str) -> list[float] | None:
        """Durations of the tasks of the last stage of the job group (mapInArrow + write), if reachable."""
        try:
            sc = self.spark.sparkContext
            tracker = sc.statusTracker()
            stage_ids = [s for j in tracker.getJobIdsForGroup(group) for s in (tracker.getJobInfo(j).stageIds or [])]
            if not stage_ids:
                return None
            stage_id = max(stage_ids)
            info = tracker.getStageInfo(stage_id)
            tasks = sc._jsc.sc().statusStore().taskList(stage_id, info.currentAttemptId if info else 0, 100_000)
            durations = []
            for i in range(tasks.size()):
                duration = tasks.apply(i).duration()
                if duration.isDefined():
                    durations.append(duration.get() / 1000.0)
            return durations or None
        except (Py4JError, AttributeError, TypeError):  # a private API: figures are optional
            return None

    def measure(self, cases: list[Case], repeats: int) -> None:
        """Interleaved rounds over every case's stage and floor measures; keep the best of each."""
        for _ in range(repeats):
            for case in cases:
                floor = (("read_input", self.read_input), ("rewrite_output", self.rewrite_output),
                         ("read_output", self.read_output), ("shuffle_input", self.shuffle_input)
                         ) if case.with_floor else ()
                old = (("round_trip", self.round_trip),) if case.with_round_trip else ()
                for measure, action in (("stage", self.stage), *old, *floor):
                    start = time.perf_counter()
                    extra = action(case)
                    seconds = time.perf_counter() - start
                    if seconds < case.results.get(measure, float("inf")):
                        case.results[measure] = seconds
                        if extra:
                            case.info.update(extra)
        for case in cases:
            self._describe_output(case)

    def _describe_output(self, case: Case) -> None:
        from pyspark.sql import functions as F

        row = (self.spark.read.parquet(str(case.out))
               .agg(F.count("*").alias("rows"), F.sum("length").alias("events"),
                    F.sum(F.when(F.col("origin") == REAL_CHAIN, 1).otherwise(0)).alias("real_rows")).collect()[0])
        r = case.results
        case.info.update({
            "rows_out": int(row.rows), "events_out": int(row.events or 0), "real_rows": int(row.real_rows),
            "bytes_in": parquet_bytes(case.source), "bytes_out": parquet_bytes(case.out),
            "events_per_s_core": case.events / r["stage"] / self.cores,
            "core_ns_per_event": r["stage"] * self.cores / case.events * 1e9,
        })
        if case.with_floor:
            write_output = max(r["rewrite_output"] - r["read_output"], 0.0)
            floor, skeleton = r["read_input"] + write_output, r["shuffle_input"] + write_output
            case.info.update({
                "write_output_s": write_output, "floor_s": floor, "skeleton_s": skeleton,
                "ratio": r["stage"] / floor if floor else float("nan"),
                "skeleton_ratio": r["stage"] / skeleton if skeleton else float("nan"),
                "floor_core_ns_per_event": floor * self.cores / case.events * 1e9,
            })
        if case.with_round_trip:
            new, old = self.digest(case.out), self.digest(round_trip_out(case))
            case.info.update({"digest": list(new), "round_trip_digest": list(old), "same_rows": new == old,
                              "round_trip_ratio": r["round_trip"] / r["stage"]})
            if case.with_floor:
                case.info["round_trip_skeleton_ratio"] = r["round_trip"] / case.info["skeleton_s"]
        tasks = case.info.get("tasks")
        if tasks:
            case.info["task_max_s"] = max(tasks)
            case.info["task_median_s"] = statistics.median(tasks)
            case.info["tasks_n"] = len(tasks)

    def partition_events(self, source: Path, cfg: AugmentConfig) -> dict:
        """Events per hash partition of the stage (all events, and those the augmenters see)."""
        from pyspark.sql import functions as F

        cap = getattr(cfg, "max_input_events", None) or MAX_LENGTH * 1000
        rows = (self.spark.read.parquet(str(source)).select("user_id", "length").repartition(cfg.partitions, "user_id")
                .groupBy(F.spark_partition_id().alias("p"))
                .agg(F.sum("length").alias("events"), F.sum(F.least(F.col("length"), F.lit(cap))).alias("seen"))
                .collect())
        events = [r.events for r in rows]
        seen = [r.seen for r in rows]
        return {"partition_events_max_over_median": max(events) / statistics.median(events),
                "partition_seen_events_max_over_median": max(seen) / statistics.median(seen)}


def round_trip_out(case: Case) -> Path:
    return case.out.with_name(case.out.name + "_round_trip")


# ------------------------------------------------------------------ one-core vectorized vs Python

STAGE_COLUMNS = ("user_id", "item_ids", "timestamps", "event_types", "session_ids", "countries", "devices")
PER_EVENT = ("item_ids", "timestamps", "event_types", "session_ids", "countries", "devices")  # PerRowPython order


def load_sample(path: Path, events: int, batch_rows: int) -> tuple[list[pa.RecordBatch], int]:
    """The first rows of a ``sequences`` table holding about ``events`` events, as the stage's batches
    (its columns, ``arrow_batch_rows`` sequences each, as ``mapInArrow`` hands them over)."""
    import pyarrow.dataset as ds

    batches, total = [], 0
    for batch in ds.dataset(str(path), format="parquet").to_batches(batch_size=batch_rows, columns=list(STAGE_COLUMNS)):
        if total >= events:
            break
        lengths = pc.list_value_length(batch.column("item_ids")).to_numpy(zero_copy_only=False)
        keep = int(np.searchsorted(np.cumsum(lengths), events - total, side="left")) + 1
        batch = batch.slice(0, min(keep, batch.num_rows))
        batches.append(batch)
        total += int(lengths[: batch.num_rows].sum())
    table = pa.Table.from_batches(batches).combine_chunks()
    return table.to_batches(max_chunksize=batch_rows), total


def _count(out: pa.RecordBatch, schema: pa.Schema, totals: list[int]) -> None:
    if out.schema != schema:
        raise AssertionError(f"output schema differs from the stage's:\n{out.schema}")
    totals[0] += out.num_rows
    totals[1] += int(pc.sum(out.column("length")).as_py() or 0)


def vectorized_run(batches: list[pa.RecordBatch], branches, cfg: AugmentConfig, schema: pa.Schema) -> tuple[int, int]:
    """The former path's per-batch function (``augment_record_batch``: real and branch rows, a superset of
    the stage's ``branch_record_batch``): Arrow batch in, Arrow batches of the output schema out.
    (rows, events) out."""
    totals = [0, 0]
    for record_batch in batches:
        for out in augment_record_batch(record_batch, branches, cfg, SEED, "bench", "bench", schema):
            _count(out, schema, totals)
    return totals[0], totals[1]


def python_record_batch(record_batch: pa.RecordBatch, steps: list, branches, max_input_events, schema: pa.Schema,
                        common: dict):
    """A per-row Python ``mapInArrow`` function doing the stage's work on one Arrow batch.

    The real rows are passed through in Arrow (input list columns + provenance constants: no
    Python per row, cheaper than our stage's own real rows). For augmentation it converts the
    input columns to Python lists (:func:`_python_lists`; timestamps cast to int64 first, which
    spares it ``datetime`` objects), augments row by row with :class:`PerRowPython`, and converts
    each (branch, copy)'s Python rows back to an Arrow batch of the output schema (``pa.array``).
    """
    n = record_batch.num_rows
    if n == 0:
        return
    user_column = record_batch.column("user_id")
    real = {"sequence_id": user_column, "user_id": user_column,
            "length": pc.list_value_length(record_batch.column("item_ids")),
            "negative_item_ids": pa.nulls(n, pa.list_(pa.string())),
            **{name: record_batch.column(name) for name in PER_EVENT},
            **_constants(schema, n, {**common, "origin": REAL_CHAIN, "operator_chain": REAL_CHAIN, "branch": None,
                                     "copy": None, "params": None})}
    real["timestamps"] = real["timestamps"].cast(schema.field("timestamps").type)
    yield pa.RecordBatch.from_arrays([real[f.name] for f in schema], schema=schema)

    user_ids = user_column.to_pylist()
    columns = [_python_lists(record_batch.column(name).cast(pa.list_(pa.int64())) if name == "timestamps"
                             else record_batch.column(name)) for name in PER_EVENT]
    rows = list(zip(*columns))
    for branch, branch_steps in zip(branches, steps):
        for copy in range(branch.copies):
            ids, users, out_columns = [], [], [[] for _ in PER_EVENT]
            for user, cols in zip(user_ids, rows):
                if max_input_events is not None and len(cols[0]) > max_input_events:
                    cols = [c[-max_input_events:] for c in cols]
                current = [cols]
                for function, params, state in branch_steps:
                    current = [out for row in current for out in function(row, params, state)]
                for k, row in enumerate(current):
                    ids.append(f"{user}~{branch.index}:{copy}:{k}" if k else f"{user}~{branch.index}:{copy}")
                    users.append(user)
                    for values, column in zip(row, out_columns):
                        column.append(values)
            m = len(ids)
            if m == 0:
                continue
            data = {"sequence_id": pa.array(ids, pa.string()), "user_id": pa.array(users, pa.string()),
                    "length": pa.array([len(items) for items in out_columns[0]], pa.int32()),
                    "negative_item_ids": pa.nulls(m, pa.list_(pa.string())),
                    **_constants(schema, m, {**common, "origin": "augmented", "operator_chain": branch.chain,
                                             "branch": branch.index, "copy": copy, "params": branch.params_json})}
            for name, values in zip(PER_EVENT, out_columns):
                data[name] = (pa.array(values, pa.list_(pa.int64())).cast(schema.field(name).type)
                              if name == "timestamps" else pa.array(values, pa.list_(pa.string())))
            yield pa.RecordBatch.from_arrays([data[f.name] for f in schema], schema=schema)


def _python_lists(column: pa.ListArray) -> list:
    """A list column as Python lists, by the fastest route we measured (``to_pylist`` is ~10× slower):
    strings through pandas' object arrays, numbers by slicing the flat values (no nulls here)."""
    if pa.types.is_string(column.type.value_type):
        return [None if row is None else row.tolist() for row in column.to_pandas()]
    values = column.flatten().to_numpy(zero_copy_only=False).tolist()
    offsets = (column.offsets.to_numpy() - column.offsets[0].as_py()).tolist()
    return [values[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def _constants(schema: pa.Schema, n: int, values: dict) -> dict:
    return {name: pa.array([value] * n, schema.field(name).type) for name, value in values.items()}


class PerRowPython:
    """The same operators the way RecBole / CL4SRec implement them: one sequence at a time, Python
    ``random``, list slicing. Every per-event column follows the item edit (index 0 is items)."""

    def __init__(self, seed: int):
        self.random = random.Random(seed)

    def crop(self, cols, p, state):
        n = len(cols[0])
        if n < p.min_length:
            return [cols]
        keep = max(1, math.floor(p.eta * n))
        begin = self.random.randint(0, n - keep)
        return [[c[begin:begin + keep] for c in cols]]

    def mask(self, cols, p, state):
        n = len(cols[0])
        if n < p.min_length:
            return [cols]
        count = math.floor(p.gamma * n)
        if p.mode == "dropout":
            return self._drop(cols, self.random.sample(range(n), min(count, n - 1)))
        chosen = self.random.sample(range(n), count)
        items = list(cols[0])
        for i in chosen:
            items[i] = MASK_TOKEN
        return [[items, *cols[1:]]]

    def reorder(self, cols, p, state):
        n = len(cols[0])
        if n < p.min_length:
            return [cols]
        width = min(max(2, math.floor(p.beta * n)), n)
        begin = self.random.randint(0, n - width)
        shuffled = list(range(begin, begin + width))
        self.random.shuffle(shuffled)
        return [[c[:begin] + [c[i] for i in shuffled] + c[begin + width:] for c in cols]]

    def delete(self, cols, p, state):
        n = len(cols[0])
        if n < p.min_length:
            return [cols]
        return self._drop(cols, self.random.sample(range(n), min(math.floor(p.rate * n), n - 1)))

    @staticmethod
    def _drop(cols, dropped):
        gone = set(dropped)
        kept = [i for i in range(len(cols[0])) if i not in gone]
        return [[[c[i] for i in kept] for c in cols]]

    def substitute(self, cols, p, state):
        n = len(cols[0])
        if n < p.min_length:
            return [cols]
        count = math.floor(p.rate * n)
        chosen = self.random.sample(range(n), count)
        new = self._sample_items(count, p, state)
        items = list(cols[0])
        for i, item in zip(chosen, new):
            items[i] = item
        return [[items, *cols[1:]]]

    def insert(self, cols, p, state):
        n = len(cols[0])
        if n < p.min_length:
            return [cols]
        count = max(1, math.floor(p.rate * n))
        anchors = sorted(self.random.randrange(n) for _ in range(count))
        new = self._sample_items(count, p, state)
        order, items, j = [], [], 0
        source = cols[0]
        for i in range(n):  # an inserted item goes before its anchor and copies the anchor's context
            while j < count and anchors[j] == i:
                order.append(i)
                items.append(new[j])
                j += 1
            order.append(i)
            items.append(source[i])
        return [[items, *[[c[i] for i in order] for c in cols[1:]]]]

    def prefixes(self, cols, p, state):
        n = len(cols[0])
        if p.mode != "prefixes":
            raise NotImplementedError("the baseline covers prefixes mode only")
        count = min(max(n - p.min_length, 0), p.max_per_sequence)
        return [[c[:n - 1 - k] for c in cols] for k in range(count)]

    def _sample_items(self, count, p, state):
        items, cumulative = state
        if p.sampling == "uniform":
            return [items[self.random.randrange(len(items))] for _ in range(count)]
        top = len(items) - 1
        return [items[min(bisect.bisect_right(cumulative, self.random.random()), top)] for _ in range(count)]


def python_steps(branches) -> list:
    """Per branch, its operators as (PerRowPython method name, params, Python state) triples."""
    states, steps = {}, []
    for branch in branches:
        if not branch.target.selects_all:
            raise NotImplementedError("the baseline covers untargeted branches only")
        branch_steps = []
        for op, state in zip(branch.operators, branch.states):
            if state is not None and id(state) not in states:
                states[id(state)] = (state.items.to_pylist(), state.cumulative.tolist())
            branch_steps.append((op.name, op.params, states.get(id(state))))
        steps.append(branch_steps)
    return steps


def python_run(batches: list[pa.RecordBatch], branches, steps, cfg: AugmentConfig, schema: pa.Schema,
               seed: int) -> tuple[int, int]:
    """The per-row Python mapInArrow function on every batch; (rows, events) out."""
    impl = PerRowPython(seed)
    bound = [[(getattr(impl, name), params, state) for name, params, state in branch_steps] for branch_steps in steps]
    common = {"seed": SEED, "run_id": "bench", "config_hash": "bench", "generator": None}
    totals = [0, 0]
    for record_batch in batches:
        for out in python_record_batch(record_batch, bound, branches, cfg.max_input_events, schema, common):
            _count(out, schema, totals)
    return totals[0], totals[1]


def one_core(spark, source: Path, events: int, configs: dict[str, AugmentConfig], repeats: int,
             with_python: bool, arrow_pool: str = "system") -> dict:
    """Stage function vs per-row Python function, Arrow batches in → Arrow batches out, one core,
    same sample, ``repeats`` interleaved rounds: seconds and speedup from the medians (best also kept)."""
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    if arrow_pool != "default":  # both sides: every Arrow buffer of this process from here on
        pa.set_memory_pool(getattr(pa, f"{arrow_pool}_memory_pool")())
    batch_rows = AugmentConfig().arrow_batch_rows
    batches, sample_events = load_sample(source, events, batch_rows)
    schema = output_schema(AUGMENTED_SEQUENCES)
    fit_frame = spark.read.parquet(str(source))
    results = {"sample_events": sample_events, "sample_sequences": sum(b.num_rows for b in batches),
               "arrow_pool": pa.default_memory_pool().backend_name, "operators": {}}
    for name, cfg in configs.items():
        branches = compile_branches(cfg, fit_frame, None)
        steps = python_steps(branches) if with_python else None
        vectorized_run(batches[:1], branches, cfg, schema)  # warm-up (imports, first calls), unmeasured
        times = {"vectorized": [], "python": []}
        outputs = {}
        for _ in range(repeats):
            for side in ("vectorized", "python") if with_python else ("vectorized",):
                start = time.process_time()  # CPU time of this single-threaded process
                if side == "vectorized":
                    outputs[side] = vectorized_run(batches, branches, cfg, schema)
                else:
                    outputs[side] = python_run(batches, branches, steps, cfg, schema, SEED)
                times[side].append(time.process_time() - start)
        median = {side: statistics.median(t) for side, t in times.items() if t}
        best = {side: min(t) for side, t in times.items() if t}
        rows_out, events_out = outputs["vectorized"]
        entry = {"repeats": repeats, "vectorized_s": median["vectorized"], "vectorized_best_s": best["vectorized"],
                 "rows_out": rows_out, "events_out": events_out,
                 "vectorized_events_per_s": sample_events / median["vectorized"],
                 "vectorized_ns_per_event": median["vectorized"] / sample_events * 1e9}
        if with_python:
            entry.update({"python_s": median["python"], "python_best_s": best["python"],
                          "python_events_per_s": sample_events / median["python"],
                          "python_ns_per_event": median["python"] / sample_events * 1e9,
                          "speedup": median["python"] / median["vectorized"],
                          "speedup_best": best["python"] / best["vectorized"],
                          "speedup_per_round": [p / v for p, v in zip(times["python"], times["vectorized"])],
                          "same_output": outputs["python"] == outputs["vectorized"],
                          "python_rows_out": outputs["python"][0], "python_events_out": outputs["python"][1]})
        results["operators"][name] = entry
    return results


# ---------------------------------------------------------------------------------------- main

def operator_config(name: str) -> AugmentConfig:
    return AugmentConfig(branches=(BranchConfig(chain=name),))


def parse_scales(text: str) -> list[int]:
    return sorted({int(float(part)) for part in text.split(",") if part.strip()})


def _setting(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of ``--spark-conf`` as a pair."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=DEFAULT_PIPELINE_HELP)
    parser.add_argument("--events", type=int, default=10_000_000, help="main scale (events in sequences)")
    parser.add_argument("--scales", default="1e5,1e6,1e7", help="comma-separated event counts for the scaling table")
    parser.add_argument("--repeats", type=int, default=3, help="best of N, interleaved")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, removed)")
    parser.add_argument("--json", default=None, help="also save the figures to this JSON file")
    parser.add_argument("--operators", default=",".join(OPERATORS), help="operators measured alone ('' to skip)")
    parser.add_argument("--operator-events", type=int, default=1_000_000,
                        help="scale of the per-operator Spark stages (capped at --events)")
    parser.add_argument("--baseline-events", type=int, default=1_000_000,
                        help="sample for the one-core vectorized vs per-row Python part (capped at --events)")
    parser.add_argument("--core-repeats", type=int, default=7,
                        help="interleaved rounds of the one-core part (medians reported)")
    parser.add_argument("--arrow-pool", choices=("default", "system", "jemalloc", "mimalloc"), default="system",
                        help="Arrow memory pool of the one-core part, both sides (default: system, as the "
                             "stage's workers; 'default': pyarrow's own)")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE", type=_setting,
                        help="extra Spark setting (repeatable), e.g. "
                             "spark.executorEnv.ARROW_DEFAULT_MEMORY_POOL=mimalloc")
    parser.add_argument("--heavy-users", type=int, default=10)
    parser.add_argument("--heavy-events", type=int, default=100_000, help="events of each heavy user")
    parser.add_argument("--skip-python-baseline", action="store_true")
    parser.add_argument("--skip-skew", action="store_true")
    parser.add_argument("--skip-round-trip", action="store_true",
                        help="do not time the former path (every row through Python) nor compare its rows' digest")
    parser.add_argument("--batch-rows", default="",
                        help="comma-separated arrow_batch_rows to time the stage with at --events (e.g. 2048,8192)")
    parser.add_argument("--one-core-only", action="store_true",
                        help="only the one-core part (synthesizes --baseline-events events, no Spark stage measures)")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Plan:
    """The data sizes one run measures, derived from the command line."""

    operators: list[str]
    scales: list[int]
    operator_events: int
    baseline_events: int
    skew_events: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Plan":
        scales = parse_scales(args.scales)
        if args.events not in scales:
            scales = sorted({*scales, args.events})
        heavy_total = args.heavy_users * args.heavy_events
        return cls(operators=[o.strip() for o in args.operators.split(",") if o.strip()], scales=scales,
                   operator_events=min(args.operator_events, args.events),
                   baseline_events=min(args.baseline_events, args.events),
                   skew_events=max(args.events, 2 * heavy_total))  # heavy users hold at most half of the events


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    plan = Plan.from_args(args)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="recaug-augbench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    spark = get_session(SparkConfig(master=args.master, app_name="recaug-augment-bench", driver_memory="8g",
                                    shuffle_partitions=8, ui=False, local_ip="127.0.0.1",
                                    conf=dict(args.spark_conf)))
    report: dict = {"events": args.events, "master": args.master, "repeats": args.repeats}
    try:
        cores = spark.sparkContext.defaultParallelism
        report["cores"] = cores
        configs = {"default": default_config(), **{name: operator_config(name) for name in plan.operators}}
        if args.one_core_only:
            path = workdir / f"sequences_{plan.baseline_events}"
            report["datasets"] = {str(plan.baseline_events): synthesize(spark, path, plan.baseline_events)}
            core = one_core(spark, path, plan.baseline_events, configs, args.core_repeats,
                            not args.skip_python_baseline, args.arrow_pool)
            report["one_core"] = core
            print_one_core(core, None, args)
        else:
            measure_everything(spark, SparkBench(spark, cores), args, plan, configs, workdir, report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, sort_keys=True))
            if not args.one_core_only:
                print(f"\nfigures saved to {args.json}")
    finally:
        spark.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def synthesize_datasets(spark, args: argparse.Namespace, plan: Plan, workdir: Path, cores: int) -> tuple[dict, dict]:
    """Every input table of a full run: (size key -> path, size key -> stats), and a summary printed."""
    sizes = sorted({*plan.scales, plan.operator_events, *([plan.skew_events] if not args.skip_skew else [])})
    data, datasets = {}, {}
    for size in sizes:
        data[size] = workdir / f"sequences_{size}"
        datasets[str(size)] = synthesize(spark, data[size], size)
    if not args.skip_skew:
        data["skew"] = workdir / "sequences_skew"
        datasets["skew"] = synthesize(spark, data["skew"], plan.skew_events, args.heavy_users, args.heavy_events)
    print(f"synthetic sequences ({args.master}, {cores} cores):")
    for key, d in datasets.items():
        print(f"  {key:>10}: {d['events']:>12,} events, {d['users']:>9,} users, max length {d['max_length']:,}, "
              f"{d['bytes'] / 1e6:,.1f} MB, built in {d['build_s']:.1f}s")
    return data, datasets


def measure_everything(spark, bench: SparkBench, args: argparse.Namespace, plan: Plan, configs: dict, workdir: Path,
                       report: dict) -> None:
    """The full run: scales, each operator alone, skew and one core; the figures go into ``report``."""
    data, datasets = synthesize_datasets(spark, args, plan, workdir, bench.cores)
    report["datasets"] = datasets
    default = configs["default"]
    sizes = sorted(k for k in data if k != "skew")

    def case(name, size_key, cfg, events):
        return Case(name, data[size_key], cfg, events, workdir / f"out_{name}", workdir / f"floor_{name}")

    # warm the JVM and the Python workers once, unmeasured
    bench.stage(case("warmup", sizes[0], default, sizes[0]))

    # 1. default pipeline at every scale (the main scale included)
    scale_cases = [case(f"default_{s}", s, default, datasets[str(s)]["events"]) for s in plan.scales]
    main_case = next(c for c in scale_cases if c.events == datasets[str(args.events)]["events"])
    main_case.with_round_trip = not args.skip_round_trip
    batch_cases = [case(f"batch_{rows}", args.events, default.model_copy(update={"arrow_batch_rows": rows}),
                        main_case.events) for rows in parse_scales(args.batch_rows)]
    for c in batch_cases:
        c.with_floor = False
    bench.measure(scale_cases + batch_cases, args.repeats)

    # 2. each operator alone
    operator_events = plan.operator_events
    op_cases = [case(f"op_{name}", operator_events, operator_config(name), datasets[str(operator_events)]["events"])
                for name in plan.operators]
    if op_cases:
        bench.measure(op_cases, args.repeats)

    # 3. skew: heavy users vs unskewed data of the same total events
    skew = None
    if not args.skip_skew:
        skew_case = case("skewed", "skew", default, datasets["skew"]["events"])
        plain = case(f"unskewed_{plan.skew_events}", plan.skew_events, default, plan.skew_events)
        plain.with_floor = False  # its floor is not needed: the figure is the wall time against skewed
        bench.measure([skew_case, plain], args.repeats)
        skew = {"events": plan.skew_events, "heavy_users": args.heavy_users, "heavy_events": args.heavy_events,
                "skewed": _case_json(skew_case), "unskewed": _case_json(plain),
                "wall_ratio_skewed_over_unskewed": skew_case.results["stage"] / plain.results["stage"],
                **bench.partition_events(data["skew"], default)}

    # 4. one core: vectorized augmenters vs per-row Python, on a sample (the first rows of the main scale's
    # table when --baseline-events is none of the scales)
    sample_source = data.get(plan.baseline_events, data[args.events])
    core = one_core(spark, sample_source, plan.baseline_events, configs, args.core_repeats,
                    not args.skip_python_baseline, args.arrow_pool)

    report["batch_rows"] = {c.cfg.arrow_batch_rows: _case_json(c) for c in batch_cases}
    report.update({"scales": [_case_json(c) for c in scale_cases], "default": _case_json(main_case),
                   "operators": {c.name[3:]: _case_json(c) for c in op_cases}, "skew": skew, "one_core": core})
    print_report(report, main_case, scale_cases, op_cases, skew, core, operator_events, bench.cores, args)


def _case_json(case: Case) -> dict:
    return {"name": case.name, "events_in": case.events, **{f"{k}_s": v for k, v in case.results.items()},
            **{k: v for k, v in case.info.items() if k != "tasks"}}


def print_report(report, main_case, scale_cases, op_cases, skew, core, operator_events, cores, args) -> None:
    r, i = main_case.results, main_case.info
    print(f"\nAugment stage on {main_case.events:,} events ({args.master}, best of {args.repeats}, interleaved)")
    print(f"{'measure':<34}{'seconds':>10}{'× floor':>10}{'target':>10}")
    print(f"{'I/O floor (read in + write out)':<34}{i['floor_s']:>10.2f}{1.0:>10.2f}{'':>10}")
    print(f"{'  read input':<34}{r['read_input']:>10.2f}")
    print(f"{'  write output (rewrite − read)':<34}{i['write_output_s']:>10.2f}")
    print(f"{'skeleton (shuffled read + write)':<34}{i['skeleton_s']:>10.2f}{i['skeleton_s'] / i['floor_s']:>10.2f}")
    print(f"{'stage (default pipeline)':<34}{r['stage']:>10.2f}{i['ratio']:>10.2f}{'':>10}"
          f"   {i['skeleton_ratio']:.2f} × skeleton (target ≤ 1.30)")
    if "round_trip" in r:
        print(f"{'former path (all rows via Python)':<34}{r['round_trip']:>10.2f}"
              f"{r['round_trip'] / i['floor_s']:>10.2f}"
              f"{'':>10}   {i['round_trip_skeleton_ratio']:.2f} × skeleton; stage ÷ former "
              f"{1 / i['round_trip_ratio']:.2f}")
        print(f"  same rows as the former path (count, xxhash64 sum over every column): "
              f"{'yes' if i['same_rows'] else 'NO'} {tuple(i['digest'])}")
    print(f"  in {main_case.events:,} events / {i['real_rows']:,} sequences ({i['bytes_in'] / 1e6:,.1f} MB) → "
          f"out {i['events_out']:,} events / {i['rows_out']:,} rows ({i['bytes_out'] / 1e6:,.1f} MB)")
    print(f"  throughput {i['events_per_s_core']:,.0f} input events/s per core "
          f"({i['events_out'] / r['stage'] / cores:,.0f} output events/s per core)")

    batches = report.get("batch_rows") or {}
    if batches:
        print(f"\nArrow batch size (arrow_batch_rows), stage at {main_case.events:,} events; default "
              f"{main_case.cfg.arrow_batch_rows}: {r['stage']:.2f}s")
        for rows, c in sorted(batches.items()):
            print(f"  {rows:>7,} rows: {c['stage_s']:>8.2f}s = {c['stage_s'] / r['stage']:.2f} × default")

    print("\nScaling, default pipeline (cost in core-ns per input event; flat = does not grow)")
    print(f"{'events':>12}{'stage s':>10}{'floor s':>10}{'× floor':>10}{'stage ns/ev':>13}{'floor ns/ev':>13}"
          f"{'ev/s/core':>12}")
    for c in scale_cases:
        ci = c.info
        print(f"{c.events:>12,}{c.results['stage']:>10.2f}{ci['floor_s']:>10.2f}{ci['ratio']:>10.2f}"
              f"{ci['core_ns_per_event']:>13,.0f}{ci['floor_core_ns_per_event']:>13,.0f}{ci['events_per_s_core']:>12,.0f}")
    if len(scale_cases) > 1:
        first, last = scale_cases[0].info, scale_cases[-1].info
        print(f"  per-event cost, largest ÷ smallest scale: "
              f"stage {last['core_ns_per_event'] / first['core_ns_per_event']:.2f}, "
              f"floor {last['floor_core_ns_per_event'] / first['floor_core_ns_per_event']:.2f}")

    if op_cases:
        print(f"\nEach operator alone, Spark stage on {operator_events:,} events")
        print(f"{'operator':<12}{'stage s':>10}{'floor s':>10}{'× floor':>10}{'in ev/s/core':>14}{'written ev':>14}"
              f"{'out ev/s/core':>15}")
        for c in op_cases:
            ci = c.info
            out_rate = ci['events_out'] / c.results['stage'] / cores
            print(f"{c.name[3:]:<12}{c.results['stage']:>10.2f}{ci['floor_s']:>10.2f}{ci['ratio']:>10.2f}"
                  f"{ci['events_per_s_core']:>14,.0f}{ci['events_out']:>14,}{out_rate:>15,.0f}")

    if skew:
        s, u = skew["skewed"], skew["unskewed"]
        print(f"\nSkew: {skew['events']:,} events, {skew['heavy_users']} users with {skew['heavy_events']:,} "
              f"events each "
              f"vs unskewed data of the same total")
        print(f"{'data':<12}{'stage s':>10}{'floor s':>10}{'× floor':>10}{'task max/median':>17}")
        for label, c in (("skewed", s), ("unskewed", u)):
            tasks = (f"{c['task_max_s']:.2f}/{c['task_median_s']:.2f}s" if "task_max_s" in c else "n/a")
            floor = f"{c['floor_s']:>10.2f}{c['ratio']:>10.2f}" if "floor_s" in c else f"{'—':>10}{'—':>10}"
            print(f"{label:<12}{c['stage_s']:>10.2f}{floor}{tasks:>17}")
        print(f"  wall time skewed ÷ unskewed: {skew['wall_ratio_skewed_over_unskewed']:.2f}; "
              f"largest hash partition ÷ median: "
              f"{skew['partition_events_max_over_median']:.2f} (all events), "
              f"{skew['partition_seen_events_max_over_median']:.2f} (events the augmenters see)")

    print_one_core(core, main_case.events, args)


def print_one_core(core: dict, main_events: int | None, args) -> None:
    sample = ("all the data" if main_events is None or core["sample_events"] >= main_events
              else "a sample: per-row Python on all the data would take too long")
    print(f"\nOne core, no Spark, Arrow batches in → Arrow batches of the output schema out (real + augmented rows): "
          f"the stage's augment_record_batch vs a per-row Python function, CPU seconds (median of {args.core_repeats} "
          f"interleaved rounds, Arrow pool {core['arrow_pool']}), on {core['sample_events']:,} events "
          f"({core['sample_sequences']:,} sequences; {sample})")
    with_python = not args.skip_python_baseline
    header = f"{'operators':<12}{'vector s':>10}{'vec ev/s':>12}{'rows out':>10}{'events out':>13}"
    if with_python:
        header += f"{'python s':>10}{'py ev/s':>11}{'speedup':>9}{'best':>7}{'same out':>10}"
    print(header)
    for name, e in core["operators"].items():
        line = (f"{name:<12}{e['vectorized_s']:>10.3f}{e['vectorized_events_per_s']:>12,.0f}{e['rows_out']:>10,}"
                f"{e['events_out']:>13,}")
        if with_python:
            line += (f"{e['python_s']:>10.3f}{e['python_events_per_s']:>11,.0f}{e['speedup']:>8.1f}×"
                     f"{e['speedup_best']:>6.1f}×{'yes' if e['same_output'] else 'NO':>10}")
        print(line)
    if with_python:
        print("  speedup: ratio of the medians (best: of the best rounds); target: default pipeline ≥ 20× the per-row "
              "Python implementation")


if __name__ == "__main__":
    main()
