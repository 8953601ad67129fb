"""recaug tune: the search space, a planted best policy found, resumption after a crash, pruning,
the validation-only rule (the test split is read by the confirmation alone), history and report."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from recaug_spark.config import load_config
from recaug_spark.tune import history as H
from recaug_spark.tune.space import chain_subsets, policy_from_params, policy_layer, suggest_policy
from recaug_spark.tune.study import finished_count, open_study, search, study_dir


def _cfg(tmp_path, *overrides):
    return load_config(
        overrides=[
            f"run.warehouse={tmp_path / 'wh'}",
            f"tune.output={tmp_path / 'tuned.yaml'}",
            "tune.budget.startup_trials=4",
            "tune.budget.warmup_epochs=1",
            *overrides,
        ]
    )


# ---------------------------------------------------------------- a planted objective

PLANTED_ETA = 0.75


class Planted:
    """A known landscape: crop alone, consumed as weighted rows, with eta 0.75 is best; every other
    chain set is worse by 0.3, rows by 0.2, and the score falls with (eta - 0.75)^2. The score rises
    linearly over the epochs, reported to the pruner after each. Records what it evaluated."""

    def __init__(self):
        self.calls, self.epochs = [], []

    def __call__(self, policy, budget, report):
        self.calls.append((policy.key(), budget.label))
        score = 0.2
        if policy.chains == ("crop",):
            eta = policy.branches[0].params["crop"]["eta"]
            score = 1.0 - (eta - PLANTED_ETA) ** 2 - (0.2 if policy.variant.consume != "weighted" else 0.0)
        elif policy.chains:
            score = 0.5
        run = 0
        try:
            for epoch in range(budget.epochs):
                run += 1
                if report is not None:
                    report(epoch, score * (epoch + 1) / budget.epochs)
        finally:
            self.epochs.append(run)  # pruned trials too: report raises optuna.TrialPruned
        return {"score": score, "best_epoch": budget.epochs - 1, "cap_hit": True, "epochs_run": run, "seconds": 0.0}


def test_a_policy_replays_from_its_parameters_and_writes_a_valid_layer(tmp_path):
    space = load_config().tune.space
    assert chain_subsets(space)[:4] == ["none", "crop", "mask", "reorder"] and "crop+mask" in chain_subsets(space)
    params = {
        "chains": "crop+mask",
        "crop.crop.eta": 0.6,
        "mask.mask.gamma": 0.2,
        "consume": "weighted",
        "weighted.weight": 0.3,
    }
    policy = policy_from_params(params, space)
    assert policy.chains == ("crop", "mask") and policy.variant.weight == 0.3
    assert (
        policy_from_params(params, space).key() == policy.key() != policy_from_params({"chains": "none"}, space).key()
    )
    layer = tmp_path / "layer.yaml"
    layer.write_text(yaml.safe_dump(policy_layer(policy, "x")))
    cfg = load_config([layer])  # the layer is a valid config layer
    assert [b.chain for b in cfg.augment.branches] == ["crop", "mask"]
    assert cfg.augment.branches[0].params == {"crop": {"eta": 0.6}}
    assert cfg.train.variants[0].consume == "weighted" and cfg.train.variants[0].chains == ("crop", "mask")


def test_search_space_config_rejects_unknown_keys_and_parameters():
    from recaug_spark.config import ConfigError

    with pytest.raises(ConfigError, match="unknown key"):
        load_config(overrides=["tune.budget.trials=3"])
    with pytest.raises(ConfigError, match="no parameter"):
        load_config(overrides=["tune.space.chains=[{chain: crop, params: {crop: {etaa: 0.3}}}]"])
    with pytest.raises(ConfigError, match="low and high"):
        load_config(overrides=["tune.space.weight={low: 2, high: 1}"])
    with pytest.raises(ConfigError, match="3 distinct seeds"):
        load_config(overrides=["tune.confirm_seeds=[1, 2]"])


def test_search_finds_the_planted_best_policy_and_prunes_the_bad_ones(tmp_path):
    from recaug_spark.tune.runner import run_tune

    cfg = _cfg(tmp_path, "tune.budget.n_trials=30", "tune.budget.rerun_top=3", "tune.space.consume=[rows, weighted]")
    planted = Planted()
    outcome = run_tune(cfg, planted, log=lambda line: None)
    best = policy_from_params(json.loads(outcome.best["params"]), cfg.tune.space)
    assert best.chains == ("crop",) and best.variant.consume == "weighted"
    assert abs(best.branches[0].params["crop"]["eta"] - PLANTED_ETA) < 0.1
    states = [r["state"] for r in outcome.records if r["trial"] >= 0]
    assert states.count("COMPLETE") + states.count("PRUNED") == 30
    assert states.count("PRUNED") > 0 and min(planted.epochs) < cfg.tune.budget.proxy_epochs  # stopped early
    written = load_config([outcome.layer_path])
    assert written.train.variants[0].consume == "weighted" and written.augment.branches[0].chain == "crop"
    full = [r for r in outcome.records if r["full_score"] is not None and r["trial"] >= 0]
    assert {r["policy_key"] for r in full} and outcome.records[-1]["state"] == "BASELINE"
    assert outcome.correlation["n"] >= 3 and outcome.correlation["rho"] > 0.9  # the planted proxy ranks exactly
    assert "Best policy" in outcome.report_path.read_text() and (outcome.report_path.parent / "scores.png").exists()


def test_an_interrupted_search_resumes_without_repeating_finished_trials(tmp_path):
    cfg = _cfg(tmp_path, "tune.budget.n_trials=4")
    first = Planted()
    search(cfg, first, log=lambda line: None)
    assert len(first.calls) == 4
    study = open_study(cfg, study_dir(cfg))
    crashed = study.ask()  # a driver killed mid-trial leaves its trial running in the storage
    crashed_policy = suggest_policy(crashed, cfg.tune.space)
    done = {t.number: t.params for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")}

    more = _cfg(tmp_path, "tune.budget.n_trials=7")
    second = Planted()
    study = search(more, second, log=lambda line: None)
    assert finished_count(study) == 7 and len(second.calls) == 3  # only the missing trials ran
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states[crashed.number] == "FAIL"
    retry = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == crashed.number]
    assert len(retry) == 1 and second.calls[0][0] == crashed_policy.key()  # the interrupted trial ran first
    assert all(study.trials[n].params == params for n, params in done.items())  # finished trials untouched


# ---------------------------------------------------------------- real trials on a tiny warehouse


def _tiny_warehouse(root, users=80, items=20, seed=0):
    """sequences and sequence_targets of a grammar (item i is followed by i + 1): valid = the next
    item, test = the one after."""
    from deltalake import write_deltalake

    r = np.random.default_rng(seed)
    seqs = {"user_id": [], "item_ids": [], "timestamps": [], "event_types": [], "session_ids": [], "length": []}
    targets = {"user_id": [], "split": [], "item_id": []}
    for u in range(users):
        start, n = int(r.integers(0, items)), int(r.integers(4, 9))
        items_of = [f"i{(start + j) % items:02d}" for j in range(n + 2)]
        uid = f"u{u:03d}"
        for key, value in (
            ("user_id", uid),
            ("item_ids", items_of[:n]),
            ("event_types", ["view"] * n),
            ("timestamps", [1_700_000_000_000_000 + 60_000_000 * j for j in range(n)]),
            ("session_ids", [f"s{u}"] * n),
            ("length", n),
        ):
            seqs[key].append(value)
        targets["user_id"] += [uid, uid]
        targets["split"] += ["valid", "test"]
        targets["item_id"] += items_of[n:]
    types = {
        "user_id": pa.string(),
        "item_ids": pa.list_(pa.string()),
        "event_types": pa.list_(pa.string()),
        "timestamps": pa.list_(pa.timestamp("us", tz="UTC")),
        "session_ids": pa.list_(pa.string()),
        "length": pa.int32(),
    }
    write_deltalake(f"{root}/sequences", pa.table({k: pa.array(v, types[k]) for k, v in seqs.items()}))
    write_deltalake(f"{root}/sequence_targets", pa.table({k: pa.array(v, pa.string()) for k, v in targets.items()}))


TINY = [
    "train.hidden=16",
    "train.max_len=10",
    "train.batch_size=32",
    "train.epochs=3",
    "train.patience=2",
    "tune.budget.proxy_epochs=2",
    "tune.budget.proxy_user_share=0.5",
    "tune.budget.rerun_top=1",
    "tune.budget.startup_trials=2",
]


def test_trials_train_on_validation_only_and_never_read_the_test_split(tmp_path, monkeypatch):
    import recaug_spark.train.data as data
    import recaug_spark.train.trainer as trainer
    import recaug_spark.tune.evaluate as E
    from recaug_spark.tune.runner import run_tune

    _tiny_warehouse(tmp_path / "wh")
    cfg = _cfg(tmp_path, "tune.budget.n_trials=3", *TINY)
    splits, trained = [], []
    real_split_reader, real_train = E.read_split_targets, trainer.train

    def spy_split(uri, version, split):
        splits.append(split)
        return real_split_reader(uri, version, split)

    def refuse(*args, **kwargs):
        raise AssertionError("the search read the whole targets table (test split included)")

    def spy_train(config, files, valid, test, **kwargs):
        trained.append((set(valid.column("split").to_pylist()), set(test.column("split").to_pylist()), config.epochs))
        return real_train(config, files, valid, test, **kwargs)

    monkeypatch.setattr(E, "read_split_targets", spy_split)
    monkeypatch.setattr(data, "read_targets", refuse)
    monkeypatch.setattr(trainer, "train", spy_train)
    outcome = run_tune(cfg, E.TrialEvaluator(cfg, E.pin_inputs(str(tmp_path / "wh"))), log=lambda line: None)
    assert splits == ["valid"]  # read once, the validation rows only
    assert trained and all(v == {"valid"} and t == {"valid"} for v, t, _ in trained)
    assert {epochs for _, _, epochs in trained} <= {2, 3}  # proxy and full budgets
    trials = [r for r in outcome.records if r["trial"] >= 0]
    assert len(trials) == 3 and all(r["proxy_seconds"] > 0 for r in trials)
    assert all(0 < r["proxy_score"] <= 1 for r in trials if r["state"] == "COMPLETE")
    assert outcome.records[-1]["state"] == "BASELINE" and outcome.records[-1]["full_score"] > 0


def test_trial_rows_are_the_augment_stages_rows_for_the_policy(tmp_path):
    """A trial trains on what the augment stage writes: the real rows, then one row per user and copy."""
    from recaug_spark.tune.evaluate import TrialEvaluator, pin_inputs, write_trial_rows

    _tiny_warehouse(tmp_path / "wh", users=30)
    cfg = _cfg(tmp_path, *TINY)
    policy = policy_from_params(
        {"chains": "crop+mask", "crop.crop.eta": 0.5, "mask.mask.gamma": 0.3, "consume": "rows"}, cfg.tune.space
    )
    evaluator = TrialEvaluator(cfg, pin_inputs(str(tmp_path / "wh")))
    files = write_trial_rows(evaluator.sequences(1.0), evaluator.compile(policy), cfg, tmp_path)
    assert {chain: sum(f.rows for f in fs) for chain, fs in files.items()} == {"real": 30, "crop": 30, "mask": 30}
    (tmp_path / "again").mkdir()
    again = write_trial_rows(evaluator.sequences(1.0), evaluator.compile(policy), cfg, tmp_path / "again")
    read = [pq.read_table(f.path).column("item_ids").to_pylist() for fs in (files["mask"], again["mask"]) for f in fs]
    assert read[0] == read[1] and any("[mask]" in items for items in read[0])  # same seed, same rows


def test_history_round_trips_through_delta_and_the_report_renders_from_it(tmp_path):
    from deltalake import write_deltalake

    from recaug_spark.tune.report import render_report
    from recaug_spark.tune.runner import run_tune

    cfg = _cfg(tmp_path, "tune.budget.n_trials=6")
    outcome = run_tune(cfg, Planted(), log=lambda line: None)
    other = [dict(r, study="other") for r in outcome.records[:2]]
    write_deltalake(str(tmp_path / "tune_trials"), H.history_table([*outcome.records, *other]), partition_by=["study"])
    back = H.read_history(str(tmp_path / "tune_trials"), "default")
    assert back == outcome.records
    report = render_report(tmp_path / "r", back, study="default", metric="ndcg@10")
    text = report.read_text()
    assert f"trial {outcome.best['trial']}" in text and "Spearman" in text and "Not confirmed on test" in text


def test_rank_correlation_and_best_record_on_known_rows():
    rows = [
        {"trial": i, "state": "COMPLETE", "policy_key": f"p{i}", "proxy_score": p, "full_score": f}
        for i, (p, f) in enumerate([(0.1, 0.3), (0.2, 0.2), (0.3, 0.1), (0.4, None)])
    ]
    c = H.rank_correlation(rows)
    assert c["n"] == 3 and c["rho"] == pytest.approx(-1.0)
    assert H.best_record(rows)["trial"] == 0  # the best full score, not the best proxy
    assert math.isnan(H.rank_correlation(rows[:2])["rho"])


def test_a_best_policy_that_loses_to_the_baseline_is_reported_as_no_help(tmp_path):
    """The search always has a best trial; when the real-only baseline scores higher under the full
    budget, the log, the layer's header and the report say that no policy helps."""
    from recaug_spark.tune.runner import run_tune

    class BaselineBest(Planted):
        def __call__(self, policy, budget, report):
            result = super().__call__(policy, budget, report)
            return dict(result, score=2.0) if not policy.chains else result

    for evaluator, beats in ((Planted(), True), (BaselineBest(), False)):
        lines = []
        cfg = _cfg(tmp_path / str(beats), "tune.budget.n_trials=4")
        outcome = run_tune(cfg, evaluator, log=lines.append)
        verdict = H.baseline_verdict(outcome.records)
        baseline = next(r["full_score"] for r in outcome.records if r["trial"] < 0)
        change = (outcome.best["full_score"] - baseline) / baseline
        assert (change > 0) is beats
        expected = "it beats the real-only baseline" if beats else "it does not beat the real-only baseline"
        assert verdict.startswith(expected) and f"{change:+.2%}" in verdict
        assert verdict in lines[-2]  # the "best policy" log line
        assert f"# Verdict: {verdict}." in outcome.layer_path.read_text()
        assert f"; {verdict}." in outcome.report_path.read_text()
    no_full = [dict(r, full_score=None) for r in outcome.records]
    assert H.baseline_verdict(no_full) is None  # nothing re-run in full: no verdict


