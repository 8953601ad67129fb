"""Experiments: does augmented data help? A real-only baseline against augmented variants.

An experiment pins one version of ``augmented_sequences`` (and of ``sequence_targets`` and
``items``) and trains one model per arm × seed on it with ``recaug_spark.train.trainer``:

* ``baseline`` — the real rows only (``operator_chain == "real"``);
* each configured variant — the real rows plus the augmented rows of its operator chains
  (``chains: all`` takes every chain present in the pinned version).

Every arm uses the same seeds, the same item vocabulary (the ``items`` table: identical candidate
sets under full ranking), the same evaluation users (validation targets for early stopping, test
targets for the report, histories from the real rows) and the same hyper-parameters.

**Fair comparison rule (DESIGN.md's trap).** An augmented epoch has more batches, so counting
training time or patience in epochs lets an augmented arm train longer than the baseline and look
better for it. Here an epoch is a *fixed number of optimizer steps* for every arm:
``train.steps_per_epoch``, by default the baseline's natural epoch (⌈real rows / batch size⌉).
Validation happens every ``eval_every`` such epochs, and ``patience`` and the ``epochs`` budget are
therefore measured in steps, identically for every arm: each arm gets at most ``epochs ×
steps_per_epoch`` optimizer steps and stops after ``patience × eval_every × steps_per_epoch`` steps
without a better validation score. The baseline trains exactly as it would alone; an augmented arm
sees a smaller share of its larger data per "epoch" but never more updates. The steps each run
took are recorded in the report. Results are means over seeds with 95% Student-t intervals, and the
change against the baseline is also given *paired by seed* (same seed, same initial weights), whose
interval is what tells a real effect from noise (DESIGN.md: seed-to-seed spread ≈ 3% NDCG@10).

Outputs: rows for the ``metrics`` Delta table (``metric_rows`` / ``METRICS``), a plain-text
comparison table (``comparison_table``), and a report folder with ``report.md`` and PNG plots
(``write_report``).

Example::

    plan = plan_experiment(cfg.train, "wh/augmented_sequences", "wh/sequence_targets", "wh/items")
    runs = run_experiment(plan, cfg.train)                 # [RunRecord(variant, seed, result), ...]
    print(comparison_table(runs))
    rows = metric_rows(runs, run_id="r1", experiment="default", table_version=plan.version,
                       config_hash=cfg.hash)
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from recaug_spark.train import metrics as M

BASELINE = "baseline"
REAL_CHAIN = "real"
CHAIN_COLUMN = "operator_chain"
REPORT_METRICS = ("ndcg@10", "hr@10", "mrr")


class ExperimentError(ValueError):
    """An experiment that cannot run; the message names the variant, chain or table."""


# ---------------------------------------------------------------- plan

@dataclass(frozen=True)
class Arm:
    name: str
    chains: tuple[str, ...]  # augmented chains trained on besides "real" (empty for the baseline)
    requested: str = ""  # the chains as configured ("all" or a list), for the report


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
            arms.append(Arm(variant.name, tuple(augmented), "all"))
            continue
        unknown = sorted(set(variant.chains) - set(augmented))
        if unknown:
            raise ExperimentError(f"variant {variant.name!r}: chain(s) {unknown} not in the table; chains present: "
                                  f"{augmented}")
        arms.append(Arm(variant.name, tuple(variant.chains), ", ".join(variant.chains)))
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
            raise ExperimentError(f"no {name} at {uri}: run the pipeline through augment first (recaug run --until augment)")
    version = table_version(table_uri) if version is None else version
    targets_version = table_version(targets_uri) if targets_version is None else targets_version
    if items_uri is not None and table_exists(items_uri):
        items_version = table_version(items_uri) if items_version is None else items_version
    else:
        items_uri, items_version = None, None
    rows = {k: v for k, v in rows_by_partition(table_uri, CHAIN_COLUMN, version).items() if k is not None}
    if not rows.get(REAL_CHAIN):
        raise ExperimentError(f"{table_uri}@{version} has no real rows ({CHAIN_COLUMN} = 'real'); chains: {sorted(rows)}")
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
                   finished: Mapping[tuple[str, int], dict] | None = None) -> list[RunRecord]:
    """Train every arm × seed of ``plan``; ``cfg.num_processes`` > 1 runs each model on that many
    TorchDistributor ranks (local mode) of ``spark``'s cluster (default: the active session);
    otherwise ``cfg.parallel_runs`` models train at once, each in a process of its own.

    Runs go seed by seed (every arm of seed 1, then of seed 2, …), so that paired comparisons
    complete early; the records come back in plan order (arm, then seed). ``epoch_log``: also log a
    line per epoch of every run (to stderr from worker processes); ``on_record``: called with each
    record as its run ends (e.g. to save partial results of a long study); ``finished``: results of
    runs an interrupted study already saved, by (arm name, seed): they are reported, not retrained
    (the caller vouches that they came from the same plan and settings)."""
    from recaug_spark.train.data import Vocabulary, pinned_files, read_targets

    trainer_cfg = cfg.trainer_config().model_copy(update={"steps_per_epoch": plan.steps_per_epoch})
    runs = [(arm, seed) for seed in cfg.seeds for arm in plan.arms]
    records: dict[tuple[str, int], RunRecord] = {}
    reused = [(arm, seed) for arm, seed in runs if (arm.name, seed) in (finished or {})]
    runs_to_train = [run for run in runs if run not in reused]

    def done(arm: Arm, seed: int, result: dict, seconds: float) -> None:
        records[arm.name, seed] = RunRecord(arm.name, seed, result)
        if on_record is not None:
            on_record(records[arm.name, seed])
        if log is not None:
            log(f"[train] {len(records)}/{len(runs)} {arm.name} seed {seed}: test {cfg.early_stopping_metric} "
                f"{result['test'][cfg.early_stopping_metric]:.4f} after {result['epochs_run']} × "
                f"{result['steps_per_epoch']} steps (best epoch {result['best_epoch']}) in {seconds:.1f}s"
                + (" (saved by an earlier study)" if (arm, seed) in reused else ""))

    for arm, seed in reused:
        done(arm, seed, finished[arm.name, seed], 0.0)

    if cfg.num_processes > 1:
        from pyspark.ml.torch.distributor import TorchDistributor

        from recaug_spark.train.trainer import train_rank

        distributor = TorchDistributor(num_processes=cfg.num_processes, local_mode=True,
                                       use_gpu=trainer_cfg.device == "cuda")
        payload = trainer_cfg.model_dump_json()
        for arm, seed in runs_to_train:
            started = time.perf_counter()
            result = distributor.run(train_rank, payload, plan.table_uri, version=plan.version,
                                     chains=[REAL_CHAIN, *arm.chains], targets_uri=plan.targets_uri,
                                     targets_version=plan.targets_version, items_uri=plan.items_uri,
                                     items_version=plan.items_version, seed=seed)
            done(arm, seed, result, time.perf_counter() - started)
        return [records[arm.name, seed] for arm in plan.arms for seed in cfg.seeds]

    history = pinned_files(plan.table_uri, plan.version, [REAL_CHAIN])
    targets = read_targets(plan.targets_uri, plan.targets_version)
    if plan.items_uri is not None:
        vocabulary = Vocabulary.from_items_table(plan.items_uri, plan.items_version)
    else:
        from recaug_spark.train.trainer import _target_items

        vocabulary = Vocabulary.from_files(pinned_files(plan.table_uri, plan.version),
                                           extra=_target_items(targets, None))
    shared = (trainer_cfg, plan, history, targets, vocabulary)
    if cfg.parallel_runs <= 1 or len(runs_to_train) <= 1:
        for arm, seed in runs_to_train:
            started = time.perf_counter()
            prefix = f"[train] {arm.name} seed {seed}:" if epoch_log and log is not None else None
            result = _train_local(*shared, arm.chains, seed, prefix, log)
            done(arm, seed, result, time.perf_counter() - started)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: a fresh interpreter per worker (no forked JVM gateway or torch thread pools)
        with ProcessPoolExecutor(max_workers=min(cfg.parallel_runs, len(runs_to_train)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            started = time.perf_counter()
            futures = {pool.submit(_train_local, *shared, arm.chains, seed,
                                   f"[train] {arm.name} seed {seed}:" if epoch_log else None): (arm, seed)
                       for arm, seed in runs_to_train}
            for future in as_completed(futures):
                arm, seed = futures[future]
                done(arm, seed, future.result(), time.perf_counter() - started)
    return [records[arm.name, seed] for arm in plan.arms for seed in cfg.seeds]


def _train_local(trainer_cfg, plan: ExperimentPlan, history, targets, vocabulary, chains: Sequence[str], seed: int,
                 log_prefix: str | None = None, log: Callable[[str], None] | None = None) -> dict:
    """One model of an experiment in this process (a worker process when runs are parallel)."""
    from recaug_spark.train.data import pinned_files
    from recaug_spark.train.trainer import train

    files = pinned_files(plan.table_uri, plan.version, [REAL_CHAIN, *chains])
    epoch_log = None
    if log_prefix is not None:
        epoch_log = functools.partial(_prefixed, log_prefix, log or _stderr)
    return train(trainer_cfg, files, targets, targets, history_files=history, vocabulary=vocabulary, seed=seed,
                 log=epoch_log)


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
            out.append(Comparison(variant, metric, stats["mean"], stats["half_width"], stats["n"], 0.0, math.nan, math.nan))
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


def format_comparison(rows_by_metric: Mapping[str, Sequence[Comparison]], chains: Mapping[str, str] | None = None) -> str:
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


# ---------------------------------------------------------------- report

def _convergence_note(records: Sequence[RunRecord]) -> list[str]:
    unfinished = [r for r in records if not r.result.get("stopped_early")
                  and r.result.get("best_epoch", -1) + 1 == r.result.get("epochs_run")]
    if not unfinished:
        return []
    return [f"Note: {len(unfinished)} of {len(records)} runs were still improving when the step budget ended. "
            "The comparison holds at equal training steps; to compare against a converged baseline, raise "
            "`train.epochs` (patience then decides when each run stops).", ""]


def write_report(folder: str | Path, plan: ExperimentPlan, cfg, records: Sequence[RunRecord], *, run_id: str,
                 experiment: str, config_hash: str, quality: Mapping[str, Any] | None = None) -> Path:
    """``report.md`` plus PNG plots into ``folder``; returns the path of report.md."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chains = {a.name: a.requested for a in plan.arms}
    variants = [a.name for a in plan.arms]
    stop = cfg.early_stopping_metric
    metrics = list(dict.fromkeys([stop, *REPORT_METRICS]))

    # Plot 1: test metrics per variant with 95% CIs.
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = compare(values_by_variant(records, metric), metric)
        ax.bar(range(len(rows)), [c.mean for c in rows],
               yerr=[0 if math.isnan(c.half_width) else c.half_width for c in rows], capsize=4,
               color=["#888888" if c.variant == BASELINE else "#3b75af" for c in rows])
        ax.set_xticks(range(len(rows)), [c.variant for c in rows], rotation=20, fontsize=8)
        ax.set_title(f"test {metric}")
    fig.tight_layout()
    fig.savefig(folder / "metrics.png", dpi=100)
    plt.close(fig)

    # Plot 2: the early-stopping metric by group (short/long histories, head/tail targets).
    groups = sorted({g for r in records for g in r.result.get("test_breakdown", {})})
    if groups:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        width = 0.8 / len(variants)
        for i, variant in enumerate(variants):
            means, errors = [], []
            for g in groups:
                stats = [r.result["test_breakdown"][g].get(stop, math.nan) for r in records
                         if r.variant == variant and g in r.result.get("test_breakdown", {})]
                ci = M.mean_ci(stats) if stats else {"mean": math.nan, "half_width": math.nan}
                means.append(ci["mean"])
                errors.append(0 if math.isnan(ci["half_width"]) else ci["half_width"])
            ax.bar([j + i * width for j in range(len(groups))], means, width, yerr=errors, capsize=3, label=variant)
        ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(groups))], groups)
        ax.set_title(f"test {stop} by group")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "groups.png", dpi=100)
        plt.close(fig)

    # Plot 3: validation curves against optimizer steps (the fairness axis), one line per run.
    fig, ax = plt.subplots(figsize=(7, 3.8))
    colors = {v: f"C{i}" for i, v in enumerate(variants)}
    for r in records:
        points = [((h["epoch"] + 1) * r.result["steps_per_epoch"], h[f"valid_{stop}"]) for h in r.result["history"]
                  if f"valid_{stop}" in h]
        if points:
            ax.plot(*zip(*points), color=colors[r.variant], alpha=0.8,
                    label=r.variant if r.seed == cfg.seeds[0] else None)
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel(f"valid {stop}")
    ax.set_title("Validation during training (same step budget for every variant)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "validation.png", dpi=100)
    plt.close(fig)

    plots = ["metrics.png", *(["groups.png"] if groups else []), "validation.png"]
    if quality is not None:
        from recaug_spark.train.quality import quality_plots

        plots += quality_plots(quality, folder)

    runs_lines = ["| variant | seed | training rows | epochs run | best epoch | steps | "
                  f"valid {stop} | test {stop} | seconds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        res = r.result
        valid = (res.get("valid") or {}).get(stop, math.nan)
        runs_lines.append(f"| {r.variant} | {r.seed} | {res.get('train_sequences', 0):,} | {res['epochs_run']} | "
                          f"{res['best_epoch'] + 1} | {r.steps:,} | {valid:.4f} | {res['test'][stop]:.4f} | "
                          f"{res.get('seconds_total', 0.0):.1f} |")
    arms_lines = ["| variant | chains | rows (real + augmented) |", "|---|---|---:|"]
    arms_lines += [f"| {a.name} | {a.requested} | {plan.rows(a):,} |" for a in plan.arms]
    group_tables = [f"### Group `{g}`\n\n```\n{comparison_table(records, (stop,), group=g, chains=chains)}\n```\n"
                    for g in groups]
    trainer = cfg.trainer_config()
    lines = [
        f"# Experiment `{experiment}` — run `{run_id}`", "",
        f"- augmented table: `{plan.table_uri}` version {plan.version} (pinned for every run)",
        f"- targets: `{plan.targets_uri}` version {plan.targets_version}; items: "
        + (f"`{plan.items_uri}` version {plan.items_version}" if plan.items_uri else "from the training files"),
        f"- model: {trainer.model}, hidden {trainer.hidden}, {trainer.blocks} block(s), max_len {trainer.max_len}, "
        f"batch {trainer.batch_size}, lr {trainer.lr:g}; evaluation: {trainer.negatives_protocol} ranking, "
        f"early stopping on valid {stop}",
        f"- seeds: {list(cfg.seeds)}; config hash `{config_hash}`", "",
        "## Fair comparison", "",
        f"Every variant trains with the same step budget: an epoch is {plan.steps_per_epoch} optimizer steps "
        f"(the baseline's natural epoch unless `train.steps_per_epoch` is set), at most {trainer.epochs} epochs "
        f"= {trainer.epochs * plan.steps_per_epoch:,} steps, validated every {trainer.eval_every} epoch(s), "
        f"stopped after {trainer.patience} validation(s) = "
        f"{trainer.patience * trainer.eval_every * plan.steps_per_epoch:,} steps without improvement. An augmented "
        "variant therefore gets no more updates than the baseline; the gain, if any, is from the data.", "",
        *arms_lines, "",
        "## Results (test split)", "",
        "```", comparison_table(records, metrics, chains=chains), "```", "",
        "![test metrics](metrics.png)", "",
        *(["## By group", "", "short/long: history length ≤ / > "
           f"{trainer.short_history_max}; head/tail: target among the {trainer.head_item_share:.0%} most popular "
           "items or not.", "", *group_tables, "![groups](groups.png)", ""] if groups else []),
        "## Training runs", "", *runs_lines, "", *_convergence_note(records), "![validation curves](validation.png)", "",
    ]
    if quality is not None:
        from recaug_spark.train.quality import quality_markdown

        lines += [quality_markdown(quality, "Data quality of the pinned table"),
                  "![lengths](quality_lengths.png)", "", "![diversity](quality_diversity.png)", ""]
    report = folder / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    (folder / "runs.json").write_text(json.dumps(
        [{"variant": r.variant, "seed": r.seed, **{k: v for k, v in r.result.items() if k != "history"}}
         for r in records], indent=2, default=str), encoding="utf-8")
    return report
