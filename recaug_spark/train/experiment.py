"""Experiments: does augmented data help? A real-only baseline against augmented variants.

An experiment pins one version of ``augmented_sequences`` (and of ``sequence_targets`` and
``items``) and trains one model per arm × seed on it with ``recaug_spark.train.trainer``:

* ``baseline`` — the real rows only (``operator_chain == "real"``);
* each configured variant — the real rows plus the augmented rows of its operator chains
  (``chains: all`` takes every chain present in the pinned version).

Every arm uses the same seeds, the same item vocabulary (the ``items`` table: identical candidate
sets under full ranking), the same evaluation users (validation targets for early stopping, test
targets for the report, histories from the real rows) and the same hyper-parameters.

**Fair comparison rule.** An augmented epoch has more batches, so counting training time or
patience in epochs would let an augmented arm train longer than the baseline and look better for
that alone. Here an epoch is a *fixed number of optimizer steps* for every arm:
``train.steps_per_epoch``, by default the baseline's natural epoch (⌈real rows / batch size⌉).
Validation happens every ``eval_every`` such epochs, and ``patience`` and the ``epochs`` budget are
therefore measured in steps, identically for every arm: each arm gets at most ``epochs ×
steps_per_epoch`` optimizer steps and stops after ``patience × eval_every × steps_per_epoch`` steps
without a better validation score. The baseline trains exactly as it would alone; an augmented arm
sees a smaller share of its larger data per "epoch" but never more updates. The steps each run
took are recorded in the report. Results are means over seeds with 95% Student-t intervals, and the
change against the baseline is also given *paired by seed* (same seed, same initial weights), whose
interval is what tells a real effect from noise (NDCG@10 typically moves by about 3% from one seed to
another).

Outputs: rows for the ``metrics`` Delta table (``metric_rows`` / ``metrics_schema``) and a
plain-text comparison table (``comparison_table``); ``recaug_spark.train.report.write_report``
writes the report folder (``report.md`` and PNG plots).

Example::

    plan = plan_experiment(cfg.train, "wh/augmented_sequences", "wh/sequence_targets", "wh/items")
    runs = run_experiment(plan, cfg.train)                 # [RunRecord(variant, seed, result), ...]
    print(comparison_table(runs))
    rows = metric_rows(runs, run_id="r1", experiment="default", table_version=plan.version,
                       config_hash=cfg.hash)
"""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from recaug_spark.schemas import REAL_CHAIN
from recaug_spark.train import metrics as M
from recaug_spark.train.data import CHAIN_COLUMN

BASELINE = "baseline"
REPORT_METRICS = ("ndcg@10", "hr@10", "mrr")


class ExperimentError(ValueError):
    """An experiment that cannot run; the message names the variant, chain or table."""


# ---------------------------------------------------------------- plan

@dataclass(frozen=True)
class Arm:
    name: str
    chains: tuple[str, ...]  # augmented chains trained on besides "real" (empty for the baseline)
    requested: str = ""  # the chains as configured ("all" or a list), for the report
    variant: Any = field(default=None, compare=False)  # its VariantConfig (None: the baseline)

    @property
    def consume(self) -> str:
        """How the arm consumes its augmented rows (``recaug_spark.train.consumption``)."""
        return "rows" if self.variant is None else self.variant.consume


@dataclass(frozen=True)
class ExperimentPlan:
    table_uri: str
    version: int
    targets_uri: str
    targets_version: int
    items_uri: str | None
    items_version: int | None
    arms: tuple[Arm, ...]
    rows_by_chain: Mapping[str, int]
    steps_per_epoch: int

    def rows(self, arm: Arm) -> int:
        return sum(self.rows_by_chain.get(c, 0) for c in (REAL_CHAIN, *arm.chains))


def resolve_arms(variants: Sequence, available: Sequence[str]) -> tuple[Arm, ...]:
    """The baseline plus one arm per variant, with ``all`` expanded to every augmented chain present."""
    augmented = sorted(c for c in available if c != REAL_CHAIN)
    arms = [Arm(BASELINE, (), REAL_CHAIN)]
    for variant in variants:
        if variant.chains == "all":
            if not augmented:
                raise ExperimentError(f"variant {variant.name!r} asks for all chains but the table has no augmented "
                                      f"rows (chains: {sorted(available)})")
            arms.append(Arm(variant.name, tuple(augmented), "all", variant))
            continue
        unknown = sorted(set(variant.chains) - set(augmented))
        if unknown:
            raise ExperimentError(f"variant {variant.name!r}: chain(s) {unknown} not in the table; chains present: "
                                  f"{augmented}")
        arms.append(Arm(variant.name, tuple(variant.chains), ", ".join(variant.chains), variant))
    return tuple(arms)