def test_the_report_warns_when_proxies_stopped_at_their_epoch_cap():
    from recaug_spark.tune.report import proxy_cap_line

    rows = [{"trial": i, "state": state, "proxy_cap_hit": cap}
            for i, (state, cap) in enumerate([("COMPLETE", True), ("COMPLETE", False), ("PRUNED", None)])]
    rows.append({"trial": -1, "state": "COMPLETE", "proxy_cap_hit": True})  # the baseline: not a proxy trial
    assert proxy_cap_line(rows).startswith("Proxy trials stopped by the epoch cap: 1 of 2 complete. **Warning:**")
    converged = [dict(r, proxy_cap_hit=False) for r in rows]
    assert proxy_cap_line(converged) == "Proxy trials stopped by the epoch cap: 0 of 2 complete."


def test_a_trial_reports_the_trainers_exact_validation_scores_and_a_prune_stops_it(tmp_path):
    """The evaluator reports through the trainer's ``on_epoch`` callback: the scores are the metrics
    themselves (not the log line's 4-decimal text), and the pruning exception ends the trial at that
    epoch, its scratch rows removed."""
    import optuna

    from recaug_spark.tune.evaluate import Budget, TrialEvaluator, pin_inputs

    _tiny_warehouse(tmp_path / "wh")
    cfg = _cfg(tmp_path, *TINY)
    (tmp_path / "scratch").mkdir()
    evaluator = TrialEvaluator(cfg, pin_inputs(str(tmp_path / "wh")), scratch=str(tmp_path / "scratch"))
    policy = policy_from_params({"chains": "crop", "crop.crop.eta": 0.6, "consume": "rows"}, cfg.tune.space)
    reported = []
    out = evaluator(policy, Budget("proxy", 3), lambda epoch, score: reported.append((epoch, score)))
    assert [e for e, _ in reported] == [0, 1, 2] and out["epochs_run"] == 3
    assert dict(reported)[out["best_epoch"]] == out["score"]  # bit for bit: the value the trial returns

    def prune(epoch, score):
        reported.append((epoch, score))
        if epoch == 1:
            raise optuna.TrialPruned(f"epoch {epoch}")

    reported.clear()
    with pytest.raises(optuna.TrialPruned):
        evaluator(policy, Budget("proxy", 3), prune)
    assert [e for e, _ in reported] == [0, 1] and not list((tmp_path / "scratch").iterdir())
