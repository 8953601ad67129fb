"""Experiments (baseline vs augmented variants at an equal step budget), the metrics table, the
report, the data-quality figures with known answers, and the train stage end to end."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from recaug_spark.config import PACKAGE_CONF_DIR, STAGES, Config, ConfigError, TrainStageConfig, load_config
from recaug_spark.train.experiment import (
    Arm,
    ExperimentError,
    RunRecord,
    compare,
    format_comparison,
    format_mean_ci,
    format_relative,
    metric_rows,
    resolve_arms,
    split_metric,
    verdict,
    verdict_lines,
)
from recaug_spark.train.quality import (
    ALL_AUGMENTED,
    distribution_distances,
    gini_from_histogram,
    quality_markdown,
    quality_report,
)

# ---------------------------------------------------------------- quality: pure figures


def test_identical_distributions_are_at_distance_zero_and_disjoint_ones_at_one():
    same = distribution_distances([0, 3, 1, 2], [0, 6, 2, 4])  # counts are normalised
    assert same == {"js": 0.0, "tv": 0.0, "wasserstein": 0.0}
    disjoint = distribution_distances([1, 0, 0], [0, 0, 5])
    assert disjoint["js"] == pytest.approx(1.0) and disjoint["tv"] == pytest.approx(1.0)
    assert disjoint["wasserstein"] == pytest.approx(2.0)  # all mass moves two units
    half = distribution_distances([1, 1], [1, 0])
    assert half["tv"] == pytest.approx(0.5) and half["wasserstein"] == pytest.approx(0.5)
    # JS of (1/2, 1/2) vs (1, 0): ½·KL(p‖m) + ½·KL(q‖m) with m = (3/4, 1/4)
    m = np.array([0.75, 0.25])
    expected = 0.5 * (0.5 * math.log2(0.5 / m[0]) + 0.5 * math.log2(0.5 / m[1])) + 0.5 * math.log2(1 / m[0])
    assert half["js"] == pytest.approx(expected)


def test_gini_known_answers():
    assert gini_from_histogram([7], [10]) == 0.0  # uniform frequencies
    assert gini_from_histogram([0, 12], [9, 1]) == pytest.approx(9 / 10)  # one item of ten takes all: (n-1)/n
    assert gini_from_histogram([1, 2, 3], [1, 1, 1]) == pytest.approx(4 / 18)
    # runs of equal values give what the expanded population gives
    assert gini_from_histogram([2, 0, 1], [2, 1, 3]) == pytest.approx(gini_from_histogram([0, 1, 1, 1, 2, 2], [1] * 6))


# ---------------------------------------------------------------- quality: Spark aggregates on a tiny table

@pytest.fixture(scope="module")
def tiny_quality(spark):
    rows = [
        ("u1", ["a", "b", "c"], "real"),
        ("u2", ["b", "c"], "real"),
        ("u1", ["b", "c"], "crop"),  # a copy of u2's real sequence; parent u1 shares 2 of 3 items
        ("u1", ["a", "b", "c"], "dup"),  # identical to its parent
        ("u2", ["c", "b"], "dup"),  # same items as its parent, an unseen transition (c, b)
        ("u1", ["a", "[mask]", "c"], "mask"),
    ]
    table = spark.createDataFrame(rows, "user_id string, item_ids array<string>, operator_chain string")
    return quality_report(table, catalog_size=4, head_share=0.25)


def test_quality_fidelity_known_answers(tiny_quality):
    groups = tiny_quality["groups"]
    assert set(groups) == {"real", "crop", "dup", "mask", ALL_AUGMENTED}
    dup, crop = groups["dup"], groups["crop"]
    # dup has the real rows' length and item distributions exactly
    assert dup["length_js"] == 0 and dup["length_tv"] == 0 and dup["length_wasserstein"] == 0
    assert dup["item_js"] == pytest.approx(0, abs=1e-12) and dup["item_tv"] == pytest.approx(0, abs=1e-12)
    assert dup["bigram_seen_share"] == pytest.approx(2 / 3)  # (a,b), (b,c) seen; (c,b) not
    # crop: lengths {2} vs {2, 3}; items (b .5, c .5) vs (a .2, b .4, c .4)
    assert crop["length_tv"] == pytest.approx(0.5) and crop["length_wasserstein"] == pytest.approx(0.5)
    assert crop["item_tv"] == pytest.approx(0.2)
    assert crop["item_js"] == pytest.approx(distribution_distances([0.2, 0.4, 0.4], [0, 0.5, 0.5])["js"])
    assert crop["bigram_seen_share"] == 1.0
    assert math.isnan(groups["mask"]["bigram_seen_share"])  # every pair of [a, mask, c] has the mask token


def test_quality_diversity_and_privacy_known_answers(tiny_quality):
    real, crop, dup, mask = (tiny_quality["groups"][g] for g in ("real", "crop", "dup", "mask"))
    assert tiny_quality["catalog_size"] == 4 and tiny_quality["head_items"] == 1  # head = b (tie with c: by id)
    assert (real["sequences"], real["events"], real["distinct_items"]) == (2, 5, 3)
    assert real["coverage"] == pytest.approx(3 / 4) and crop["coverage"] == pytest.approx(2 / 4)
    assert real["gini"] == pytest.approx(gini_from_histogram([0, 1, 2, 2], [1, 1, 1, 1]))  # d unseen counts as 0
    assert real["tail_share"] == pytest.approx(1 - 2 / 5) and crop["tail_share"] == pytest.approx(0.5)
    assert mask["mask_share"] == pytest.approx(1 / 3) and real["mask_share"] == 0
    # privacy
    assert crop["identical_to_real_share"] == 1.0 and crop["identical_to_parent_share"] == 0.0
    assert crop["jaccard_to_parent_mean"] == pytest.approx(1 / 3)
    assert dup["identical_to_real_share"] == 0.5 and dup["identical_to_parent_share"] == 0.5
    assert dup["jaccard_to_parent_mean"] == 0.0 and dup["same_items_as_parent_share"] == 1.0
    assert mask["jaccard_to_parent_mean"] == pytest.approx(1 / 3)  # the mask token is not an item
    text = quality_markdown(tiny_quality)
    assert "Fidelity" in text and "Diversity" in text and "Privacy" in text and "| crop |" in text


def test_quality_needs_real_rows(spark):
    from recaug_spark.train.quality import QualityError

    table = spark.createDataFrame([("u1", ["a"], "crop")], "user_id string, item_ids array<string>, operator_chain string")
    with pytest.raises(QualityError, match="no real rows"):
        quality_report(table)


# ---------------------------------------------------------------- comparison table on fixed numbers

VALUES = {"baseline": {1: 0.30, 2: 0.32, 3: 0.31}, "augmented": {1: 0.33, 2: 0.33, 3: 0.33}}


def test_compare_gives_mean_ci_and_paired_relative_change():
    base, aug = compare(VALUES, "ndcg@10")
    t = 4.302652729749464  # t(0.975, df=2)
    assert base.mean == pytest.approx(0.31) and base.half_width == pytest.approx(t * 0.01 / math.sqrt(3))
    assert base.relative == 0 and math.isnan(base.relative_low)
    assert aug.mean == pytest.approx(0.33) and aug.half_width == pytest.approx(0.0, abs=1e-12)
    assert aug.relative == pytest.approx(0.02 / 0.31)
    # paired differences 0.03, 0.01, 0.02: mean 0.02, sd 0.01
    half = t * 0.01 / math.sqrt(3)
    assert aug.relative_low == pytest.approx((0.02 - half) / 0.31)
    assert aug.relative_high == pytest.approx((0.02 + half) / 0.31)


def test_verdict_says_helps_or_hurts_only_when_the_paired_interval_excludes_zero():
    noisy = compare(VALUES, "ndcg@10")[1]  # +6.5% [-1.6%, +14.5%]
    assert verdict(noisy) == ("augmented: no measurable effect, test ndcg@10 +6.5% [-1.6%, +14.5%] "
                              "(paired 95% CI includes 0).")
    better = compare({"baseline": {1: 0.30, 2: 0.31}, "x": {1: 0.40, 2: 0.42}}, "ndcg@10")[1]
    assert verdict(better).startswith("x: helps, test ndcg@10 +34.4% [")
    worse = compare({"baseline": {1: 0.30, 2: 0.31}, "x": {1: 0.20, 2: 0.22}}, "ndcg@10")[1]
    assert verdict(worse).startswith("x: hurts, test ndcg@10 -31.1% [")
    single = compare({"baseline": {1: 0.30}, "x": {1: 0.33}}, "ndcg@10")[1]
    assert verdict(single) == "x: undecided, test ndcg@10 +10.0% from fewer than 2 paired seeds (no interval)."
    records = [RunRecord(v, seed, {"test": {"ndcg@10": value}}) for v, by_seed in VALUES.items()
               for seed, value in by_seed.items()]
    assert verdict_lines(records, "ndcg@10") == [verdict(noisy)]  # the baseline gets no sentence


def test_comparison_formatting():
    assert format_mean_ci(0.31, 0.0248) == "0.3100 ± 0.0248"
    assert format_mean_ci(0.31, float("nan")) == "0.3100 ± n/a"
    base, aug = compare(VALUES, "ndcg@10")
    assert format_relative(base) == "—"
    assert format_relative(aug) == "+6.5% [-1.6%, +14.5%]"  # the paired interval includes 0: no star
    strong = compare({"baseline": {1: 0.30, 2: 0.31}, "x": {1: 0.40, 2: 0.42}}, "ndcg@10")[1]
    assert format_relative(strong).endswith("*")
    single = compare({"baseline": {1: 0.30}, "x": {1: 0.33}}, "ndcg@10")[1]
    assert format_relative(single) == "+10.0%"  # one seed: no interval
    text = format_comparison({"ndcg@10": compare(VALUES, "ndcg@10")}, {"baseline": "real", "augmented": "all"})
    lines = text.splitlines()
    assert lines[0].split() == ["variant", "chains", "ndcg@10", "Δ", "ndcg@10", "vs", "baseline"]
    assert lines[2].split()[:5] == ["baseline", "real", "0.3100", "±", "0.0248"]
    assert lines[3].split()[:5] == ["augmented", "all", "0.3300", "±", "0.0000"]
    assert "+6.5% [-1.6%, +14.5%]" in lines[3]
    with pytest.raises(ExperimentError, match="baseline"):
        compare({"x": {1: 0.3}}, "ndcg@10")


def test_metric_rows_one_per_split_metric_and_group():
    result = {"protocol": "full", "valid": {"ndcg@10": 0.3, "mrr": 0.2, "users": 5},
              "test": {"ndcg@10": 0.25, "mrr": 0.15, "users": 5},
              "test_breakdown": {"short": {"ndcg@10": 0.1, "mrr": 0.1, "users": 2},
                                 "head": {"ndcg@10": 0.4, "mrr": 0.3, "users": 3}}}
    rows = metric_rows([RunRecord("baseline", 1, result), RunRecord("augmented", 1, result)], run_id="r",
                       experiment="e", table_version=7, config_hash="h")
    assert len(rows) == 2 * (2 + 2 + 2 + 2)  # valid, test all, test short, test head × 2 metrics × 2 variants
    assert ("r", "e", "baseline", 1, "test", "full", "ndcg", 10, "head", 0.4, 7, "h") in rows
    assert ("r", "e", "augmented", 1, "valid", "full", "mrr", None, "all", 0.2, 7, "h") in rows
    assert split_metric("hr@20") == ("hr", 20) and split_metric("auc") == ("auc", None)


# ---------------------------------------------------------------- config and arms

def test_train_section_defaults_and_validation():
    assert STAGES[-2:] == ("augment", "train") and Config().pipeline.until == "train"
    train = Config().train
    assert train.seeds == (1, 2, 3) and train.num_processes == 1 and train.enabled
    assert [(v.name, v.chains) for v in train.variants] == [("augmented", "all")]
    assert train.trainer_config().steps_per_epoch is None and train.trainer_config().hidden == train.hidden
    cfg = load_config(overrides=["train.variants=[{name: cm, chains: ['crop > mask', reorder]}]"])
    assert cfg.train.variants[0].chains == ("crop>mask", "reorder")
    for bad in ("train.variants=[{name: baseline, chains: all}]", "train.variants=[{name: a, chains: [real]}]",
                "train.variants=[{name: a}, {name: a}]", "train.epocs=3"):
        with pytest.raises(ConfigError):
            load_config(overrides=[bad])


def test_experiment_files_validate_and_ablation_covers_the_default_chains():
    default = load_config([PACKAGE_CONF_DIR / "experiments" / "default.yaml"])
    assert default.train.experiment == "default" and default.train.variants == TrainStageConfig().variants
    ablation = load_config([PACKAGE_CONF_DIR / "experiments" / "ablation.yaml"])
    single = {v.chains[0] for v in ablation.train.variants if v.chains != "all" and len(v.chains) == 1}
    assert single == {b.chain.replace(" ", "") for b in Config().augment.branches}
    for path in sorted((PACKAGE_CONF_DIR / "experiments").glob("*.yaml")):  # every shipped study is a valid layer
        cfg = load_config([path])
        assert cfg.train.experiment == path.stem, path


def test_arms_resolve_all_and_reject_unknown_chains():
    variants = load_config(overrides=["train.variants=[{name: everything, chains: all}, {name: c, chains: [crop]}]"]
                           ).train.variants
    arms = resolve_arms(variants, ["real", "mask", "crop"])
    assert arms == (Arm("baseline", (), "real"), Arm("everything", ("crop", "mask"), "all"), Arm("c", ("crop",), "crop"))
    with pytest.raises(ExperimentError, match="not in the table"):
        resolve_arms(variants, ["real", "mask"])


def test_experiment_command_rejects_a_bad_file_before_spark(tmp_path):
    from click.testing import CliRunner

    from recaug_spark.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  variants:\n    - {name: baseline, chains: all}\n")
    result = CliRunner().invoke(main, ["experiment", str(bad)])
    assert result.exit_code == 2 and "train.variants" in result.output


# ---------------------------------------------------------------- the train stage end to end

def test_train_stage_writes_metrics_report_and_counts(trained_run):
    from recaug_spark.pipeline import run_stages, summary

    train_ctx, result, report = trained_run  # conftest.py: the train stage once per session, tiny config
    ctx, cfg = train_ctx, train_ctx.cfg

    variants, seeds = ["baseline", "augmented", "crop"], [1, 2]
    metrics = ctx.warehouse.read("metrics").where("run_id = 'e2e-train'").toPandas()
    per_run = 2 * 14 + 5 * 14  # (valid, test) × 14 metrics + 5 test groups × 14 metrics (ks 1, 5, 10, 20)
    assert len(metrics) == result.rows_out == len(variants) * len(seeds) * per_run
    assert sorted(metrics.groupby(["variant", "seed"]).size().to_dict().items()) == sorted(
        ((v, s), per_run) for v in variants for s in seeds)
    assert set(metrics["group"]) == {"all", "short", "long", "cold", "head", "tail"}
    assert set(metrics["protocol"]) == {"full"}
    assert set(metrics["table_version"]) == {ctx.warehouse.version("augmented_sequences")}
    assert set(metrics["config_hash"]) == {cfg.hash} and set(metrics["experiment"]) == {"default"}
    ndcg = metrics.query("split == 'test' and metric == 'ndcg' and k == 10 and group == 'all'")
    assert len(ndcg) == 6 and ndcg["value"].between(0, 1).all()

    for name in ("report.md", "metrics.png", "groups.png", "validation.png", "quality_lengths.png",
                 "quality_diversity.png"):
        assert (report / name).stat().st_size > 0, name
    text = (report / "report.md").read_text()
    assert "Fair comparison" in text and "Data quality" in text and "| crop |" in text

    counts = result.counts
    for variant in variants:
        assert 0 <= counts[f"metric.{variant}.ndcg10_x10000"] <= 10_000
        assert f"metric.{variant}.ndcg10_ci_x10000" in counts
    # the fairness rule: every variant trains for the same number of optimizer steps
    assert counts["steps.baseline"] == counts["steps.augmented"] == counts["steps.crop"] == 2 * counts["steps_per_epoch"]
    assert result.tables["read:augmented_sequences"] == ctx.warehouse.version("augmented_sequences")
    text = summary(train_ctx, [result])
    assert "baseline" in text and str(report / "report.md") in text
    for variant in ("augmented", "crop"):  # a plain verdict per variant, from its paired interval (2 seeds)
        low, high = (counts[f"metric.{variant}.ndcg10_rel_{end}_x10000"] for end in ("low", "high"))
        word = "helps" if low > 0 else "hurts" if high < 0 else "no measurable effect"
        assert f"  {variant}: {word}, test ndcg@10 " in text

    # same run id again: the metrics commit exists, nothing trains or is written
    version = ctx.warehouse.version("metrics")
    [again] = run_stages(train_ctx, ["train"], echo=lambda line: None)
    assert again.skipped and ctx.warehouse.version("metrics") == version
    assert Path(report / "report.md").exists()


def test_parallel_runs_give_the_same_results_as_one_after_another(default_run, tmp_path):
    """train.parallel_runs trains arm × seed models in worker processes: same figures, same order."""
    from recaug_spark.train.experiment import plan_experiment, run_experiment

    ctx, _ = default_run
    cfg = ctx.cfg.with_overrides(**{
        "train.epochs": 1, "train.seeds": [1, 2], "train.hidden": 8, "train.max_len": 10, "train.batch_size": 128,
        "train.num_threads": 1, "train.variants": [{"name": "crop", "chains": ["crop"]}], "train.parallel_runs": 1,
    }).train
    wh = ctx.warehouse
    plan = plan_experiment(cfg, wh.uri("augmented_sequences"), wh.uri("sequence_targets"), wh.uri("items"))
    lines: list[str] = []
    ended: list[tuple[str, int]] = []
    one_by_one = run_experiment(plan, cfg, log=lines.append, epoch_log=True,
                                on_record=lambda r: ended.append((r.variant, r.seed)))
    assert ended == [("baseline", 1), ("crop", 1), ("baseline", 2), ("crop", 2)]  # seed by seed: pairs end early
    ended.clear()
    side_by_side = run_experiment(plan, cfg.model_copy(update={"parallel_runs": 2}),
                                  on_record=lambda r: ended.append((r.variant, r.seed)),
                                  progress_dir=str(tmp_path / "progress"))
    assert list((tmp_path / "progress").iterdir()) == []  # each run's progress file is removed at its end
    assert sorted(ended) == [("baseline", 1), ("baseline", 2), ("crop", 1), ("crop", 2)]
    assert [(r.variant, r.seed) for r in side_by_side] == [("baseline", 1), ("baseline", 2), ("crop", 1), ("crop", 2)]
    assert [(r.variant, r.seed, r.result["test"]) for r in side_by_side] == [
        (r.variant, r.seed, r.result["test"]) for r in one_by_one]
    assert sum(line.startswith("[train] crop seed 2: epoch=0 ") for line in lines) == 1  # the per-epoch log
    # resuming an interrupted study: saved runs are reported as they were, only the others train
    saved = {("baseline", 1): one_by_one[0].result, ("crop", 2): one_by_one[3].result}
    lines.clear()
    resumed = run_experiment(plan, cfg, log=lines.append, epoch_log=True, finished=saved)
    assert [(r.variant, r.seed, r.result["test"]) for r in resumed] == [
        (r.variant, r.seed, r.result["test"]) for r in one_by_one]
    assert resumed[0].result is saved["baseline", 1] and resumed[3].result is saved["crop", 2]
    trained = {line.split(":")[0] for line in lines if ": epoch=" in line}
    assert trained == {"[train] baseline seed 2", "[train] crop seed 1"}
    with pytest.raises(ConfigError, match="num_processes 1"):
        load_config(overrides=["train.parallel_runs=2", "train.num_processes=2"])
    # unset, it means two at once on two cores or more, and one per TorchDistributor run
    assert load_config(overrides=["train.num_processes=2"]).train.runs_at_once() == 1
    assert load_config().train.runs_at_once() == min(2, os.cpu_count() or 1)


def test_report_warns_in_red_when_a_baseline_run_hit_the_epoch_cap():
    from recaug_spark.train.report import baseline_warning

    def record(variant, seed, capped):
        return RunRecord(variant, seed, {"cap_hit": capped, "stopped_early": not capped})

    converged = [record("baseline", 1, False), record("baseline", 2, False), record("x", 1, True)]
    assert baseline_warning(converged) is None  # a capped variant does not make the baseline unconverged
    warning = baseline_warning([record("baseline", 1, False), record("baseline", 2, True), record("x", 1, False)])
    assert "color:red" in warning and "1 of 2 baseline run(s)" in warning


def test_an_experiment_trains_a_contrastive_variant_from_config(default_run):
    from recaug_spark.train.experiment import plan_experiment, run_experiment

    ctx, _ = default_run
    cfg = ctx.cfg.with_overrides(**{
        "train.epochs": 1, "train.seeds": [1], "train.hidden": 8, "train.max_len": 10, "train.batch_size": 128,
        "train.num_threads": 1, "train.loss": "ce",
        "train.variants": [{"name": "cl", "chains": ["crop", "mask"], "consume": "contrastive"}],
    }).train
    wh = ctx.warehouse
    plan = plan_experiment(cfg, wh.uri("augmented_sequences"), wh.uri("sequence_targets"), wh.uri("items"))
    baseline, contrastive = run_experiment(plan, cfg)
    assert (baseline.variant, contrastive.variant) == ("baseline", "cl")
    # the contrastive arm trains the next-item loss on the real rows only: the baseline's training rows
    assert contrastive.result["train_sequences"] == baseline.result["train_sequences"]
    assert contrastive.result["loss"] == "ce" and contrastive.result["test"] != baseline.result["test"]
    with pytest.raises(ExperimentError, match="num_processes"):
        run_experiment(plan, cfg.model_copy(update={"num_processes": 2}))