def plan_experiment(cfg, table_uri: str, targets_uri: str, items_uri: str | None = None, *,
                    version: int | None = None, targets_version: int | None = None,
                    items_version: int | None = None) -> ExperimentPlan:
    """Pin the table versions (the latest unless given), resolve the arms and the steps per epoch.

    ``cfg``: the ``train`` section (``recaug_spark.config.TrainStageConfig``).
    """
    from recaug_spark.delta import rows_by_partition, table_exists, table_version

    for name, uri in (("augmented table", table_uri), ("targets table", targets_uri)):
        if not table_exists(uri):
            raise ExperimentError(f"no {name} at {uri}: run the pipeline through augment first "
                                  "(recaug run --until augment)")
    version = table_version(table_uri) if version is None else version
    targets_version = table_version(targets_uri) if targets_version is None else targets_version
    if items_uri is not None and table_exists(items_uri):
        items_version = table_version(items_uri) if items_version is None else items_version
    else:
        items_uri, items_version = None, None
    rows = {k: v for k, v in rows_by_partition(table_uri, CHAIN_COLUMN, version).items() if k is not None}
    if not rows.get(REAL_CHAIN):
        raise ExperimentError(f"{table_uri}@{version} has no real rows ({CHAIN_COLUMN} = '{REAL_CHAIN}'); "
                              f"chains: {sorted(rows)}")
    arms = resolve_arms(cfg.variants, list(rows))
    steps = cfg.steps_per_epoch or max(1, math.ceil(rows[REAL_CHAIN] / cfg.batch_size))
    return ExperimentPlan(table_uri, version, targets_uri, targets_version, items_uri, items_version, arms, rows, steps)


# ---------------------------------------------------------------- runs

@dataclass
class RunRecord:
    variant: str
    seed: int
    result: dict[str, Any] = field(repr=False)

    @property
    def steps(self) -> int:
        return int(self.result.get("epochs_run", 0)) * int(self.result.get("steps_per_epoch", 0))


def run_experiment(plan: ExperimentPlan, cfg, *, spark=None, log: Callable[[str], None] | None = None,
                   epoch_log: bool = False, on_record: Callable[[RunRecord], None] | None = None,
                   finished: Mapping[tuple[str, int], dict] | None = None,
                   progress_dir: str | None = None) -> list[RunRecord]:
    """Train every arm × seed of ``plan``; ``cfg.num_processes`` > 1 runs each model on that many
    TorchDistributor ranks (local mode) of ``spark``'s cluster (default: the active session);
    otherwise ``cfg.runs_at_once()`` models train at once, each in a process of its own.

    Runs go seed by seed (every arm of seed 1, then of seed 2, …), so that paired comparisons
    complete early; the records come back in plan order (arm, then seed). ``epoch_log``: also log a
    line per epoch of every run (to stderr from worker processes); ``on_record``: called with each
    record as its run ends (e.g. to save partial results of a long study); ``finished``: results of
    runs an interrupted study already saved, by (arm name, seed): they are reported, not retrained
    (the caller vouches that they came from the same plan and settings); ``progress_dir``: each
    in-process run saves its state there after every epoch and resumes from it after an
    interruption (``recaug_spark.train.progress``)."""
    trainer_cfg = cfg.trainer_config().model_copy(update={"steps_per_epoch": plan.steps_per_epoch})
    runs = [(arm, seed) for seed in cfg.seeds for arm in plan.arms]
    finished = finished or {}
    recorder = _Recorder(len(runs), cfg.early_stopping_metric, on_record, log)
    for arm, seed in runs:
        if (arm.name, seed) in finished:
            recorder.done(arm, seed, finished[arm.name, seed], 0.0, saved=True)
    to_train = [(arm, seed) for arm, seed in runs if (arm.name, seed) not in finished]
    if cfg.num_processes > 1:
        rows_only = [arm.name for arm, _ in to_train if arm.consume != "rows"]
        if rows_only:
            raise ExperimentError(f"variant(s) {sorted(set(rows_only))} consume augmented rows in another way than "
                                  "as rows, which runs in one process per model: set train.num_processes to 1")
        _train_distributed(plan, trainer_cfg, cfg.num_processes, to_train, recorder)
    else:
        shared = _shared_inputs(plan, trainer_cfg, progress_dir)
        at_once = cfg.runs_at_once()
        if at_once <= 1 or len(to_train) <= 1:
            _train_one_by_one(shared, to_train, recorder, epoch_log, log)
        else:
            _train_side_by_side(shared, to_train, recorder, epoch_log, at_once)
    return [recorder.records[arm.name, seed] for arm in plan.arms for seed in cfg.seeds]


