"""Reproduce the published SASRec baseline on Amazon Sports 5-core, then test augmentation variants.

A benchmark, not a CI test: a full run trains ≥ 3 seeds × (1 + variants) models on 296k
interactions (about 30 minutes per model on one CPU thread with the BCE loss; docs/benchmarks.md).

1. **Prepare** (Spark, ``local[2]``): ingest ``Sports_and_Outdoors.txt`` with the ``amazon-5core``
   adapter, clean, and augment with one branch per variant, into a warehouse. The preprocessing is
   then checked against the source file, as S3-Rec / ICLRec do it: the file is already 5-core
   (``clean.kcore`` stays 0), every user and every event must survive cleaning, and the split must
   be leave-one-out — per user, ``sequences`` = the line's items without the last two,
   validation target = the second-to-last, test target = the last; the ``items`` table (the
   candidates of full ranking) must hold every item of the file. One recaug default is changed:
   ``clean.max_sequence_length`` (200 most recent events) is raised to the longest line, since
   the published protocol keeps whole histories (they are what full ranking excludes);
   ``--clean-defaults`` keeps it, and the check then reports the capped users.
2. **Train** with ``recaug_spark.train.experiment`` (``plan_experiment`` + ``run_experiment``): the
   real-only baseline and each variant (real rows + that chain's augmented rows), same seeds, same
   vocabulary and evaluation users, SASRec with the reference hyper-parameters (hidden 64, 2 blocks,
   2 heads, max_len 50, dropout 0.5, Adam lr 1e-3, batch 256, one sampled negative per position,
   BCE), full ranking over all items with the user's history excluded, validation NDCG@10 every
   epoch with ``--patience``. The fairness rule: an epoch is the baseline's natural number of
   optimizer steps for every arm (patience and the ``--max-epochs`` budget are therefore counted in
   steps), so a variant never gets more updates than the baseline, and the baseline stops when its
   validation NDCG@10 has converged.
3. **Report**: the baseline against the published figures (S3-Rec, CIKM 2020: HR@10 0.0350,
   NDCG@10 0.0192; relative gap, within ±10%?), and each variant against the baseline: mean ± 95%
   CI over seeds and the relative change with its 95% CI paired by seed (same seed = same initial
   weights); ``--json PATH`` saves everything (per-run results and histories included).

Variants: ``--variant "crop>mask"`` (repeatable; an operator chain with default parameters,
``--copies`` augmented copies per user), and/or ``--experiment conf/experiments/ablation.yaml``
(a config layer: its ``train.variants`` and ``augment.branches``, with operator parameters). The
benchmark's own settings (model, budget, seeds, data) override the layer's.

Usage:
  python benchmarks/reproduce_sports.py --quick                       # smoke check: 1 seed, 2 epochs
  python benchmarks/reproduce_sports.py --seeds 1,2,3 --variant crop --variant "crop>mask" \\
      --warehouse /tmp/sports-wh --json sports.json                   # the real thing: hours on 2 cores
  python benchmarks/reproduce_sports.py --warehouse /tmp/sports-wh --skip-prepare ...   # reuse tables
  python benchmarks/reproduce_sports.py ... --json b.json --resume a.runs.jsonl   # keep runs study a finished
  python benchmarks/reproduce_sports.py ... --json v.json --arms prehistory        # one core: the variant only,
  python benchmarks/reproduce_sports.py --report-from base.runs.jsonl v.runs.jsonl # another: the baseline; merge
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recaug_spark.config import load_config  # noqa: E402
from recaug_spark.train import metrics as M  # noqa: E402

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "amazon-sports-5core" / "Sports_and_Outdoors.txt"
PUBLISHED = {  # full ranking on this exact file
    "SASRec (S3-Rec, CIKM 2020)": {"hr@10": 0.0350, "ndcg@10": 0.0192},
    "ICLRec (WWW 2022)": {"hr@10": 0.0437, "ndcg@10": 0.0238},
}
BASELINE_SOURCE = "SASRec (S3-Rec, CIKM 2020)"
DESIGN_REFERENCE = {"hr@10": 0.0329, "ndcg@10": 0.0182, "patience": 10, "best_epoch": 58}  # the project's first 1-seed reproduction
TOLERANCE = 0.10
REFERENCE = {  # SASRec as in the S3-Rec / ICLRec baselines
    "model": "sasrec", "hidden": 64, "blocks": 2, "heads": 2, "max_len": 50, "dropout": 0.5, "attention_dropout": 0.5,
    "lr": 1e-3, "weight_decay": 0.0, "batch_size": 256, "eval_every": 1, "negatives_protocol": "full",
    "exclude_history": True, "early_stopping_metric": "ndcg@10", "ks": [1, 5, 10, 20], "steps_per_epoch": None,
}
METRICS = ("ndcg@10", "hr@10")
QUICK = {"seeds": "1", "max_epochs": 2, "patience": 2}
FULL = {"seeds": "1,2,3", "max_epochs": 200, "patience": 10}


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def variant_name(chain: str) -> str:
    """``crop > mask`` → ``crop-mask`` (a name VariantConfig accepts)."""
    return re.sub(r"[^A-Za-z0-9_-]", "", re.sub(r"\s*>\s*", "-", chain.strip())) or "variant"


def longest_line(path: Path) -> int:
    with path.open() as handle:
        return max((len(line.split()) - 1 for line in handle if line.strip()), default=0)


def build_config(args, warehouse: Path):
    """The pipeline + experiment config: the --experiment layer, the data, the reference model."""
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    overrides = [
        f"run.warehouse={warehouse}", f"run.models={warehouse}-models",
        f"spark.master={args.master}", f"spark.driver_memory={args.driver_memory}",
        "ingest.format=amazon-5core", f"ingest.events={args.data}", "ingest.pseudonymize.ids_already_anonymous=true",
        "augment.items.enabled=false",
        *(f"train.{key}={json.dumps(value)}" for key, value in REFERENCE.items()),
        f"train.seeds={json.dumps(seeds)}", f"train.epochs={args.max_epochs}", f"train.patience={args.patience}",
        f"train.device={args.device}", f"train.num_threads={args.threads}", "train.num_processes=1",
        "train.quality=false", "train.experiment=reproduce_sports",
    ]
    if not args.clean_defaults:
        overrides.append(f"clean.max_sequence_length={max(200, longest_line(Path(args.data)))}")
    overrides.append(f"train.parallel_runs={args.parallel}")
    cfg = load_config([args.experiment] if args.experiment else [], [*overrides, *args.set])
    if args.experiment:
        branches = [b.model_dump(mode="python") for b in cfg.augment.branches]
        variants = [v.model_dump(mode="python") for v in cfg.train.variants]
    else:  # without a layer only the --variant chains are trained (not the base config's default branches)
        branches, variants = [], []
    for chain in args.variant:
        branches.append({"chain": chain, "copies": args.copies})
        variants.append({"name": variant_name(chain), "chains": [chain]})
    cfg = cfg.with_overrides(**{"augment.branches": branches, "train.variants": variants})
    return cfg.with_overrides(**{"fit.generators": needed_generators(cfg)})


def needed_generators(cfg) -> list[str]:
    """The generator models the configured branches use (``recaug fit`` trains only these)."""
    from recaug_spark.augment.generator_ops import GeneratorAugmenter
    from recaug_spark.augment.registry import build

    names = []
    for branch in cfg.augment.branches:
        for name in branch.operators:
            op = build(name, branch.params.get(name))
            if isinstance(op, GeneratorAugmenter) and op.params.model not in names:
                names.append(op.params.model)
    return names


# ---------------------------------------------------------------- prepare and check

def fitted_already(cfg, warehouse: Path) -> bool:
    """With --reaugment: every needed generator's latest artifact has this config and was trained on
    the warehouse's current ``sequences`` version (so a new operator setting re-uses the models)."""
    from deltalake import DeltaTable

    from recaug_spark.generators.artifacts import ArtifactError, latest, manifest

    version = DeltaTable(str(warehouse / "sequences")).version()
    for name in cfg.fit.generators:
        try:
            written = manifest(latest(cfg.run.models, name))
        except ArtifactError:
            return False
        if (written.get("config") != getattr(cfg.fit, name).model_dump(mode="json")
                or written.get("trained_on", {}).get("sequences") != version):
            return False
    return True


