"""The policy search itself: an Optuna study on the validation split, resumable, pruned, parallel.

* **Sampler and pruner** (Optuna): TPE (seeded by ``tune.sampler_seed``) after
  ``budget.startup_trials`` random ones; each trial reports its validation score after every epoch
  (the trainer's ``on_epoch`` callback, ``evaluate.epoch_reporter``) and is stopped by the median
  pruner (below the median of earlier trials at the same epoch, after ``budget.warmup_epochs``) or
  by successive halving.
* **Storage**: an Optuna journal file (``JournalFileBackend``, append-only, safe for several
  processes on one file system) in the study folder. A crash loses at most the trials that were
  running: the next ``recaug tune`` of the study (which holds ``study.lock`` while it runs, so that
  no other driver shares the study) marks them failed and queues their parameters again, and runs
  only the trials still missing from ``budget.n_trials`` finished (complete or pruned) ones.
* **Parallel**: ``budget.n_jobs`` > 1 runs that many worker processes (spawned) on the same
  storage, each drawing, training and reporting its own trials (Optuna's multi-process pattern).
  The missing trials are split into exact quotas, so the study ends with exactly ``n_trials``
  finished ones; a round whose failed trials leave some missing is followed by another round.
* **Sampler seeds** (:func:`sampler_seed`): a fresh study's first (or only) worker draws with
  ``tune.sampler_seed``; every other worker, and every later session of the study, draws with a
  seed derived from it, the trials already stored and the worker number. Two workers with one
  seed would propose the same parameters, and a resumed study would replay its first session's
  random draws. A serial search is reproducible; a parallel one is not in trial order (each TPE
  draw conditions on whichever trials happened to finish first), only in its invariants: no trial
  repeated or lost, exactly ``n_trials`` finished (tests/test_tune_parallel.py).
* **Full re-runs**: the ``budget.rerun_top`` best proxy trials and the real-only baseline are
  trained again with the full budget (in ``budget.n_jobs`` worker processes too); each result is
  saved as ``full/<policy key>.json`` in the study folder as it ends, so an interrupted re-run phase
  also resumes.

``run_study(cfg, evaluate)``: ``evaluate(policy, budget, report)`` is a ``evaluate.TrialEvaluator``
(or any callable with its contract: tests plant a known best policy with one).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from recaug_spark.tune.evaluate import Budget, TuneError
from recaug_spark.tune.space import Policy, policy_from_params, suggest_policy

Evaluate = Callable[..., dict]
FINISHED = ("COMPLETE", "PRUNED")


def study_dir(cfg) -> Path:
    """The study folder: ``tune.dir``, else ``<run.warehouse>/tune/<name>`` (a local folder)."""
    from recaug_spark.paths import is_uri

    if cfg.tune.dir:
        return Path(cfg.tune.dir)
    if is_uri(cfg.run.warehouse) and not cfg.run.warehouse.startswith("file:"):
        raise TuneError(f"run.warehouse {cfg.run.warehouse} is not a local folder: set tune.dir to one")
    return Path(cfg.run.warehouse.removeprefix("file://")) / "tune" / cfg.tune.name


def budgets(cfg) -> tuple[Budget, Budget]:
    """(proxy, full) budgets of the config."""
    b = cfg.tune.budget
    return Budget("proxy", b.proxy_epochs, b.proxy_user_share), Budget("full", b.full_epochs or cfg.train.epochs, 1.0)


def sampler_seed(base: int, stored_trials: int, worker: int) -> int:
    """The sampler seed of one worker of one session: ``base`` for the first worker of a fresh study,
    else a seed derived from (base, trials already stored, worker), distinct between workers and
    sessions, the same for the same study state."""
    import numpy as np

    if stored_trials == 0 and worker == 0:
        return base
    return int(np.random.SeedSequence([base, stored_trials, worker]).generate_state(1)[0])


def open_study(cfg, folder: Path, *, seed: int | None = None):
    """The study on its journal file (created on first use), with the configured pruner and a TPE
    sampler seeded with ``seed`` (default: :func:`sampler_seed` of the first worker, given the
    trials stored)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    folder.mkdir(parents=True, exist_ok=True)
    b = cfg.tune.budget
    pruner = {
        "median": optuna.pruners.MedianPruner(n_startup_trials=b.startup_trials, n_warmup_steps=b.warmup_epochs),
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, b.warmup_epochs)),
        "none": optuna.pruners.NopPruner(),
    }[b.pruner]
    storage = JournalStorage(JournalFileBackend(str(folder / "study.journal")))
    study = optuna.create_study(
        study_name=cfg.tune.name, storage=storage, direction="maximize", pruner=pruner, load_if_exists=True
    )
    if seed is None:
        seed = sampler_seed(cfg.tune.sampler_seed, len(study.get_trials(deepcopy=False)), 0)
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=b.startup_trials)
    return study


