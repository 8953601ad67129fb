"""The report of a finished experiment: ``report.md``, ``runs.json`` and PNG plots in one folder.

``write_report`` writes, for the runs of ``experiment.run_experiment``:

* ``metrics.png`` — the test metrics per variant with their 95% intervals over seeds;
* ``groups.png`` — the early-stopping metric by group (short/long histories, head/tail targets),
  when the runs have a breakdown;
* ``validation.png`` — validation curves against optimizer steps, the axis on which every variant
  gets the same budget;
* ``quality_*.png`` — the data-quality plots (``quality.quality_plots``) when a quality report is
  given;
* ``report.md`` — the pinned versions, the settings, the fair-comparison budget, the comparison
  tables and a table of the runs; ``runs.json`` — every run's result without its epoch history.

Every plot is one function drawing one figure; ``new_figure`` and ``save_figure`` are the shared
matplotlib steps (a display-free backend; tight layout, PNG at 100 dpi, figure closed).

Example::

    report = write_report("reports/r1", plan, cfg.train, records, run_id="r1", experiment="default",
                          config_hash=cfg.hash, quality=quality)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from recaug_spark.train import metrics as M
from recaug_spark.train.experiment import (
    BASELINE,
    REPORT_METRICS,
    ExperimentPlan,
    RunRecord,
    compare,
    comparison_table,
    values_by_variant,
    verdict_lines,
)
from recaug_spark.train.figures import new_figure, save_figure


def write_report(folder: str | Path, plan: ExperimentPlan, cfg, records: Sequence[RunRecord], *, run_id: str,
                 experiment: str, config_hash: str, quality: Mapping[str, Any] | None = None) -> Path:
    """``report.md`` plus PNG plots into ``folder``; returns the path of report.md.

    ``cfg``: the ``train`` section (``recaug_spark.config.TrainStageConfig``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    variants = [a.name for a in plan.arms]
    stop = cfg.early_stopping_metric
    metrics = list(dict.fromkeys([stop, *REPORT_METRICS]))
    groups = sorted({g for r in records for g in r.result.get("test_breakdown", {})})

    plot_metrics(folder, records, metrics)
    if groups:
        plot_groups(folder, records, variants, groups, stop)
    plot_validation(folder, records, variants, stop, cfg.seeds[0])
    if quality is not None:
        from recaug_spark.train.quality import quality_plots

        quality_plots(quality, folder)

    lines = [*_settings_lines(plan, cfg, run_id, experiment, config_hash), *_fairness_lines(plan, cfg),
             *_results_lines(records, metrics, plan), *_group_lines(records, groups, plan, cfg),
             *_runs_lines(records, stop)]
    if quality is not None:
        from recaug_spark.train.quality import quality_markdown

        lines += [quality_markdown(quality, "Data quality of the pinned table"),
                  "![lengths](quality_lengths.png)", "", "![diversity](quality_diversity.png)", ""]
    report = folder / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    write_runs_json(folder / "runs.json", records)
    return report


def write_runs_json(path: Path, records: Sequence[RunRecord]) -> None:
    """Every run's variant, seed and result (without the per-epoch history) as a JSON list."""
    path.write_text(json.dumps(
        [{"variant": r.variant, "seed": r.seed, **{k: v for k, v in r.result.items() if k != "history"}}
         for r in records], indent=2, default=str), encoding="utf-8")


# ---------------------------------------------------------------- plots

def plot_metrics(folder: Path, records: Sequence[RunRecord], metrics: Sequence[str]) -> str:
    """``metrics.png``: one bar chart per test metric, a bar per variant with its 95% interval."""
    fig, axes = new_figure(nrows=1, ncols=len(metrics), figsize=(4 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = compare(values_by_variant(records, metric), metric)
        ax.bar(range(len(rows)), [c.mean for c in rows],
               yerr=[0 if math.isnan(c.half_width) else c.half_width for c in rows], capsize=4,
               color=["#888888" if c.variant == BASELINE else "#3b75af" for c in rows])
        ax.set_xticks(range(len(rows)), [c.variant for c in rows], rotation=20, fontsize=8)
        ax.set_title(f"test {metric}")
    return save_figure(fig, folder / "metrics.png")


def plot_groups(folder: Path, records: Sequence[RunRecord], variants: Sequence[str], groups: Sequence[str],
                metric: str) -> str:
    """``groups.png``: test ``metric`` by group, a bar per variant with its 95% interval."""
    fig, ax = new_figure(figsize=(7, 3.8))
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        intervals = [_group_interval(records, variant, group, metric) for group in groups]
        ax.bar([j + i * width for j in range(len(groups))], [ci["mean"] for ci in intervals], width,
               yerr=[0 if math.isnan(ci["half_width"]) else ci["half_width"] for ci in intervals], capsize=3,
               label=variant)
    ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(groups))], groups)
    ax.set_title(f"test {metric} by group")
    ax.legend(fontsize=8)
    return save_figure(fig, folder / "groups.png")