def prepare(cfg, stages: list[str]) -> dict[str, float]:
    from recaug_spark.pipeline import run_stages
    from recaug_spark.runs import RunContext
    from recaug_spark.session import get_session

    spark = get_session(cfg.spark)
    try:
        ctx = RunContext.create(spark, cfg)
        results = run_stages(ctx, stages, echo=log)
        return {r.stage: r.duration_s for r in results}
    finally:
        spark.stop()


def check_preprocessing(data: Path, warehouse: Path) -> dict:
    """Compare the warehouse's sequences / targets / items with the source file (leave-one-out)."""
    from recaug_spark.train.data import iter_batches, pinned_files, read_targets

    source: dict[str, list[str]] = {}
    with data.open() as handle:
        for line in handle:
            tokens = line.split()
            if tokens:
                source[tokens[0]] = tokens[1:]
    train: dict[str, list[str]] = {}
    for batch in iter_batches(pinned_files(str(warehouse / "sequences")), ["user_id", "item_ids"]):
        train.update(zip(batch.column("user_id").to_pylist(), batch.column("item_ids").to_pylist()))
    targets = read_targets(str(warehouse / "sequence_targets"))
    held = {(u, s): i for u, s, i in zip(targets.column("user_id").to_pylist(), targets.column("split").to_pylist(),
                                         targets.column("item_id").to_pylist())}
    items = set()
    for batch in iter_batches(pinned_files(str(warehouse / "items")), ["item_id"]):
        items.update(batch.column("item_id").to_pylist())
    source_items = {i for seq in source.values() for i in seq}
    wrong_split, capped = [], []
    for user, seq in source.items():
        got = train.get(user)
        if held.get((user, "valid")) != seq[-2] or held.get((user, "test")) != seq[-1] or got is None:
            wrong_split.append(user)
        elif got != seq[:-2]:
            (capped if got == seq[:-2][-len(got):] else wrong_split).append(user)
    result = {
        "users_file": len(source), "users_table": len(train),
        "items_file": len(source_items), "items_table": len(items),
        "interactions_file": sum(len(s) for s in source.values()),
        "interactions_table": sum(len(s) for s in train.values()) + len(held),
        "extra_users": len(set(train) - set(source)), "wrong_split_users": len(wrong_split),
        "capped_users": len(capped), "missing_items": len(source_items - items), "extra_items": len(items - source_items),
    }
    result["ok"] = (result["users_table"] == result["users_file"] and not result["extra_users"] and not wrong_split
                    and not capped and not result["missing_items"] and not result["extra_items"])
    return result


