"""Stage orchestration: generate (when no input is given) → ingest → clean → fit → augment → train,
one run id for all.

Stages append themselves to ``STAGES`` in the same way: a name and a
``run_<stage>(ctx) -> StageResult`` function. Stage modules are imported lazily so that a stage's
heavy dependencies load only when it runs.
"""

from __future__ import annotations

import importlib
import math
from typing import Callable

from recaug_spark.config import STAGES, Config
from recaug_spark.runs import STARTS, RunContext, StageResult, check_run_config, stage_records, start_records, timed


def stage_function(stage: str) -> Callable[[RunContext], StageResult]:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known stages: {list(STAGES)}")
    module = importlib.import_module(f"recaug_spark.stages.{stage}")
    return getattr(module, f"run_{stage}")


def planned_stages(cfg: Config, until: str | None = None) -> list[str]:
    """The stages a run executes, in order: generate only when the input is the built-in shop, and
    nothing after ingest for a catalog alone (the later stages need a clickstream)."""
    last = STAGES.index("ingest" if cfg.ingest.catalog_only else until or cfg.pipeline.until)
    skipped = {"generate"} if cfg.ingest.format != "generated" else set()
    if not (cfg.fit.enabled and cfg.fit.generators):
        skipped.add("fit")
    if not cfg.augment.enabled:
        skipped.add("augment")
    if not (cfg.train.enabled and cfg.augment.enabled):  # train compares with augmented_sequences; `recaug train` still can
        skipped.add("train")
    return [s for s in STAGES[: last + 1] if s not in skipped]


def run_stages(ctx: RunContext, stages: list[str], echo: Callable[[str], None] = print) -> list[StageResult]:
    """Run ``stages`` in order. Refuses a run id that already ran under another config
    (:func:`check_run_config`: its finished stages, or the starts of crashed ones); stops, writing
    nothing more, when a concurrent run with the same run id committed a stage first (the other run
    finishes the job: this is not a failure)."""
    records = stage_records(ctx.warehouse.uri("runs")) + start_records(ctx.warehouse.uri(STARTS))
    check_run_config(records, ctx.run_id, ctx.cfg.hash)
    results = []
    for stage in stages:
        echo(f"[{stage}] running (run {ctx.run_id})")
        result = timed(stage_function(stage), ctx)
        echo(result.progress_line())
        results.append(result)
        if result.concurrent:
            echo(f"run {ctx.run_id}: already committed by a concurrent run with the same run id; stopping here")
            break
    return results


def summary(ctx: RunContext, results: list[StageResult]) -> str:
    """The final report: tables and versions, quarantined and removed rows by reason, rows per operator."""
    lines = [f"run {ctx.run_id}  config {ctx.cfg.hash}  warehouse {ctx.warehouse.root}  backend {ctx.warehouse.backend}"]
    versions: dict[str, int] = {}
    for result in results:
        versions |= result.tables
    lines.append("tables (Delta version):")
    lines += [f"  {name:<18} v{version}   {ctx.warehouse.uri(name)}" for name, version in sorted(versions.items())
              if ":" not in name]  # "read:<table>" entries: versions a stage read, kept in the runs table
    for result in results:
        by_reason = {k: v for k, v in result.counts.items() if k.startswith(("quarantine.", "removed.", "rows.", "items.rows."))}
        if by_reason:
            lines.append(f"{result.stage}: rows in {result.rows_in:,}, out {result.rows_out:,}, by reason:")
            lines += [f"  {key:<34} {value:>10,}" for key, value in sorted(by_reason.items())]
        if result.stage == "ingest":
            from recaug_spark.stages.ingest import reconciliation_lines

            lines += reconciliation_lines(result.counts)
        if "augmentation_factor_x1000" in result.counts:
            lines.append(f"  augmentation factor (all rows / real rows) {result.counts['augmentation_factor_x1000'] / 1000:.2f}")
        if result.counts.get("users_capped"):
            lines.append(f"  {result.counts['users_capped']:,} users have more events than clean.max_sequence_length "
                         f"({ctx.cfg.clean.max_sequence_length}): their {result.counts['events_beyond_cap']:,} oldest "
                         "stay in `events` but not in their sequences (held-out targets are the last events either way)")
        if result.stage == "fit":
            lines += _fit_summary(ctx, result)
        if result.stage == "train" and not result.skipped:
            lines += _train_summary(ctx, result)
    return "\n".join(lines)


def _fit_summary(ctx: RunContext, result: StageResult) -> list[str]:
    """One line per generator: its artifact version and headline fidelity figures."""
    from recaug_spark.config import GENERATORS

    lines = [f"fit: generator models in {ctx.models_dir}"]
    headline = ("hr@10", "ndcg@10", "identical_share", "vae.price_w1", "copula.price_w1", "vae.categorical_tvd",
                "added_in_category", "thin_items")
    for name in GENERATORS:
        version = result.counts.get(f"artifact.{name}.version")
        if version is None:
            continue
        figures = [f"{key} {result.counts[f'fidelity.{name}.{key}_x10000'] / 10_000:.4g}" for key in headline
                   if f"fidelity.{name}.{key}_x10000" in result.counts]
        lines.append(f"  {name}@v{version:<4} " + ", ".join(figures))
    return lines


def _train_summary(ctx: RunContext, result: StageResult) -> list[str]:
    """With vs without augmentation, from the train stage's counts (means and CI half widths × 10,000)."""
    from recaug_spark.stages.train import count_key, report_dir

    counts = result.counts
    variants = [k.removeprefix("metric.").removesuffix(".ndcg10_x10000") for k in counts
                if k.startswith("metric.") and k.endswith(".ndcg10_x10000")]
    pinned = result.tables.get("read:augmented_sequences")
    lines = [f"train: augmented_sequences v{pinned} pinned; test NDCG@10 / HR@10, mean ± 95% CI over "
             f"{counts.get('seeds', 0)} seed(s), same step budget for every variant "
             f"({counts.get('steps_per_epoch', 0)} steps per epoch):"]
    base = counts.get(count_key("baseline", "ndcg@10"))
    for variant in variants:
        cells = []
        for metric in ("ndcg@10", "hr@10"):
            mean = counts.get(count_key(variant, metric), 0) / 10_000
            ci = counts.get(count_key(variant, metric, "_ci"))
            cells.append(f"{mean:.4f} ± {ci / 10_000:.4f}" if ci is not None else f"{mean:.4f}")
        lines.append(f"  {variant:<20} {cells[0]}   {cells[1]}   steps {counts.get(f'steps.{variant}', 0):,}")
    lines += [f"  {_verdict_from_counts(counts, variant, base)}" for variant in variants
              if variant != "baseline" and base]
    lines.append(f"  report: {report_dir(ctx) / 'report.md'}")
    return lines


def _verdict_from_counts(counts: dict, variant: str, base: int) -> str:
    """``experiment.verdict`` on test NDCG@10, rebuilt from the train stage's integer counts."""
    from recaug_spark.stages.train import count_key
    from recaug_spark.train.experiment import Comparison, verdict

    def figure(suffix: str) -> float:
        value = counts.get(count_key(variant, "ndcg@10", suffix))
        return math.nan if value is None else value / 10_000

    mean = figure("")
    comparison = Comparison(variant, "ndcg@10", mean, figure("_ci"), int(counts.get("seeds", 0)),
                            (mean - base / 10_000) / (base / 10_000), figure("_rel_low"), figure("_rel_high"))
    return verdict(comparison)
