"""``recaug tune`` end to end: search → full re-runs → best policy layer → history → report, and the
test confirmation.

* :func:`run_tune` — everything on the validation split: ``study.search`` (resumable, pruned,
  parallel), ``study.rerun_in_full``, the trial rows (``history.trial_records``), the best policy
  written as a config layer (``tune.output``, default ``conf/tuned/<name>.yaml``), ``tune_trials``
  through the ``Warehouse`` when one is given, and ``report.md``.
* :func:`confirm` — the one step that reads the test split: the best policy's rows are written by
  the augment stage's Spark path (``augment.engine.augment_sequences``) to
  ``tuned_<name>_augmented_sequences``, and ``train.experiment.run_experiment`` trains the real-only
  baseline and the tuned variant on every ``tune.confirm_seeds`` seed (same seed, same initial
  weights), saving the runs as ``confirm.json`` for the report's paired-by-seed table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from recaug_spark.tune import history as H
from recaug_spark.tune.evaluate import TuneError
from recaug_spark.tune.report import CONFIRM_FILE, render_report
from recaug_spark.tune.space import policy_from_params, policy_layer
from recaug_spark.tune.study import rerun_in_full, search, study_dir, study_lock


@dataclass(frozen=True)
class TuneOutcome:
    records: list[dict]
    best: dict
    correlation: dict
    layer_path: Path
    report_path: Path


def layer_path(cfg) -> Path:
    return Path(cfg.tune.output or f"conf/tuned/{cfg.tune.name}.yaml")


def write_layer(path: Path, best: dict, space, name: str, baseline: dict | None, verdict: str | None = None) -> Path:
    """The best policy as a YAML config layer, with a header saying where it comes from and
    (``verdict``, :func:`history.baseline_verdict`) whether it beats the real-only baseline."""
    policy = policy_from_params(json.loads(best["params"]), space)
    score = best["full_score"] if best["full_score"] is not None else best["proxy_score"]
    kind = "full" if best["full_score"] is not None else "proxy"
    header = [
        f"# Best augmentation policy of study {name!r} (recaug tune), trial {best['trial']}: {policy.describe()}",
        f"# validation score {score:.4f} ({kind} budget)"
        + (f"; real-only baseline {baseline['full_score']:.4f} (full budget)" if baseline else ""),
        *([f"# Verdict: {verdict}."] if verdict else []),
        "# Chosen on the validation split only; `recaug tune <config> --confirm` tests it once, paired by seed.",
        "# Use: recaug experiment <this file> (after `recaug augment --config <this file>`).",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(policy_layer(policy, name), sort_keys=False))
    return path


def run_tune(cfg, evaluate=None, *, factory=None, warehouse=None, log: Callable[[str], None] = print) -> TuneOutcome:
    """Search, re-run the best in full, write the layer, the history (``warehouse``: a ``Warehouse``)
    and the report. ``evaluate`` / ``factory``: see ``study.search``."""
    folder = study_dir(cfg)
    with study_lock(folder):
        study = search(cfg, evaluate, factory=factory, log=log)
        full = rerun_in_full(study, cfg, evaluate, factory=factory, log=log)
    records = H.trial_records(study, full, study_name=cfg.tune.name, config_hash=cfg.hash)
    best = H.best_record(records)
    baseline = next((r for r in records if r["trial"] < 0), None)
    verdict = H.baseline_verdict(records)
    path = write_layer(layer_path(cfg), best, cfg.tune.space, cfg.tune.name, baseline, verdict)
    if warehouse is not None:
        H.write_history(warehouse, records, cfg.tune.name)
    report = render_report(
        folder, records, study=cfg.tune.name, metric=cfg.train.early_stopping_metric, layer_path=str(path)
    )
    correlation = H.rank_correlation(records)
    log(f"[tune] best policy: trial {best['trial']}: {best['policy']} → {path}" + (f"; {verdict}" if verdict else ""))
    log(f"[tune] proxy-to-full Spearman rho {correlation['rho']:.2f} over {correlation['n']} policies; report {report}")
    return TuneOutcome(records, best, correlation, path, report)


def report_only(cfg, warehouse_root: str) -> Path:
    """``recaug tune --report``: the report from ``tune_trials`` and the saved confirmation, no training."""
    from recaug_spark.delta import resolve_uri

    records = H.read_history(resolve_uri(H.TABLE, warehouse_root), cfg.tune.name)
    if not records:
        raise TuneError(f"no rows of study {cfg.tune.name!r} in {H.TABLE}: run `recaug tune` first")
    return render_report(
        study_dir(cfg),
        records,
        study=cfg.tune.name,
        metric=cfg.train.early_stopping_metric,
        layer_path=str(layer_path(cfg)),
    )


def confirm(cfg, ctx, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Test the written policy once, against the real-only baseline, on ``tune.confirm_seeds``.

    ``cfg``: the tune config; ``ctx``: a ``runs.RunContext`` (Spark session, warehouse). Returns the
    saved confirmation (``confirm.json``)."""
    from recaug_spark.augment.engine import augment_sequences
    from recaug_spark.train.experiment import comparison_table, plan_experiment, run_experiment

    path = layer_path(cfg)
    if not path.exists():
        raise TuneError(f"no tuned policy at {path}: run `recaug tune` first")
    layer = yaml.safe_load(path.read_text()) or {}
    tuned = cfg.with_overrides(
        **{
            "augment.branches": layer["augment"]["branches"],
            "train.variants": layer["train"]["variants"],
            "train.seeds": list(cfg.tune.confirm_seeds),
        }
    )
    table = f"tuned_{cfg.tune.name}_augmented_sequences"
    sequences = ctx.warehouse.read("sequences")
    items = ctx.warehouse.read("items") if ctx.warehouse.exists("items") else None
    rows = augment_sequences(
        sequences, tuned.augment, tuned.run.seed, ctx.run_id, tuned.hash, items=items, models_dir=ctx.models_dir
    )
    written = ctx.warehouse.write(table, rows, mode="overwrite", partition_by=["operator_chain"])
    plan = plan_experiment(
        tuned.train,
        written.uri,
        ctx.warehouse.uri("sequence_targets"),
        ctx.warehouse.uri("items"),
        version=written.version,
    )
    records = run_experiment(plan, tuned.train, log=log)
    chains = {arm.name: arm.requested for arm in plan.arms}
    saved = {
        "policy": (layer["train"]["variants"] or [{"name": "none"}])[0],
        "layer": str(path),
        "table": written.uri,
        "version": written.version,
        "chains": chains,
        "runs": [
            {"variant": r.variant, "seed": r.seed, "result": {k: v for k, v in r.result.items() if k != "history"}}
            for r in records
        ],
    }
    (study_dir(cfg) / CONFIRM_FILE).write_text(json.dumps(saved, indent=1, default=str))
    log(comparison_table(records, chains=chains))
    return saved