def format_check(check: dict) -> str:
    verdict = "matches" if check["ok"] else "DOES NOT match"
    lines = [f"preprocessing {verdict} the published one (leave-one-out on the 5-core file):",
             f"  users {check['users_table']:,} of {check['users_file']:,}; items {check['items_table']:,} of "
             f"{check['items_file']:,}; interactions {check['interactions_table']:,} of {check['interactions_file']:,}"]
    problems = {k: check[k] for k in ("extra_users", "wrong_split_users", "capped_users", "missing_items", "extra_items")
                if check[k]}
    if problems:
        lines.append("  problems: " + ", ".join(f"{k} {v:,}" for k, v in problems.items())
                     + (" (capped: clean.max_sequence_length cut the history)" if check["capped_users"] else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------- report

def baseline_summary(records) -> dict:
    runs = [r for r in records if r.variant == "baseline"]
    out = {}
    for metric in METRICS:
        stats = M.mean_ci([r.result["test"][metric] for r in runs])
        published = PUBLISHED[BASELINE_SOURCE][metric]
        gap = (stats["mean"] - published) / published
        out[metric] = {**stats, "published": published, "relative_gap": gap, "within_tolerance": abs(gap) <= TOLERANCE}
    out["converged_runs"] = sum(bool(r.result.get("stopped_early")) for r in runs)
    out["runs"] = len(runs)
    return out


def format_baseline(summary: dict) -> str:
    lines = [f"baseline (real rows only) vs published {BASELINE_SOURCE}, test split, full ranking; mean ± 95% CI over "
             f"{summary['runs']} seed(s)",
             f"{'metric':<10}{'ours':>22}{'published':>11}{'gap':>9}  within ±{TOLERANCE:.0%}"]
    for metric in METRICS:
        s = summary[metric]
        ci = "n/a" if math.isnan(s["half_width"]) else f"{s['half_width']:.4f}"
        lines.append(f"{metric:<10}{s['mean']:>13.4f} ± {ci:<6}{s['published']:>11.4f}{s['relative_gap']:>+9.1%}  "
                     f"{'yes' if s['within_tolerance'] else 'NO'}")
    lines.append(f"(first reproduction, 1 seed, patience {DESIGN_REFERENCE['patience']}: HR@10 {DESIGN_REFERENCE['hr@10']} / "
                 f"NDCG@10 {DESIGN_REFERENCE['ndcg@10']} at epoch {DESIGN_REFERENCE['best_epoch']})")
    if summary["converged_runs"] < summary["runs"]:
        lines.append(f"Note: {summary['runs'] - summary['converged_runs']} of {summary['runs']} baseline run(s) hit "
                     "--max-epochs before patience stopped them: not converged, the comparison holds at equal steps only.")
    return "\n".join(lines)


def format_runs(records) -> str:
    header = (f"{'variant':<16}{'seed':>5}{'rows':>10}{'epochs':>8}{'best':>6}{'steps':>8}{'stopped':>9}"
              f"{'valid ndcg@10':>15}{'test ndcg@10':>14}{'test hr@10':>12}{'s/epoch':>9}{'seconds':>9}")
    lines = [header]
    for r in records:
        res = r.result
        valid = (res.get("valid") or {}).get("ndcg@10", math.nan)
        lines.append(f"{r.variant:<16}{r.seed:>5}{res.get('train_sequences', 0):>10,}{res['epochs_run']:>8}"
                     f"{res['best_epoch'] + 1:>6}{r.steps:>8,}{'yes' if res.get('stopped_early') else 'no':>9}"
                     f"{valid:>15.4f}{res['test']['ndcg@10']:>14.4f}{res['test']['hr@10']:>12.4f}"
                     f"{res['seconds_per_epoch']:>9.1f}{res['seconds_total']:>9.1f}")
    return "\n".join(lines)


def read_saved(path: Path):
    """``((variant, seed), result)`` for each run in a study's ``*.runs.jsonl``, in file order."""
    for line in path.read_text().splitlines():
        if line.strip():
            result = json.loads(line)
            yield (result.pop("variant"), result.pop("seed")), result


def saved_runs(path: Path, steps_per_epoch: int, loss: str) -> dict[tuple[str, int], dict]:
    """{(variant, seed): result} of the runs in a study's ``*.runs.jsonl``, checked against this
    plan's epoch length and loss (a different one means other data, batch size or objective:
    refuse to mix them)."""
    runs = {}
    for (variant, seed), result in read_saved(path):
        if result.get("steps_per_epoch") != steps_per_epoch:
            raise SystemExit(f"{path}: {variant} seed {seed} ran {result.get('steps_per_epoch')} "
                             f"steps per epoch, this plan {steps_per_epoch}: not the same study")
        if result.get("loss", "bce") != loss:
            raise SystemExit(f"{path}: {variant} seed {seed} was trained with loss {result.get('loss', 'bce')!r}, "
                             f"this plan with {loss!r}: not the same study")
        runs[variant, seed] = result
    return runs


def comparison_by_group(records, chains: dict[str, str]) -> str:
    """Variants vs baseline on all test users, then by history length (short / long) and target
    popularity (head / tail): an augmentation aimed at short sequences should show where it acts."""
    from recaug_spark.train.experiment import comparison_table

    return "\n\n".join(comparison_table(records, METRICS, group=group, chains=chains)
                       for group in ("all", "short", "long", "head", "tail"))


def report_from(saved: list[Path]) -> str:
    """The baseline, comparison and run tables from the runs that one or more studies saved
    (``*.runs.jsonl``; e.g. the baseline trained by one process, the variants by another). The
    studies must share their plan: a different epoch length or a run saved twice is refused."""
    from recaug_spark.train.experiment import RunRecord

    records, steps, losses = {}, {}, {}
    for path in saved:
        for key, result in read_saved(path):
            if key in records:
                raise SystemExit(f"{path}: {key[0]} seed {key[1]} is saved twice in {[str(p) for p in saved]}")
            records[key] = RunRecord(*key, result)
            steps.setdefault(result.get("steps_per_epoch"), f"{path} ({key[0]} seed {key[1]})")
            losses.setdefault(result.get("loss", "bce"), f"{path} ({key[0]} seed {key[1]})")
    if len(steps) > 1:
        raise SystemExit(f"runs with different epoch lengths (not the same study): {steps}")
    if len(losses) > 1:
        raise SystemExit(f"runs trained with different losses (not the same study): {losses}")
    records = list(records.values())
    sources = ", ".join(str(p) for p in saved)
    if not any(r.variant == "baseline" for r in records):
        return f"{sources}: no finished baseline run yet ({len(records)} run(s))"
    # complete seeds only: a paired comparison needs every arm of a seed
    arms = {r.variant for r in records}
    complete = {s for s in {r.seed for r in records} if {r.variant for r in records if r.seed == s} == arms}
    records = sorted((r for r in records if r.seed in complete), key=lambda r: (r.variant != "baseline", r.variant, r.seed))
    parts = [f"{len(records)} run(s) of {len(complete)} complete seed(s) from {sources}", "",
             format_baseline(baseline_summary(records))]
    if len(arms) > 1:
        parts += ["", "variants vs baseline at equal optimizer steps:",
                  comparison_by_group(records, chains={a: a for a in sorted(arms)})]
    return "\n".join(parts + ["", "runs:", format_runs(records)])


# ---------------------------------------------------------------- main

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATASET), help="Sports_and_Outdoors.txt (default: ../shared/datasets/...)")
    parser.add_argument("--warehouse", default=None, help="warehouse folder (default: a temp dir, removed at the end)")
    parser.add_argument("--skip-prepare", action="store_true", help="reuse --warehouse's tables: no ingest/clean/augment")
    parser.add_argument("--reaugment", action="store_true", help="with --skip-prepare: run augment for these variants")
    parser.add_argument("--variant", action="append", default=[], metavar="CHAIN",
                        help='operator chain to test, e.g. "crop>mask" (repeatable)')
    parser.add_argument("--copies", type=int, default=2, help="augmented copies per user of each --variant chain")
    parser.add_argument("--experiment", default=None, metavar="YAML",
                        help="config layer with train.variants and augment.branches (e.g. conf/experiments/ablation.yaml)")
    parser.add_argument("--seeds", default=None, help=f"comma-separated (default {FULL['seeds']}; --quick {QUICK['seeds']})")
    parser.add_argument("--max-epochs", type=int, default=None,
                        help=f"epoch budget, an epoch = the baseline's steps (default {FULL['max_epochs']})")
    parser.add_argument("--patience", type=int, default=None,
                        help=f"validations without a better NDCG@10 (default {FULL['patience']})")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when available")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    parser.add_argument("--parallel", type=int, default=1, help="training runs at once, a process each")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. fit.reverse_transformer.hidden=64 (repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke check: seeds {QUICK['seeds']}, {QUICK['max_epochs']} epochs, patience {QUICK['patience']}")
    parser.add_argument("--clean-defaults", action="store_true", help="keep clean.max_sequence_length at its default")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--json", default=None,
                        help="also save the figures to this JSON file (and each run, as it ends, to *.runs.jsonl)")
    parser.add_argument("--resume", default=None, metavar="JSONL",
                        help="runs an interrupted study saved (*.runs.jsonl) with the same settings: not retrained")
    parser.add_argument("--arms", default=None, metavar="NAMES",
                        help="comma-separated arms to train here (e.g. the variants, while another process or "
                             "machine trains the baseline); merge the studies with --report-from")
    parser.add_argument("--report-from", nargs="+", default=None, metavar="JSONL",
                        help="print the tables from the runs one or more (possibly interrupted) studies saved "
                             "(same data and plan), and stop")
    args = parser.parse_args(argv)
    if args.report_from:
        print(report_from([Path(p) for p in args.report_from]))
        return
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not Path(args.data).is_file():
        parser.error(f"dataset not found: {args.data} (it lives in ../shared/datasets/, absent in a fresh clone)")
    if args.skip_prepare and not args.warehouse:
        parser.error("--skip-prepare needs --warehouse PATH (a warehouse prepared by an earlier run)")
    if args.reaugment and not args.skip_prepare:
        parser.error("--reaugment goes with --skip-prepare (a full prepare augments anyway)")

    warehouse = Path(args.warehouse or tempfile.mkdtemp(prefix="recaug-sports-")).resolve()
    try:
        cfg = build_config(args, warehouse)
        fit = ["fit"] if cfg.fit.generators and not (args.skip_prepare and fitted_already(cfg, warehouse)) else []
        stages = [*fit, "augment"] if args.reaugment else [] if args.skip_prepare else ["ingest", "clean", *fit, "augment"]
        durations = prepare(cfg, stages) if stages else {}
        check = check_preprocessing(Path(args.data), warehouse)
        print(format_check(check), flush=True)

        import torch

        from recaug_spark.train.experiment import compare, plan_experiment, run_experiment, values_by_variant

        plan = plan_experiment(cfg.train, str(warehouse / "augmented_sequences"), str(warehouse / "sequence_targets"),
                               str(warehouse / "items"))
        if args.arms:
            wanted = [a.strip() for a in args.arms.split(",") if a.strip()]
            unknown = sorted(set(wanted) - {a.name for a in plan.arms})
            if unknown:
                raise SystemExit(f"--arms: {unknown} not in this study; its arms: {[a.name for a in plan.arms]}")
            plan = dataclasses.replace(plan, arms=tuple(a for a in plan.arms if a.name in wanted))
        log(f"[train] {len(plan.arms)} arm(s) ({', '.join(a.name for a in plan.arms)}) × {len(cfg.train.seeds)} seed(s); "
            f"an epoch = {plan.steps_per_epoch} steps; rows by chain {dict(plan.rows_by_chain)}")
        finished = saved_runs(Path(args.resume), plan.steps_per_epoch, cfg.train.loss) if args.resume else {}
        started = time.perf_counter()
        saved = Path(args.json).with_suffix(".runs.jsonl") if args.json else None
        if saved is not None:
            saved.write_text("")

        def save(record) -> None:  # each run as it ends: a long study keeps what it finished
            with saved.open("a") as handle:
                handle.write(json.dumps({"variant": record.variant, "seed": record.seed, **record.result},
                                        default=str) + "\n")

        # with --json, every run also saves its state after each epoch beside it: an interrupted study
        # resumes the run it was in (same command with --resume) instead of retraining it
        progress_dir = str(Path(args.json).with_suffix(".progress")) if args.json else None
        records = run_experiment(plan, cfg.train, log=log, epoch_log=True, on_record=save if saved else None,
                                 finished=finished, progress_dir=progress_dir)
        train_seconds = time.perf_counter() - started

        has_baseline = any(r.variant == "baseline" for r in records)
        summary = baseline_summary(records) if has_baseline else None
        chains = {a.name: a.requested for a in plan.arms}
        device = records[0].result["device"]
        print(f"\nAmazon Sports 5-core, SASRec (hidden 64, 2 blocks, 2 heads, max_len 50, dropout 0.5, lr 1e-3, "
              f"batch 256, loss {cfg.train.loss}), "
              f"{len(cfg.train.seeds)} seed(s), ≤ {cfg.train.epochs} epochs × {plan.steps_per_epoch} steps, patience "
              f"{cfg.train.patience}, {device}, torch {torch.__version__}\n")
        if has_baseline:
            print(format_baseline(summary))
            if len(plan.arms) > 1:
                print("\nvariants vs baseline at equal optimizer steps:")
                print(comparison_by_group(records, chains))
        else:
            print("no baseline in --arms: compare with --report-from <this study's .runs.jsonl (--json)> "
                  "<the baseline study's .runs.jsonl>")
        print("\nruns:")
        print(format_runs(records))
        stages_text = ", ".join(f"{k} {v:.0f}s" for k, v in durations.items()) or "skipped"
        print(f"\nprepare {sum(durations.values()):.0f}s ({stages_text}), training {train_seconds:.0f}s")
        if args.json:
            report = {
                "dataset": str(args.data), "warehouse": str(warehouse), "device": device, "torch": torch.__version__,
                "settings": {"seeds": list(cfg.train.seeds), "max_epochs": cfg.train.epochs, "patience": cfg.train.patience,
                             "threads": args.threads, "copies": args.copies, "quick": args.quick,
                             "steps_per_epoch": plan.steps_per_epoch, "model": REFERENCE,
                             "clean_max_sequence_length": cfg.clean.max_sequence_length},
                "arms": chains, "rows_by_chain": dict(plan.rows_by_chain), "table_version": plan.version,
                "preprocessing": check, "prepare_seconds": durations, "train_seconds": train_seconds,
                "published": PUBLISHED, "design_reference": DESIGN_REFERENCE, "baseline": summary,
                "comparison": {m: [asdict(c) for c in compare(values_by_variant(records, m), m)] for m in METRICS}
                if has_baseline else None,
                "runs": [{"variant": r.variant, "seed": r.seed, "steps": r.steps, **r.result} for r in records],
            }
            Path(args.json).write_text(json.dumps(report, indent=2, default=str))
            print(f"figures saved to {args.json}")
    finally:
        if args.warehouse is None:
            shutil.rmtree(warehouse, ignore_errors=True)
            shutil.rmtree(f"{warehouse}-models", ignore_errors=True)


if __name__ == "__main__":
    main()