def plot_validation(folder: Path, records: Sequence[RunRecord], variants: Sequence[str], metric: str,
                    first_seed: int) -> str:
    """``validation.png``: validation ``metric`` against optimizer steps, a line per run (labelled
    once per variant, on its ``first_seed`` run)."""
    fig, ax = new_figure(figsize=(7, 3.8))
    colors = {v: f"C{i}" for i, v in enumerate(variants)}
    for r in records:
        points = [((h["epoch"] + 1) * r.result["steps_per_epoch"], h[f"valid_{metric}"]) for h in r.result["history"]
                  if f"valid_{metric}" in h]
        if points:
            ax.plot(*zip(*points), color=colors[r.variant], alpha=0.8,
                    label=r.variant if r.seed == first_seed else None)
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel(f"valid {metric}")
    ax.set_title("Validation during training (same step budget for every variant)")
    ax.legend(fontsize=8)
    return save_figure(fig, folder / "validation.png")


def _group_interval(records: Sequence[RunRecord], variant: str, group: str, metric: str) -> dict[str, float]:
    """Mean and 95% interval over seeds of ``variant``'s test ``metric`` in ``group`` (NaN: no run)."""
    values = [r.result["test_breakdown"][group].get(metric, math.nan) for r in records
              if r.variant == variant and group in r.result.get("test_breakdown", {})]
    return M.mean_ci(values) if values else {"mean": math.nan, "half_width": math.nan}


# ---------------------------------------------------------------- report.md sections

def _settings_lines(plan: ExperimentPlan, cfg, run_id: str, experiment: str, config_hash: str) -> list[str]:
    trainer = cfg.trainer_config()
    items = f"`{plan.items_uri}` version {plan.items_version}" if plan.items_uri else "from the training files"
    return [
        f"# Experiment `{experiment}` — run `{run_id}`", "",
        f"- augmented table: `{plan.table_uri}` version {plan.version} (pinned for every run)",
        f"- targets: `{plan.targets_uri}` version {plan.targets_version}; items: " + items,
        f"- model: {trainer.model}, hidden {trainer.hidden}, {trainer.blocks} block(s), max_len {trainer.max_len}, "
        f"batch {trainer.batch_size}, lr {trainer.lr:g}; evaluation: {trainer.negatives_protocol} ranking, "
        f"early stopping on valid {cfg.early_stopping_metric}",
        f"- seeds: {list(cfg.seeds)}; config hash `{config_hash}`", "",
    ]


