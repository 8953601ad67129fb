"""The train stage: the configured experiment (``train`` section) on the warehouse's tables.

Pins ``augmented_sequences`` (and ``sequence_targets``, ``items``) once, trains the real-only
baseline and every variant for each seed with the same step budget (see
``recaug_spark.train.experiment`` for the fairness rule), appends the metrics to the ``metrics``
Delta table in one idempotent commit per run id, and writes a report folder (``report.md``, PNG
plots, the data-quality section) under ``<run.warehouse>/reports/<run id>`` unless
``train.report_dir`` names another folder.

A re-run with the same run id finds the ``metrics`` commit already made and trains nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from recaug_spark.paths import is_remote, local_path
from recaug_spark.runs import RunContext, StageResult

METRIC_COUNTS = ("ndcg@10", "hr@10")  # reported in StageResult.counts (× 10,000) for the summary
PINNED = "read:augmented_sequences"  # in the runs table: the augmented_sequences version the experiment pinned


def report_dir(ctx: RunContext) -> Path:
    """Where this run's report goes: ``train.report_dir``, else ``<run.warehouse>/reports/<run id>``."""
    configured = ctx.cfg.train.report_dir
    if configured:
        return Path(configured).expanduser().resolve() / ctx.run_id
    root = ctx.warehouse.root
    if is_remote(root):
        return Path("reports").resolve() / ctx.run_id  # a remote warehouse: the report stays local
    return Path(local_path(root)).expanduser().resolve() / "reports" / ctx.run_id


def count_key(variant: str, metric: str, suffix: str = "") -> str:
    """``metric.<variant>.ndcg10_x10000`` (mean) or ``..._ci_x10000`` (CI half width)."""
    return f"metric.{variant}.{metric.replace('@', '')}{suffix}_x10000"


def run_train(ctx: RunContext) -> StageResult:
    from recaug_spark.train.experiment import (
        compare,
        comparison_table,
        metric_rows,
        metrics_schema,
        plan_experiment,
        run_experiment,
        values_by_variant,
        verdict_lines,
    )
    from recaug_spark.train.quality import ALL_AUGMENTED
    from recaug_spark.train.report import write_report

    cfg = ctx.cfg.train
    if ctx.warehouse.committed("metrics", ctx.txn("train")):
        return StageResult("train", rows_in=0, rows_out=0,
                           tables={"metrics": ctx.warehouse.committed_version("metrics", ctx.txn("train"))},
                           skipped=True)

    plan = plan_experiment(cfg, ctx.warehouse.uri("augmented_sequences"), ctx.warehouse.uri("sequence_targets"),
                           ctx.warehouse.uri("items"), version=ctx.input_version("augmented_sequences"),
                           targets_version=ctx.input_version("sequence_targets"),
                           items_version=ctx.input_version("items"))  # the last complete stages' versions
    quality = None
    if cfg.quality:
        from recaug_spark.train.quality import quality_report

        catalog = ctx.warehouse.read("items", version=plan.items_version).count() if plan.items_uri else None
        quality = quality_report(ctx.warehouse.read("augmented_sequences", version=plan.version),
                                 catalog_size=catalog, head_share=cfg.head_item_share)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    records = run_experiment(plan, cfg, spark=ctx.spark, log=log)
    rows = metric_rows(records, run_id=ctx.run_id, experiment=cfg.experiment, table_version=plan.version,
                       config_hash=ctx.cfg.hash)
    df = ctx.spark.createDataFrame(rows, metrics_schema()).coalesce(1)
    written = ctx.warehouse.write("metrics", df, mode="append", txn=ctx.txn("train"))
    report = write_report(report_dir(ctx), plan, cfg, records, run_id=ctx.run_id, experiment=cfg.experiment,
                          config_hash=ctx.cfg.hash, quality=quality)
    log(comparison_table(records, chains={a.name: a.requested for a in plan.arms}))
    for line in verdict_lines(records, cfg.early_stopping_metric):
        log(f"[train] {line}")
    log(f"[train] report: {report}")

    counts: dict[str, int] = {"seeds": len(cfg.seeds), "variants": len(plan.arms) - 1,
                              "steps_per_epoch": plan.steps_per_epoch}
    for metric in METRIC_COUNTS:
        for c in compare(values_by_variant(records, metric), metric):
            counts[count_key(c.variant, metric)] = int(round(c.mean * 10_000))
            if c.half_width == c.half_width:  # not NaN (one seed)
                counts[count_key(c.variant, metric, "_ci")] = int(round(c.half_width * 10_000))
            if c.relative_low == c.relative_low:  # the paired interval of the relative change (2+ seeds)
                counts[count_key(c.variant, metric, "_rel_low")] = int(round(c.relative_low * 10_000))
                counts[count_key(c.variant, metric, "_rel_high")] = int(round(c.relative_high * 10_000))
    for arm in plan.arms:
        steps = [r.steps for r in records if r.variant == arm.name]
        counts[f"steps.{arm.name}"] = int(round(sum(steps) / len(steps))) if steps else 0
    if quality is not None:
        for group, figures in quality["groups"].items():
            if group not in ("real", ALL_AUGMENTED) and figures.get("item_js") == figures.get("item_js"):
                counts[f"quality.{group}.item_js_x10000"] = int(round(figures["item_js"] * 10_000))
    return StageResult("train", rows_in=plan.rows(plan.arms[0]), rows_out=len(rows), counts=counts,
                       tables={"metrics": written.version, PINNED: plan.version})