@dataclass
class _Recorder:
    """Collects the records of an experiment's runs as they end, and reports each one."""

    total: int
    metric: str
    on_record: Callable[[RunRecord], None] | None
    log: Callable[[str], None] | None
    records: dict[tuple[str, int], RunRecord] = field(default_factory=dict)

    def done(self, arm: Arm, seed: int, result: dict, seconds: float, saved: bool = False) -> None:
        self.records[arm.name, seed] = record = RunRecord(arm.name, seed, result)
        if self.on_record is not None:
            self.on_record(record)
        if self.log is not None:
            self.log(f"[train] {len(self.records)}/{self.total} {arm.name} seed {seed}: test {self.metric} "
                     f"{result['test'][self.metric]:.4f} after {result['epochs_run']} × "
                     f"{result['steps_per_epoch']} steps (best epoch {result['best_epoch']}) in {seconds:.1f}s"
                     + (" (saved by an earlier study)" if saved else ""))


def _train_distributed(plan: ExperimentPlan, trainer_cfg, processes: int, runs: Sequence[tuple[Arm, int]],
                       recorder: _Recorder) -> None:
    """Each run on ``processes`` TorchDistributor ranks (local mode), one run after another."""
    from pyspark.ml.torch.distributor import TorchDistributor

    from recaug_spark.train.trainer import train_rank

    distributor = TorchDistributor(num_processes=processes, local_mode=True, use_gpu=trainer_cfg.device == "cuda")
    payload = trainer_cfg.model_dump_json()
    for arm, seed in runs:
        started = time.perf_counter()
        result = distributor.run(train_rank, payload, plan.table_uri, version=plan.version,
                                 chains=[REAL_CHAIN, *arm.chains], targets_uri=plan.targets_uri,
                                 targets_version=plan.targets_version, items_uri=plan.items_uri,
                                 items_version=plan.items_version, seed=seed)
        recorder.done(arm, seed, result, time.perf_counter() - started)


def _shared_inputs(plan: ExperimentPlan, trainer_cfg, progress_dir: str | None = None) -> tuple:
    """What every in-process run shares: (trainer config, plan, history files, targets, vocabulary,
    progress folder)."""
    from recaug_spark.train.data import Vocabulary, pinned_files, read_targets

    history = pinned_files(plan.table_uri, plan.version, [REAL_CHAIN])
    targets = read_targets(plan.targets_uri, plan.targets_version)
    if plan.items_uri is not None:
        vocabulary = Vocabulary.from_items_table(plan.items_uri, plan.items_version)
    else:
        from recaug_spark.train.trainer import target_items

        vocabulary = Vocabulary.from_files(pinned_files(plan.table_uri, plan.version),
                                           extra=target_items(targets, None))
    return trainer_cfg, plan, history, targets, vocabulary, progress_dir


def _train_one_by_one(shared: tuple, runs: Sequence[tuple[Arm, int]], recorder: _Recorder, epoch_log: bool,
                      log: Callable[[str], None] | None) -> None:
    for arm, seed in runs:
        started = time.perf_counter()
        prefix = _run_label(arm, seed) if epoch_log and log is not None else None
        result = _train_local(*shared, arm, seed, prefix, log)
        recorder.done(arm, seed, result, time.perf_counter() - started)


