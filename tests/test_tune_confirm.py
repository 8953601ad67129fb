"""``recaug tune --confirm``: the one step that reads the test split — once — training the real-only
baseline and the tuned policy on >= 3 seeds, paired by seed, after a search that never read it."""

from __future__ import annotations

import json

import pytest
from test_tune import TINY, _cfg, _tiny_warehouse

pytest.importorskip("torch")


def test_search_then_confirm_reads_test_once_on_three_seeds_paired_with_the_baseline(tmp_path, monkeypatch, spark):
    import recaug_spark.train.data as data
    import recaug_spark.tune.evaluate as E
    from recaug_spark.runs import RunContext
    from recaug_spark.train import metrics as M
    from recaug_spark.tune.runner import confirm, run_tune
    from recaug_spark.tune.space import VARIANT
    from recaug_spark.tune.study import study_dir

    users = 80
    _tiny_warehouse(tmp_path / "wh", users=users)
    cfg = _cfg(tmp_path, "tune.budget.n_trials=3", "tune.confirm_seeds=[1, 2, 3]", "train.num_threads=1", *TINY)
    whole_reads, split_reads = [], []
    real_read_targets, real_split_reader = data.read_targets, E.read_split_targets

    def spy_targets(uri, version=None):
        whole_reads.append(uri)
        return real_read_targets(uri, version)

    def spy_split(uri, version, split):
        split_reads.append(split)
        return real_split_reader(uri, version, split)

    monkeypatch.setattr(data, "read_targets", spy_targets)
    monkeypatch.setattr(E, "read_split_targets", spy_split)
    outcome = run_tune(cfg, E.TrialEvaluator(cfg, E.pin_inputs(str(tmp_path / "wh"))), log=lambda _: None)
    assert whole_reads == [] and split_reads == ["valid"]  # the search: validation rows only
    outcome.layer_path.write_text(  # the plant: a policy that certainly makes rows, whatever the search chose
        "augment: {branches: [{chain: crop, params: {crop: {eta: 0.6}}}]}\n"
        f"train: {{variants: [{{name: {VARIANT}, chains: [crop], consume: rows}}]}}\n"
    )

    lines = []
    saved = confirm(cfg, RunContext.create(spark, cfg, run_id="confirm"), log=lines.append)
    assert len(whole_reads) == 1 and whole_reads[0].endswith("sequence_targets")  # test read once, in all
    assert split_reads == ["valid"]  # and the confirmation drew nothing from the search's reader
    runs = {(r["variant"], r["seed"]): r["result"] for r in saved["runs"]}
    assert set(runs) == {(arm, seed) for arm in ("baseline", VARIANT) for seed in (1, 2, 3)}
    assert all(r["test"]["users"] == users and r["valid"]["users"] == users for r in runs.values())
    baseline = [runs["baseline", s]["test"]["ndcg@10"] for s in (1, 2, 3)]
    tuned = [runs[VARIANT, s]["test"]["ndcg@10"] for s in (1, 2, 3)]
    assert all(result["seed"] == seed for (_, seed), result in runs.items())  # each trained with its seed
    assert saved["chains"][VARIANT] and saved["version"] >= 0  # the tuned rows came from the Spark augment path
    assert json.loads((study_dir(cfg) / "confirm.json").read_text())["runs"] == json.loads(json.dumps(saved["runs"]))
    # the report's change is paired by seed: the CI of the per-seed differences, not of two independent means
    base = sum(baseline) / 3
    paired = M.mean_ci([t - b for b, t in zip(baseline, tuned)])
    change = f"{(sum(tuned) / 3 - base) / base:+.1%} [{paired['low'] / base:+.1%}, {paired['high'] / base:+.1%}]"
    table = lines[-1]
    assert "3 seed(s)" in table and "paired-by-seed" in table
    assert change in table, (table, change)


def test_the_history_of_a_study_with_pruned_trials_goes_through_spark_to_tune_trials(tmp_path, spark):
    """A pruned trial has no best epoch: the nullable integer columns must reach Delta as integers
    (through pandas they became floats that Spark refused, failing `recaug tune` after the search)."""
    from test_tune import Planted

    from recaug_spark.runs import RunContext
    from recaug_spark.tune import history as H
    from recaug_spark.tune.runner import run_tune

    cfg = _cfg(tmp_path, "tune.budget.n_trials=12")
    ctx = RunContext.create(spark, cfg, run_id="history")
    outcome = run_tune(cfg, Planted(), warehouse=ctx.warehouse, log=lambda _: None)
    pruned = [r for r in outcome.records if r["state"] == "PRUNED"]
    assert pruned and all(r["proxy_best_epoch"] is None for r in pruned)
    back = H.read_history(ctx.warehouse.uri(H.TABLE), "default")
    assert back == outcome.records
    assert all(isinstance(r["proxy_best_epoch"], int) for r in back if r["state"] == "COMPLETE")
