"""recaug tune with ``budget.n_jobs`` > 1 (worker processes on one journal) and the sampler seeds.

What is tested, and why not "parallel = serial": Optuna's TPE is not order-deterministic across
processes: each worker's draw conditions on whichever trials happened to finish before it, and the
median pruner on whichever trials had completed, so which parameters the study tries depends on
timing. What must hold whatever the timing (and is tested on a known landscape): every trial is
evaluated exactly once (none repeated, none lost), the journal ends with exactly ``n_trials``
finished trials and no running one, reads back the same from a fresh storage, and a rerun of the
finished study trains nothing. Where the draws do not depend on timing (the random start-up phase,
no pruner), the parallel search is reproducible as a set: two runs draw the same trials. The
sampler-seed defect these tests caught: every worker, and every resumed session, used
``tune.sampler_seed`` itself, so two workers proposed the same parameters trial for trial and a
resumed study replayed its first session's random draws.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import time

from recaug_spark.config import load_config
from recaug_spark.tune.study import finished_count, open_study, quotas, sampler_seed, search, study_dir


def _cfg(tmp_path, *overrides):
    return load_config(
        overrides=[
            f"run.warehouse={tmp_path / 'wh'}",
            f"tune.output={tmp_path / 'tuned.yaml'}",
            "tune.space.include_none=false",  # every policy has a continuous parameter: equal params = a repeat
            "tune.budget.proxy_epochs=3",
            "tune.budget.warmup_epochs=1",
            *overrides,
        ]
    )


class Logged:
    """A known landscape (crop with eta near 0.75 best), reported over the epochs; every evaluation
    appends (process id, policy key, score) to ``path``, so the test sees what each worker ran."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, policy, budget, report):
        score = 0.5
        if policy.chains == ("crop",):
            score = 1.0 - (policy.branches[0].params["crop"]["eta"] - 0.75) ** 2
        try:
            for epoch in range(budget.epochs):
                time.sleep(0.05)  # long enough for the workers' trials to overlap
                if report is not None:
                    report(epoch, score * (epoch + 1) / budget.epochs)
        finally:
            with open(self.path, "a") as handle:  # pruned trials too (report raised)
                handle.write(json.dumps([os.getpid(), policy.key(), score]) + "\n")
        return {"score": score, "best_epoch": budget.epochs - 1, "cap_hit": True, "epochs_run": budget.epochs}


def logged(path: str, cfg) -> Logged:
    """The evaluator factory each worker process calls (module level: it is pickled to the workers)."""
    return Logged(path)


def _evaluations(path) -> list[tuple[int, str, float]]:
    return [tuple(json.loads(line)) for line in open(path)] if os.path.exists(path) else []


def test_quotas_split_the_missing_trials_exactly_and_seeds_differ_by_worker_and_session():
    assert quotas(7, 2) == [4, 3] and quotas(1, 4) == [1] and quotas(8, 3) == [3, 3, 2]
    assert sampler_seed(5, 0, 0) == 5  # a fresh study's first worker: tune.sampler_seed itself
    seeds = {sampler_seed(5, stored, worker) for stored in (0, 4) for worker in (0, 1, 2)}
    assert len(seeds) == 6 and sampler_seed(5, 4, 1) == sampler_seed(5, 4, 1)


def test_parallel_workers_neither_repeat_nor_lose_trials_and_the_journal_holds_exactly_n_trials(tmp_path):
    cfg = _cfg(tmp_path, "tune.budget.n_trials=8", "tune.budget.n_jobs=2", "tune.budget.startup_trials=4")
    path, lines = str(tmp_path / "evaluations.jsonl"), []
    study = search(cfg, factory=functools.partial(logged, path), log=lines.append)
    evaluations = _evaluations(path)
    assert len({pid for pid, _, _ in evaluations}) == 2 and os.getpid() not in {p for p, _, _ in evaluations}
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(8))
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"} and finished_count(study) == 8  # no overshoot
    # each trial evaluated exactly once: the evaluations are the trials' policies, one for one
    assert collections.Counter(key for _, key, _ in evaluations) == collections.Counter(
        t.user_attrs["policy_key"] for t in trials
    )
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 8  # no parameters drawn twice
    completed = [t for t in trials if t.state.name == "COMPLETE"]
    scores = {key: score for _, key, score in evaluations}
    assert completed and all(t.value == scores[t.user_attrs["policy_key"]] for t in completed)

    again = open_study(cfg, study_dir(cfg))  # the journal read back by a fresh storage
    assert [(t.number, t.state, t.params, t.value) for t in again.get_trials()] == [
        (t.number, t.state, t.params, t.value) for t in trials
    ]
    search(cfg, factory=functools.partial(logged, path), log=lines.append)  # finished: nothing to run
    assert len(_evaluations(path)) == 8 and lines[-1].endswith("8 finished trial(s), 0 to run")