def _fairness_lines(plan: ExperimentPlan, cfg) -> list[str]:
    trainer = cfg.trainer_config()
    steps = plan.steps_per_epoch
    arms = ["| variant | chains | rows (real + augmented) |", "|---|---|---:|"]
    arms += [f"| {a.name} | {a.requested} | {plan.rows(a):,} |" for a in plan.arms]
    return [
        "## Fair comparison", "",
        f"Every variant trains with the same step budget: an epoch is {steps} optimizer steps "
        f"(the baseline's natural epoch unless `train.steps_per_epoch` is set), at most {trainer.epochs} epochs "
        f"= {trainer.epochs * steps:,} steps, validated every {trainer.eval_every} epoch(s), "
        f"stopped after {trainer.patience} validation(s) = "
        f"{trainer.patience * trainer.eval_every * steps:,} steps without improvement. An augmented "
        "variant therefore gets no more updates than the baseline; the gain, if any, is from the data.", "",
        *arms, "",
    ]


def baseline_warning(records: Sequence[RunRecord]) -> str | None:
    """A red warning when a baseline run hit the epoch cap (``cap_hit``: patience never stopped it),
    since its with-vs-without figures then compare against an unconverged baseline; else None."""
    baseline = [r for r in records if r.variant == BASELINE]
    capped = [r for r in baseline if r.result.get("cap_hit", not r.result.get("stopped_early", False))]
    if not capped:
        return None
    return (f'<span style="color:red">**Baseline not converged: {len(capped)} of {len(baseline)} baseline run(s) hit '
            "the epoch cap (`train.epochs`) before patience stopped them. The comparison below holds at equal "
            "steps only, not against a converged baseline: raise `train.epochs`.**</span>")


def _results_lines(records: Sequence[RunRecord], metrics: Sequence[str], plan: ExperimentPlan) -> list[str]:
    chains = {a.name: a.requested for a in plan.arms}
    warning = baseline_warning(records)
    return ["## Results (test split)", "", *([warning, ""] if warning else []),
            "```", comparison_table(records, metrics, chains=chains), "```", "",
            *(f"- {line}" for line in verdict_lines(records, metrics[0])), "",
            "![test metrics](metrics.png)", ""]


def _group_lines(records: Sequence[RunRecord], groups: Sequence[str], plan: ExperimentPlan, cfg) -> list[str]:
    if not groups:
        return []
    trainer = cfg.trainer_config()
    chains = {a.name: a.requested for a in plan.arms}
    stop = cfg.early_stopping_metric
    tables = [f"### Group `{g}`\n\n```\n{comparison_table(records, (stop,), group=g, chains=chains)}\n```\n"
              for g in groups]
    return ["## By group", "",
            f"short/long: history length ≤ / > {trainer.short_history_max}; cold: users with at most "
            f"{trainer.cold_history_max} history items; head/tail: target among the "
            f"{trainer.head_item_share:.0%} most popular items or not.", "",
            *tables, "![groups](groups.png)", ""]


def _runs_lines(records: Sequence[RunRecord], stop: str) -> list[str]:
    lines = ["## Training runs", "",
             f"| variant | seed | training rows | epochs run | best epoch | cap hit | steps | valid {stop} | "
             f"test {stop} | seconds |", "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in records:
        res = r.result
        valid = (res.get("valid") or {}).get(stop, math.nan)
        lines.append(f"| {r.variant} | {r.seed} | {res.get('train_sequences', 0):,} | {res['epochs_run']} | "
                     f"{res['best_epoch'] + 1} | {'yes' if res.get('cap_hit') else 'no'} | {r.steps:,} | {valid:.4f} | "
                     f"{res['test'][stop]:.4f} | "
                     f"{res.get('seconds_total', 0.0):.1f} |")
    return [*lines, "", *_convergence_note(records), "![validation curves](validation.png)", ""]


def _convergence_note(records: Sequence[RunRecord]) -> list[str]:
    unfinished = [r for r in records if not r.result.get("stopped_early")
                  and r.result.get("best_epoch", -1) + 1 == r.result.get("epochs_run")]
    if not unfinished:
        return []
    return [f"Note: {len(unfinished)} of {len(records)} runs were still improving when the step budget ended. "
            "The comparison holds at equal training steps; to compare against a converged baseline, raise "
            "`train.epochs` (patience then decides when each run stops).", ""]