@contextlib.contextmanager
def study_lock(folder: Path):
    """Holds ``study.lock`` (one driver per study); fails at once when another process holds it."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "study.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TuneError(f"another `recaug tune` is running the study in {folder}") from None
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def requeue_interrupted(study) -> list[int]:
    """Trials left running by a crashed driver: marked failed, their parameters queued again (the
    caller holds the study lock, so no live process owns them). Returns their numbers."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
    return [t.number for t in stale]


def finished_count(study) -> int:
    return sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))


def objective(space, evaluate: Evaluate, budget: Budget):
    """The Optuna objective: draw a policy, evaluate it under ``budget`` reporting every epoch's
    validation score (pruned trials stop there), record best epoch, cap hit and seconds."""
    import time

    import optuna

    def run(trial) -> float:
        policy = suggest_policy(trial, space)
        trial.set_user_attr("policy", policy.describe())
        trial.set_user_attr("policy_key", policy.key())
        started = time.perf_counter()

        def report(epoch: int, score: float) -> None:
            trial.report(score, epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", epoch)
                raise optuna.TrialPruned(f"validation {score:.4f} at epoch {epoch}")

        try:
            out = evaluate(policy, budget, report)
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - started)
        for key in ("best_epoch", "cap_hit", "epochs_run"):
            trial.set_user_attr(key, out[key])
        return out["score"]

    return run


def optimize(study, cfg, evaluate: Evaluate, budget: Budget, trials: int) -> None:
    """Up to ``trials`` more trials in this process, stopping once the study has ``n_trials`` finished."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    stop = MaxTrialsCallback(cfg.tune.budget.n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
    study.optimize(
        objective(cfg.tune.space, evaluate, budget),
        n_trials=trials,
        callbacks=[stop],
        catch=(TuneError,),
        gc_after_trial=True,
    )


def _worker(cfg_json: str, folder: str, factory: Callable[[Any], Evaluate], trials: int, seed: int) -> int:
    """One worker process of a parallel search: its own evaluator and sampler seed on the shared storage."""
    from recaug_spark.config import validate

    cfg = validate(json.loads(cfg_json))
    study = open_study(cfg, Path(folder), seed=seed)
    optimize(study, cfg, factory(cfg), budgets(cfg)[0], trials)
    return os.getpid()


def quotas(missing: int, jobs: int) -> list[int]:
    """``missing`` trials split over at most ``jobs`` workers, as evenly as possible (sum: ``missing``)."""
    jobs = max(1, min(jobs, missing))
    return [missing // jobs + (i < missing % jobs) for i in range(jobs)]


def search(
    cfg,
    evaluate: Evaluate | None = None,
    *,
    factory: Callable[[Any], Evaluate] | None = None,
    log: Callable[[str], None] = print,
):
    """The search phase: resume the study, then run the missing trials in rounds (in ``n_jobs`` worker
    processes, which build their evaluator with ``factory(cfg)``, or here with ``evaluate``) until
    ``n_trials`` are finished or a round finishes none (its trials failed). Returns the study."""
    folder = study_dir(cfg)
    study = open_study(cfg, folder)
    requeued = requeue_interrupted(study)
    if requeued:
        log(f"[tune] trial(s) {requeued} were interrupted: queued again")
    while True:
        finished = finished_count(study)
        missing = cfg.tune.budget.n_trials - finished
        log(f"[tune] study {cfg.tune.name} in {folder}: {finished} finished trial(s), {max(missing, 0)} to run")
        if missing <= 0:
            return study
        shares = quotas(missing, cfg.tune.budget.n_jobs)
        if len(shares) == 1:
            optimize(study, cfg, evaluate if evaluate is not None else factory(cfg), budgets(cfg)[0], missing)
        else:
            _parallel_round(cfg, folder, factory, shares, len(study.get_trials(deepcopy=False)))
        if finished_count(study) == finished:
            log("[tune] no trial finished in the last round (see the failed trials): stopping")
            return study


def _parallel_round(cfg, folder: Path, factory, shares: list[int], stored: int) -> None:
    """One round of worker processes, worker ``i`` running ``shares[i]`` trials with its own sampler seed."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if factory is None:
        raise TuneError("tune.budget.n_jobs > 1 needs an evaluator factory (each worker process builds its own)")
    with ProcessPoolExecutor(len(shares), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(
                _worker, cfg.to_json(), str(folder), factory, share, sampler_seed(cfg.tune.sampler_seed, stored, i)
            )
            for i, share in enumerate(shares)
        ]
        for future in futures:
            future.result()