def test_the_random_phase_of_a_parallel_search_draws_the_same_trials_every_time(tmp_path):
    settings = ("tune.budget.n_trials=6", "tune.budget.n_jobs=2", "tune.budget.startup_trials=20")
    runs = []
    for name in ("first", "second"):
        cfg = _cfg(tmp_path / name, *settings, "tune.budget.pruner=none")
        study = search(cfg, factory=functools.partial(logged, str(tmp_path / f"{name}.jsonl")), log=lambda _: None)
        runs.append(sorted((json.dumps(t.params, sort_keys=True), t.value) for t in study.get_trials()))
    assert len(runs[0]) == 6 and runs[0] == runs[1]


def test_a_resumed_session_does_not_replay_the_first_sessions_random_draws(tmp_path):
    first = _cfg(tmp_path, "tune.budget.n_trials=3", "tune.budget.startup_trials=10")
    study = search(first, Logged(str(tmp_path / "e.jsonl")), log=lambda _: None)
    extended = _cfg(tmp_path, "tune.budget.n_trials=6", "tune.budget.startup_trials=10")
    study = search(extended, Logged(str(tmp_path / "e.jsonl")), log=lambda _: None)
    params = [json.dumps(t.params, sort_keys=True) for t in study.get_trials()]
    assert len(params) == 6 and len(set(params)) == 6  # the old code drew trials 3-5 equal to 0-2


def _searched_in_parallel(tmp_path):
    """A finished 4-trial search in 2 workers: (config, study, evaluations file, evaluations so far)."""
    cfg = _cfg(tmp_path, "tune.budget.n_trials=4", "tune.budget.n_jobs=2", "tune.budget.rerun_top=3",
               "tune.budget.pruner=none")
    path = str(tmp_path / "evaluations.jsonl")
    study = search(cfg, factory=functools.partial(logged, path), log=lambda _: None)
    return cfg, study, path, len(_evaluations(path))


def test_full_reruns_train_in_the_worker_processes_with_the_results_a_serial_rerun_gives(tmp_path):
    from recaug_spark.tune.study import budgets, rerun_in_full

    cfg, study, path, searched = _searched_in_parallel(tmp_path)
    lines = []
    runs = rerun_in_full(study, cfg, factory=functools.partial(logged, path), log=lines.append)
    full = _evaluations(path)[searched:]
    assert len(full) == len(runs) == 4  # the baseline and the 3 best distinct policies, each trained once
    assert os.getpid() not in {pid for pid, _, _ in full} and len({pid for pid, _, _ in full}) == 2
    serial = Logged(str(tmp_path / "serial.jsonl"))
    for key, run in runs.items():
        assert run.result == serial(run.policy, budgets(cfg)[1], None)
    assert len(lines) == 4
    again = rerun_in_full(study, cfg, factory=functools.partial(logged, path), log=lambda _: None)
    assert len(_evaluations(path)) == searched + 4 and again == runs  # saved results reused, nothing retrained


class FailsOnBaseline(Logged):
    """``Logged``, except that the real-only baseline's full run raises at once."""

    def __call__(self, policy, budget, report):
        if not policy.chains:
            raise RuntimeError("planted failure")
        return super().__call__(policy, budget, report)


def fails_on_baseline(path: str, cfg) -> FailsOnBaseline:
    return FailsOnBaseline(path)


def test_a_failed_full_rerun_keeps_the_results_of_the_runs_that_finished(tmp_path):
    import pytest

    from recaug_spark.tune.study import rerun_in_full

    cfg, study, path, searched = _searched_in_parallel(tmp_path)
    with pytest.raises(RuntimeError, match="planted failure"):
        rerun_in_full(study, cfg, factory=functools.partial(fails_on_baseline, path), log=lambda _: None)
    saved = sorted(p.name for p in (study_dir(cfg) / "full").glob("*.json"))
    assert saved and len(saved) == len(_evaluations(path)) - searched  # every run that finished was saved
    assert not list((study_dir(cfg) / "full").glob("*.tmp"))
    runs = rerun_in_full(study, cfg, factory=functools.partial(logged, path), log=lambda _: None)
    assert len(runs) == 4 and len(_evaluations(path)) - searched == 4  # only the missing runs trained again