def _train_side_by_side(shared: tuple, runs: Sequence[tuple[Arm, int]], recorder: _Recorder, epoch_log: bool,
                        workers: int) -> None:
    """Up to ``workers`` runs at once, each in a fresh worker process (per-epoch lines go to stderr)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a fresh interpreter per worker (no forked JVM gateway or torch thread pools)
    with ProcessPoolExecutor(max_workers=min(workers, len(runs)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        started = time.perf_counter()
        futures = {pool.submit(_train_local, *shared, arm, seed,
                               _run_label(arm, seed) if epoch_log else None): (arm, seed)
                   for arm, seed in runs}
        for future in as_completed(futures):
            arm, seed = futures[future]
            recorder.done(arm, seed, future.result(), time.perf_counter() - started)


def _run_label(arm: Arm, seed: int) -> str:
    return f"[train] {arm.name} seed {seed}:"


def _train_local(trainer_cfg, plan: ExperimentPlan, history, targets, vocabulary, progress_dir: str | None,
                 arm: Arm, seed: int, log_prefix: str | None = None, log: Callable[[str], None] | None = None) -> dict:
    """One model of an experiment in this process (a worker process when runs are parallel)."""
    from recaug_spark.train.consumption import arm_inputs
    from recaug_spark.train.data import pinned_files
    from recaug_spark.train.trainer import train

    chain_files = pinned_files(plan.table_uri, plan.version, list(arm.chains)) if arm.chains else []
    files, objective = arm_inputs(arm.variant, history, chain_files)
    epoch_log = None
    if log_prefix is not None:
        epoch_log = functools.partial(_prefixed, log_prefix, log or _stderr)
    progress = None if progress_dir is None else str(Path(progress_dir) / f"{arm.name}-seed{seed}.progress.pt")
    return train(trainer_cfg, files, targets, targets, history_files=history, vocabulary=vocabulary, seed=seed,
                 log=epoch_log, objective=objective, progress_path=progress)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _prefixed(prefix: str, log: Callable[[str], None], line: str) -> None:
    log(f"{prefix} {line}")


# ---------------------------------------------------------------- metrics table

def metrics_schema():
    from pyspark.sql import types as T

    return T.StructType([
        T.StructField("run_id", T.StringType(), False),
        T.StructField("experiment", T.StringType(), False),
        T.StructField("variant", T.StringType(), False),
        T.StructField("seed", T.LongType(), False),
        T.StructField("split", T.StringType(), False),  # valid (best validation) / test
        T.StructField("protocol", T.StringType(), False),  # full / sampled
        T.StructField("metric", T.StringType(), False),  # hr, ndcg, recall, mrr, auc
        T.StructField("k", T.IntegerType(), True),  # the cut-off; null for mrr and auc
        T.StructField("group", T.StringType(), False),  # all / short / long / head / tail
        T.StructField("value", T.DoubleType(), True),
        T.StructField("table_version", T.LongType(), False),  # the pinned augmented_sequences version
        T.StructField("config_hash", T.StringType(), False),
    ])


def split_metric(name: str) -> tuple[str, int | None]:
    """``ndcg@10`` → ("ndcg", 10); ``mrr`` → ("mrr", None)."""
    metric, _, k = name.partition("@")
    return metric, int(k) if k else None


def metric_rows(records: Sequence[RunRecord], *, run_id: str, experiment: str, table_version: int,
                config_hash: str) -> list[tuple]:
    """One row per (variant, seed, split, metric, k, group): valid (group ``all``) and test (``all`` plus
    the short/long history and head/tail target groups)."""
    rows = []
    for record in records:
        result = record.result
        protocol = "full" if result.get("protocol", "full") == "full" else "sampled"
        sections = [("valid", "all", result.get("valid") or {}), ("test", "all", result["test"])]
        sections += [("test", group, values) for group, values in sorted(result.get("test_breakdown", {}).items())]
        for split, group, values in sections:
            for name, value in sorted(values.items()):
                if name == "users" or not isinstance(value, (int, float)):
                    continue
                metric, k = split_metric(name)
                rows.append((run_id, experiment, record.variant, int(record.seed), split, protocol, metric, k, group,
                             float(value), int(table_version), config_hash))
    return rows


# ---------------------------------------------------------------- comparison

@dataclass(frozen=True)
class Comparison:
    variant: str
    metric: str
    mean: float
    half_width: float  # 95% CI half width over seeds (NaN with one seed)
    n: int
    relative: float  # (mean - baseline mean) / baseline mean; 0 for the baseline
    relative_low: float  # paired-by-seed 95% CI of the relative change (NaN when undefined)
    relative_high: float


def compare(values: Mapping[str, Mapping[int, float]], metric: str, baseline: str = BASELINE,
            confidence: float = 0.95) -> list[Comparison]:
    """Mean ± CI per variant and the change against ``baseline``, from ``{variant: {seed: value}}``.

    The relative change's interval is the paired one: the CI of the per-seed differences
    (variant − baseline, on the seeds both have) divided by the baseline mean.
    """
    if baseline not in values:
        raise ExperimentError(f"no {baseline!r} among the variants {sorted(values)}")
    base = values[baseline]
    base_mean = M.mean_ci(list(base.values()), confidence)["mean"]
    out = []
    for variant, by_seed in values.items():
        stats = M.mean_ci(list(by_seed.values()), confidence)
        if variant == baseline:
            out.append(Comparison(variant, metric, stats["mean"], stats["half_width"], stats["n"], 0.0, math.nan,
                                  math.nan))
            continue
        seeds = sorted(set(by_seed) & set(base))
        relative = (stats["mean"] - base_mean) / base_mean if base_mean else math.nan
        low = high = math.nan
        if len(seeds) >= 2 and base_mean:
            diff = M.mean_ci([by_seed[s] - base[s] for s in seeds], confidence)
            low, high = diff["low"] / base_mean, diff["high"] / base_mean
        out.append(Comparison(variant, metric, stats["mean"], stats["half_width"], stats["n"], relative, low, high))
    return out


def format_mean_ci(mean: float, half_width: float, digits: int = 4) -> str:
    """``0.3220 ± 0.0051``; ``0.3220 ± n/a`` when the interval is undefined (one seed)."""
    if math.isnan(half_width):
        return f"{mean:.{digits}f} ± n/a"
    return f"{mean:.{digits}f} ± {half_width:.{digits}f}"


def format_relative(c: Comparison) -> str:
    """``+6.5% [-1.6%, +14.5%]`` (paired 95% CI); ``—`` for the baseline."""
    if c.variant == BASELINE:
        return "—"
    if math.isnan(c.relative):
        return "n/a"
    text = f"{c.relative:+.1%}"
    if not math.isnan(c.relative_low):
        text += f" [{c.relative_low:+.1%}, {c.relative_high:+.1%}]"
        if c.relative_low > 0 or c.relative_high < 0:
            text += " *"  # the paired interval excludes 0
    return text


def verdict(c: Comparison, split: str = "test") -> str:
    """One plain sentence on whether ``c.variant`` helps, from its paired-by-seed interval: it
    helps (or hurts) only when the interval excludes 0; otherwise there is no measurable effect."""
    figure = f"{split} {c.metric} {format_relative(c).removesuffix(' *')}"
    if math.isnan(c.relative_low):
        return f"{c.variant}: undecided, {figure} from fewer than 2 paired seeds (no interval)."
    if c.relative_low > 0:
        return f"{c.variant}: helps, {figure} (paired 95% CI above 0)."
    if c.relative_high < 0:
        return f"{c.variant}: hurts, {figure} (paired 95% CI below 0)."
    return f"{c.variant}: no measurable effect, {figure} (paired 95% CI includes 0)."


def verdict_lines(records: Sequence[RunRecord], metric: str, group: str = "all") -> list[str]:
    """``verdict`` for every variant against the baseline on ``metric`` of the test split."""
    return [verdict(c) for c in compare(values_by_variant(records, metric, "test", group), metric)
            if c.variant != BASELINE]


def format_comparison(rows_by_metric: Mapping[str, Sequence[Comparison]],
                      chains: Mapping[str, str] | None = None) -> str:
    """A fixed-width text table: one line per variant, for each metric mean ± CI and Δ vs baseline."""
    metrics = list(rows_by_metric)
    variants = [c.variant for c in rows_by_metric[metrics[0]]]
    chains = chains or {}
    cells = []
    for i, variant in enumerate(variants):
        line = [variant, chains.get(variant, "")]
        for metric in metrics:
            c = rows_by_metric[metric][i]
            line += [format_mean_ci(c.mean, c.half_width), format_relative(c)]
        cells.append(line)
    header = ["variant", "chains"] + [h for m in metrics for h in (m, f"Δ {m} vs baseline")]
    widths = [max(len(str(row[j])) for row in [header, *cells]) for j in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *cells]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def values_by_variant(records: Sequence[RunRecord], metric: str, split: str = "test",
                      group: str = "all") -> dict[str, dict[int, float]]:
    """``{variant: {seed: value}}`` of one metric, variants in the order they ran."""
    out: dict[str, dict[int, float]] = {}
    for r in records:
        values = r.result[split] if group == "all" else r.result.get("test_breakdown", {}).get(group, {})
        if metric in values:
            out.setdefault(r.variant, {})[r.seed] = float(values[metric])
    return out


def comparison_table(records: Sequence[RunRecord], metrics: Sequence[str] = REPORT_METRICS, *,
                     group: str = "all", chains: Mapping[str, str] | None = None) -> str:
    """The with-vs-without table of the test split (``group``: all, short, long, head or tail)."""
    rows = {m: compare(values_by_variant(records, m, "test", group), m) for m in metrics}
    seeds = sorted({r.seed for r in records})
    protocol = records[0].result.get("protocol", "full") if records else "full"
    title = (f"test, {protocol} ranking, group {group}: mean ± 95% CI over {len(seeds)} seed(s); "
             f"Δ relative to baseline with its paired-by-seed 95% CI (* = excludes 0)")
    return title + "\n" + format_comparison(rows, chains)