@dataclass(frozen=True)
class FullRun:
    """A policy trained with the full budget (validation only)."""

    policy: Policy
    result: dict
    trials: tuple[int, ...]  # the study trials with this policy ((): the baseline)


def rerun_in_full(study, cfg, evaluate: Evaluate | None = None, *, factory: Callable[[Any], Evaluate] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, FullRun]:
    """The baseline and the ``rerun_top`` best complete proxy trials (distinct policies) with the full
    budget, by policy key; results saved in ``full/`` of the study folder and reused when present.
    The runs still missing train in ``budget.n_jobs`` spawned processes when ``factory`` is given
    (each worker pins the warehouse's current tables, as the search's workers do), else here with
    ``evaluate`` (or ``factory(cfg)``), one after another. Each result is saved as its run ends."""
    chosen = _chosen_for_full(study, cfg)
    folder = study_dir(cfg) / "full"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [(policy, folder / f"{key}.json") for key, (policy, _) in chosen.items()
               if not (folder / f"{key}.json").exists()]
    _train_missing(cfg, missing, evaluate, factory)
    runs = {}
    for key, (policy, numbers) in chosen.items():
        result = json.loads((folder / f"{key}.json").read_text())
        log(
            f"[tune] full run of {policy.describe()}: validation {result['score']:.4f} "
            f"(best epoch {result['best_epoch']}, cap hit {result['cap_hit']})"
        )
        runs[key] = FullRun(policy, result, tuple(numbers))
    return runs


def _chosen_for_full(study, cfg) -> dict[str, tuple[Policy, list[int]]]:
    """The baseline, then the ``rerun_top`` best complete trials' distinct policies (best first), each
    with the numbers of the trials that drew it."""
    from optuna.trial import TrialState

    complete = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: (-t.value, t.number)
    )
    baseline = Policy((), None)
    chosen: dict[str, tuple[Policy, list[int]]] = {baseline.key(): (baseline, [])}
    for trial in complete:
        policy = policy_from_params(trial.params, cfg.tune.space)
        if policy.key() not in chosen and len(chosen) <= cfg.tune.budget.rerun_top:
            chosen[policy.key()] = (policy, [])
        if policy.key() in chosen:
            chosen[policy.key()][1].append(trial.number)
    return chosen


def _train_missing(cfg, missing: list[tuple[Policy, Path]], evaluate, factory) -> None:
    """Train each missing full run and save its result to its path. In worker processes, each worker
    saves its own result, so a crash of the driver or of another run loses no finished run; after a
    failure the queued runs are cancelled (the next ``recaug tune`` trains them)."""
    jobs = min(cfg.tune.budget.n_jobs, len(missing))
    if jobs > 1 and factory is not None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_full_worker, cfg.to_json(), factory, policy, str(path)) for policy, path in missing]
            try:
                for future in as_completed(futures):
                    future.result()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # the running ones still save theirs
                raise
        return
    if missing and evaluate is None and factory is None:
        raise TuneError("the full re-runs need an evaluator or an evaluator factory")
    evaluator = evaluate if evaluate is not None or not missing else factory(cfg)
    for policy, path in missing:
        save_result(path, evaluator(policy, budgets(cfg)[1], None))


def _full_worker(cfg_json: str, factory: Callable[[Any], Evaluate], policy: Policy, path: str) -> None:
    """One full run in a worker process, with the worker's own evaluator; saves its result."""
    from recaug_spark.config import validate

    cfg = validate(json.loads(cfg_json))
    save_result(Path(path), factory(cfg)(policy, budgets(cfg)[1], None))


def save_result(path: Path, result: dict) -> None:
    """A full run's result as JSON, written to a temporary file and moved into place: a crash
    leaves no half-written result."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