def make_evaluator(cfg, models_dir: str | None = None):
    """A ``TrialEvaluator`` on the warehouse's latest tables (what every parallel worker builds: no
    Spark there, so operators fitted with Spark need ``tune.budget.n_jobs`` 1)."""
    from recaug_spark.tune.evaluate import TrialEvaluator, pin_inputs

    return TrialEvaluator(cfg, pin_inputs(cfg.run.warehouse), models_dir=models_dir)


def tune_command(cfg, *, report: bool = False, confirm_test: bool = False, echo: Callable[[str], None] = print) -> None:
    """What ``recaug tune`` runs: the report only (no Spark, no training), the test confirmation, or
    the search (Spark for the history table and for operators fitted on a DataFrame)."""
    import functools

    from recaug_spark.runs import RunContext
    from recaug_spark.session import get_session
    from recaug_spark.tune.evaluate import TrialEvaluator, needs_spark, pin_inputs
    from recaug_spark.tune.space import Policy

    if report:
        echo(f"[tune] report: {report_only(cfg, cfg.run.warehouse)}")
        return
    spark = get_session(cfg.spark)
    try:
        ctx = RunContext.create(spark, cfg)
        if confirm_test:
            confirm(cfg, ctx, log=echo)
            echo(f"[tune] report: {report_only(cfg, cfg.run.warehouse)}")
            return
        fitted = needs_spark(Policy(tuple(_all_branches(cfg.tune.space)), None))
        if fitted and cfg.tune.budget.n_jobs > 1:
            raise TuneError(
                f"{fitted} fit their state with Spark, which parallel workers do not have: "
                "set tune.budget.n_jobs to 1 or leave them out of tune.space.chains"
            )
        evaluator = TrialEvaluator(
            cfg,
            pin_inputs(cfg.run.warehouse),
            models_dir=ctx.models_dir,
            fit_frame=lambda: ctx.warehouse.read("sequences"),
        )
        run_tune(
            cfg,
            evaluator,
            factory=functools.partial(make_evaluator, models_dir=ctx.models_dir),
            warehouse=ctx.warehouse,
            log=echo,
        )
    finally:
        spark.stop()


def _all_branches(space):
    """Every candidate chain as a branch with its first possible values (for ``needs_spark``)."""
    from recaug_spark.config import BranchConfig

    for candidate in space.chains:
        targeting = {k: (None if k != "copies" else 1) for k in ("copies", "max_length")}
        spark_targeting = {
            k: 1 if getattr(candidate, k) is not None else None for k in ("cold_start_days", "long_tail_share")
        }
        yield BranchConfig(chain=candidate.chain, **targeting, **spark_targeting)
