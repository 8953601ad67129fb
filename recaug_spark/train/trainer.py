"""Train a sequential recommender on a pinned Delta snapshot and evaluate it (imports torch).

Entry points (one training loop):

* ``train(config, train_files, valid_targets, test_targets)`` — one process, files already listed
  (``data.pinned_files``); the users' real histories come from the ``real`` files among them unless
  ``history_files`` is given.
* ``train_rank(config, table_uri, version=..., targets_uri=...)`` — the per-rank function for
  ``pyspark.ml.torch.distributor.TorchDistributor`` (or torchrun): with ``WORLD_SIZE`` > 1 in the
  environment it joins a process group (gloo on CPU, nccl on GPU), wraps the model in
  DistributedDataParallel and reads only its own row-balanced share of the pinned files. Metric
  sums are all-reduced, so early-stopping decisions agree on every rank; rank 0 builds the result
  and broadcasts it, so every rank returns the same dict (TorchDistributor's local mode keeps
  whichever rank's return value is written last).
* ``train_seeds(config, ...)`` — ``train`` (or another ``run``) once per seed, with the mean and
  95% CI of every metric.

Distributed, from a driver::

    TorchDistributor(num_processes=2, local_mode=True, use_gpu=False).run(
        train_rank, cfg.model_dump(mode="json"), "wh/augmented_sequences", version=4,
        chains=["real", "crop"], targets_uri="wh/sequence_targets")

The loop (as in the S3-Rec/ICLRec SASRec baseline): Adam (lr 1e-3, betas 0.9/0.999), batches of
256 sequences, BCE with one sampled negative per position; validation every ``eval_every`` epochs
on the early-stopping metric (NDCG@10) with ``patience``; the best state is kept in memory (and
saved with its vocabulary when ``checkpoint_path`` is given) and the test split is evaluated with
it. Randomness: ``torch.manual_seed(seed)`` before building the model (the same weights on every
rank), then ``seed + rank`` (dropout), and generators keyed by (seed, epoch, rank) for shuffling and
negatives, so the same seed gives the same metrics on the same device and thread count.

The loop in parts: ``_run_epochs`` calls ``_train_epoch`` (optimizer steps over one epoch's
batches) and, every ``eval_every`` epochs, ``_validate``; an ``EarlyStopping`` keeps the best
score, epoch, metrics and state and says when patience has run out; ``_test`` evaluates the best
state and ``_save_checkpoint`` writes it. What is trained is an ``Objective``: the batches of an
epoch and the loss of a batch. ``next_item_objective`` (the default) pairs
``SequenceTrainingData`` batches with the configured loss (``training_loss``: ``train.loss`` =
bce | ce | sampled_softmax). The loop only moves a batch's tensors to the device and calls
``loss(model, *batch)``, so an objective whose batches carry more tensors (a per-row loss weight,
two augmented views for a contrastive term) is another factory passed as ``objective=`` to
``train`` / ``train_rank``, not a change to the loop.

Example::

    cfg = TrainConfig(epochs=200, patience=10, num_threads=2)
    files = pinned_files("wh/augmented_sequences", version=4, chains=["real", "crop"])
    targets = read_targets("wh/sequence_targets")
    result = train(cfg, files, targets, targets)
    result["test"]["ndcg@10"]
"""

from __future__ import annotations

import functools
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from recaug_spark.schemas import REAL_CHAIN
from recaug_spark.train import metrics as M
from recaug_spark.train.config import TrainConfig
from recaug_spark.train.data import (
    CHAIN_COLUMN,
    DataFile,
    EvalSet,
    Sequences,
    SequenceTrainingData,
    TrainDataError,
    Vocabulary,
    mix_seed,
    pinned_files,
    read_sequences,
    read_targets,
    shard_files,
    targets_of,
)
from recaug_spark.train.progress import Progress, fingerprint

CHECKPOINT_FORMAT = 1

# ``train(..., on_epoch=)``: called with (epoch, validation metrics) after each validation; may raise to stop.
EpochCallback = Callable[[int, dict], None]

# Settings that only choose the test breakdown's groups, never what is trained: left out of a
# resumable run's fingerprint, so that progress saved before a group existed still resumes.
# (short_history_max and head_item_share choose groups too, but were in the fingerprint of every
# progress file saved so far; leaving them out now would orphan those files.)
BREAKDOWN_ONLY = ("cold_history_max",)
# Left out of the fingerprint too: the list of a study's seeds. One run trains one seed (in the
# fingerprint on its own), so splitting ``--seeds 1,2,3`` over processes resumes the same runs.
# Progress files saved with the seed list in their fingerprint are still accepted (train()).
NOT_IN_FINGERPRINT = (*BREAKDOWN_ONLY, "seeds")


# ---------------------------------------------------------------- process group helpers

@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Any = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Element-wise sum of a flat dict of numbers across ranks (same keys on every rank)."""
        if not self.active:
            return dict(values)
        import torch
        import torch.distributed as dist

        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return dict(zip(keys, tensor.cpu().tolist()))

    def max_int(self, value: int) -> int:
        if not self.active:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def sum_array(self, array: np.ndarray) -> np.ndarray:
        if not self.active:
            return array
        import torch
        import torch.distributed as dist

        tensor = torch.as_tensor(array, dtype=torch.float64).to(self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().numpy()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's object on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        holder = [obj]
        dist.broadcast_object_list(holder, src=0, device=self.device if self._nccl else None)
        return holder[0]

    @property
    def _nccl(self) -> bool:
        return self.device is not None and getattr(self.device, "type", "cpu") == "cuda"


def resolve_device(setting: str, override=None, local_rank: int = 0):
    """torch.device from the config's ``device`` (auto|cpu|cuda) or an explicit override."""
    import torch

    choice = str(override) if override is not None else setting
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but torch.cuda.is_available() is False")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(choice)


# ---------------------------------------------------------------- objectives

@dataclass(frozen=True)
class Objective:
    """What the loop trains: ``batches(epoch)`` yields one epoch's batches (tuples of CPU tensors)
    and ``loss(epoch)`` gives that epoch's ``loss(model, *batch) -> scalar tensor`` (built once per
    epoch, so that its own random draws can be keyed by the epoch). A batch may hold any number
    of tensors: the loop moves each to the device and passes them on in order.

    ``warmup_epochs``: epochs of a first phase (e.g. pre-training on augmented rows) during which
    early stopping may not stop the run; its patience starts afresh when the phase ends."""

    batches: Callable[[int], Iterable[tuple]]
    loss: Callable[[int], Callable[..., Any]]
    warmup_epochs: int = 0


@dataclass(frozen=True)
class ObjectiveInputs:
    """What an objective factory gets: the settings, this rank's training data and the batch plan
    every objective keeps (``steps`` batches of ``batch_size`` per epoch, the same on every rank)."""

    config: TrainConfig
    data: SequenceTrainingData
    sequences: Sequences  # the sequences ``data`` was built from (keys = user ids), in file order
    vocabulary: Vocabulary
    n_items: int
    seed: int
    rank: int
    batch_size: int
    steps: int


ObjectiveFactory = Callable[[ObjectiveInputs], Objective]


def training_loss(config: TrainConfig, n_items: int, seed: int) -> Callable:
    """``loss(model, inputs, positives, negatives)`` for ``config.loss``; sampled_softmax draws its
    ``loss_negatives`` shared negatives per batch from a generator seeded by ``seed``."""
    import torch

    from recaug_spark.train.models import bce_loss, ce_loss, sampled_softmax_loss

    if config.loss == "bce":
        return bce_loss
    if config.loss == "ce":
        return ce_loss
    generator = torch.Generator().manual_seed(seed)

    def sampled(model, inputs, positives, negatives, weights=None):
        shared = torch.randint(1, n_items + 1, (config.loss_negatives,), generator=generator)
        return sampled_softmax_loss(model, inputs, positives, shared.to(inputs.device), weights)

    return sampled


def next_item_objective(inputs: ObjectiveInputs) -> Objective:
    """The default objective: ``SequenceTrainingData`` batches (input ids, positives, one sampled
    negative per position) under the configured next-item loss (``training_loss``)."""

    def batches(epoch: int):
        return inputs.data.batches(epoch, inputs.batch_size, inputs.seed, inputs.rank, inputs.steps)

    def loss(epoch: int):
        return training_loss(inputs.config, inputs.n_items, mix_seed(inputs.seed, epoch, inputs.rank, 104729))

    return Objective(batches, loss)


# ---------------------------------------------------------------- public entry points

def train(config: TrainConfig, train_files: Sequence[DataFile], valid_targets, test_targets, *,
          history_files: Sequence[DataFile] | None = None, vocabulary: Vocabulary | None = None,
          seed: int | None = None, device=None, checkpoint_path: str | None = None,
          log: Callable[[str], None] | None = None, objective: ObjectiveFactory | None = None,
          progress_path: str | None = None, on_epoch: EpochCallback | None = None) -> dict:
    """Train and evaluate in this process; returns the result dict (see ``_result``).

    ``valid_targets`` / ``test_targets``: the ``sequence_targets`` table (pyarrow, filtered by its
    ``split`` column), or (user_id, item_id) tables, or ``{user_id: item_id}`` dicts.
    ``history_files``: where the users' real training sequences are (default: the files of the
    ``real`` operator chain among ``train_files``, or all of them when the table has no chains).
    ``vocabulary``: default every item of the training files and targets. ``objective``: what to
    train (default ``next_item_objective``). ``progress_path``: save the run's state there after
    every epoch and resume from it if it exists (``recaug_spark.train.progress``); removed at the end.
    ``on_epoch(epoch, metrics)``: called after each validation (after that epoch's log line) with the
    validation metrics the early stopping saw; an exception it raises (e.g. ``optuna.TrialPruned``
    from ``recaug tune``) stops training there and propagates unchanged: no test, no checkpoint.
    """
    history_files = _default_history(train_files) if history_files is None else list(history_files)
    if not history_files:
        raise TrainDataError("train_files hold no 'real' rows to evaluate from: pass history_files "
                             "(e.g. pinned_files(uri, version, chains=['real']) or the sequences table's files)")
    if vocabulary is None:
        targets = target_items(valid_targets, "valid") + target_items(test_targets, "test")
        vocabulary = Vocabulary.from_files(list(train_files) + [f for f in history_files if f not in train_files],
                                           extra=targets)
    run = _Run(config, config.seeds[0] if seed is None else seed, resolve_device(config.device, device), _Dist())
    return _fit(run, read_sequences(train_files, vocabulary), read_sequences(history_files, vocabulary),
                valid_targets, test_targets, vocabulary, checkpoint_path=checkpoint_path, log=log, objective=objective,
                progress_path=progress_path, on_epoch=on_epoch)


def train_rank(config: TrainConfig | dict | str, table_uri: str, *, version: int | None = None,
               chains: Sequence[str] | None = None, targets_uri: str, targets_version: int | None = None,
               items_uri: str | None = None, items_version: int | None = None,
               history_uri: str | None = None, history_version: int | None = None,
               seed: int | None = None, device=None, checkpoint_path: str | None = None,
               objective: ObjectiveFactory | None = None) -> dict:
    """One rank of a distributed run (also works alone): pins the table version, reads its share.

    Ranks and world size come from the environment set by TorchDistributor/torchrun (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Training files are the
    ``chains`` of ``table_uri`` at ``version``; histories for evaluation are the ``real`` chain of the
    same version, or ``history_uri`` (e.g. ``sequences``); the vocabulary is the ``items`` table's
    when ``items_uri`` is given, else rank 0 builds it from all training files and broadcasts it.
    Pass ``version`` explicitly in production: every rank must read the same snapshot.
    """
    config = _as_config(config)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(config.device, device, local_rank)
    with _process_group(device, world_size):
        dist = _Dist(rank, world_size, local_rank, device if world_size > 1 else None)
        files, history_files = _rank_files(table_uri, version, chains, history_uri, history_version, world_size)
        targets = read_targets(targets_uri, targets_version)
        if items_uri is not None:
            vocabulary = Vocabulary.from_items_table(items_uri, items_version)
        else:
            vocabulary = Vocabulary.from_json(dist.broadcast(
                Vocabulary.from_files(files, extra=target_items(targets, None)).to_json() if rank == 0 else None))
        mine = shard_files(files, rank, world_size)
        my_history = shard_files(history_files, rank, world_size) if len(history_files) >= world_size else (
            history_files if rank == 0 else [])
        run = _Run(config, config.seeds[0] if seed is None else seed, device, dist)
        return _fit(run, read_sequences(mine, vocabulary), read_sequences(my_history, vocabulary), targets, targets,
                    vocabulary, checkpoint_path=checkpoint_path, log=None, objective=objective)


def train_seeds(config: TrainConfig, *args, run: Callable[..., dict] | None = None, **kwargs) -> dict:
    """``run(config, *args, seed=s, **kwargs)`` (default ``train``) for each of ``config.seeds``.

    Returns ``{"runs": [result, ...], "test": {metric: mean_ci}, "valid": {metric: mean_ci}}``
    (mean, std and 95% Student-t interval over seeds).
    """
    run = train if run is None else run
    results = [run(config, *args, seed=seed, **kwargs) for seed in config.seeds]
    summary: dict[str, Any] = {"runs": results}
    for split in ("valid", "test"):
        names = [k for k, v in results[0][split].items() if k != "users" and isinstance(v, float)]
        summary[split] = {name: M.mean_ci([r[split][name] for r in results]) for name in names}
    return summary


def load_checkpoint(path: str, map_location="cpu"):
    """(model in eval mode, vocabulary, TrainConfig) from a checkpoint written by a training run."""
    import torch

    from recaug_spark.train.models import build_model

    saved = torch.load(path, map_location=map_location, weights_only=False)
    if saved.get("format_version") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {saved.get('format_version')!r}")
    config = TrainConfig(**saved["config"])
    vocabulary = Vocabulary(saved["vocabulary"])
    model = build_model(config.model, vocabulary.n_items, **model_params(config))
    model.load_state_dict(saved["state_dict"])
    return model.eval(), vocabulary, config


def target_items(targets, split: str | None) -> list[str]:
    """The item ids of ``targets`` (of ``split``, or every split), as strings, nulls left out."""
    return [str(i) for i in targets_of(targets, split).column("item_id").to_pylist() if i is not None]


def model_params(config: TrainConfig) -> dict:
    """The keyword arguments of ``models.build_model`` that come from ``config``."""
    return {"hidden": config.hidden, "blocks": config.blocks, "heads": config.heads, "max_len": config.max_len,
            "dropout": config.dropout, "attention_dropout": config.attention_dropout}


# ---------------------------------------------------------------- evaluation

def evaluate(model, eval_set: EvalSet, config: TrainConfig, device, *, popularity: np.ndarray | None = None,
             seed: int = 0, groups: bool = False) -> dict[str, float]:
    """Metric sums (flat dict; ``users`` included) of ``model`` on ``eval_set`` under the configured
    protocol; with ``groups``, also ``<group>/<metric>`` sums for short/long histories and head/tail
    targets (popularity from the training histories). Divide with ``metrics.means_from_sums``."""
    import torch

    from recaug_spark.train.models import trim_leading_padding

    inner = _unwrap(model)
    inner.eval()
    generator = torch.Generator().manual_seed(seed)
    ranks = np.zeros(len(eval_set), np.int64)
    candidates = np.zeros(len(eval_set), np.int64)
    # Batches of similar lengths, each cut to its own width where the model allows it: the same
    # scores, at a fraction of the cost on data whose sequences are mostly shorter than max_len.
    by_length = config.negatives_protocol == "full" and inner.ignores_leading_padding
    with torch.no_grad():
        for index, inputs, targets, history in eval_set.batches(config.eval_batch_size, by_length=by_length):
            offset, (inputs,) = trim_leading_padding(inner, torch.from_numpy(inputs))
            scores = inner.score_all(inputs.to(device), position_offset=offset).float()
            batch_ranks, batch_candidates = _rank_batch(scores, torch.from_numpy(targets), torch.from_numpy(history),
                                                        inner.n_items, config, generator, popularity)
            ranks[index] = batch_ranks.cpu().numpy()
            candidates[index] = batch_candidates.cpu().numpy()
    sums = M.metric_sums(ranks, candidates, config.ks)
    if groups:
        sums.update(_group_sums(ranks, candidates, eval_set, config, popularity))
    return sums


def _rank_batch(scores, targets, history, n_items: int, config: TrainConfig, generator, popularity):
    """(ranks, candidate counts) of one batch's targets under the configured protocol."""
    device = scores.device
    protocol = config.negatives_protocol
    if protocol == "full":
        return M.full_ranks(scores, targets.to(device), history.to(device), config.exclude_history)
    negatives = M.sample_negatives(targets, history, n_items, config.sampled_negatives, generator,
                                   popularity if protocol == "popularity" else None)
    return M.sampled_ranks(scores, targets.to(device), negatives.to(device))


def _group_sums(ranks, candidates, eval_set: EvalSet, config: TrainConfig, popularity) -> dict[str, float]:
    """``<group>/<metric>`` sums for short/long/cold histories and (with popularity) head/tail targets."""
    masks = dict(M.history_length_groups(eval_set.history_lengths, config.short_history_max,
                                         config.cold_history_max))
    if popularity is not None:
        masks.update(M.popularity_groups(eval_set.targets, popularity, config.head_item_share))
    return {f"{name}/{key}": value for name, mask in masks.items()
            for key, value in M.metric_sums(ranks[mask], candidates[mask], config.ks).items()}


# ---------------------------------------------------------------- the training loop

@dataclass(frozen=True)
class _Run:
    """What every part of one training run shares."""

    config: TrainConfig
    seed: int
    device: Any
    dist: _Dist


@dataclass(frozen=True)
class _Inputs:
    """One rank's training data, evaluation users, item popularity and data counts (all ranks)."""

    train: SequenceTrainingData
    valid: EvalSet
    test: EvalSet
    popularity: np.ndarray
    counts: dict[str, float]
    n_items: int


@dataclass
class EarlyStopping:
    """The best validation so far (score, epoch, metrics and a CPU copy of the model state) and
    the patience left: ``should_stop`` is true, and ``stopped_early`` set, once ``patience``
    validations in a row brought no better score."""

    patience: int
    best_score: float = -math.inf
    best_epoch: int = -1
    best_valid: dict[str, float] | None = None
    best_state: dict[str, Any] | None = None
    waited: int = 0
    stopped_early: bool = False

    def observe(self, epoch: int, score: float, valid: dict[str, float], model) -> None:
        if score > self.best_score:
            self.best_score, self.best_epoch, self.best_valid, self.waited = score, epoch, valid, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.waited += 1

    def should_stop(self) -> bool:
        self.stopped_early = self.waited >= self.patience
        return self.stopped_early

    def restore(self, model) -> None:
        """Load the best state into ``model`` (left as is when every score was NaN: no best state)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


def _fit(run: _Run, train_sequences: Sequences, histories: Sequences, valid_targets, test_targets,
         vocabulary: Vocabulary, *, checkpoint_path: str | None, log: Callable[[str], None] | None,
         objective: ObjectiveFactory | None = None, progress_path: str | None = None,
         on_epoch: EpochCallback | None = None) -> dict:
    """One training run on this rank's sequences: set up, the epochs, the test of the best state,
    the checkpoint; every rank returns rank 0's result dict (see ``_result``)."""
    import torch

    started = time.perf_counter()
    config, dist = run.config, run.dist
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    inputs = _prepare(config, train_sequences, histories, valid_targets, test_targets, vocabulary, dist)
    model = _build_model(run, inputs.n_items)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay)
    batch_size = math.ceil(config.batch_size / dist.world_size)
    # a fixed number of steps per epoch: every variant of an experiment gets the same budget
    steps = dist.max_int(config.steps_per_epoch or inputs.train.num_batches(batch_size))
    trained = (objective or next_item_objective)(
        ObjectiveInputs(config, inputs.train, train_sequences, vocabulary, inputs.n_items, run.seed, dist.rank,
                        batch_size, steps))
    validate = functools.partial(_validate, run, model, inputs, mix_seed(run.seed, 7919, dist.rank))
    progress = None
    if progress_path is not None:
        if dist.active:
            raise TrainDataError("progress_path (resumable runs) is for one-process runs only")
        keys = [fingerprint(config.model_dump(mode="json", exclude=set(excluded)), run.seed, inputs.n_items,
                            len(inputs.train), steps, getattr(objective, "settings", None))  # a mode's own settings
                for excluded in (NOT_IN_FINGERPRINT, BREAKDOWN_ONLY)]  # the second: files saved before 2026-12-07
        progress = Progress(Path(progress_path), keys[0], accepted=tuple(keys[1:]))
    history, stopper = _run_epochs(run, model, optimizer, trained, validate, log, progress, on_epoch)
    stopper.restore(_unwrap(model))
    result = _result(run, inputs, stopper, history, steps, _test(run, model, inputs), started)
    if checkpoint_path is not None and dist.rank == 0:
        result["checkpoint"] = _save_checkpoint(checkpoint_path, config, vocabulary, stopper, result["test"])
    if progress is not None:
        progress.clear()
    return dist.broadcast(result)


def _run_epochs(run: _Run, model, optimizer, objective: Objective, validate: Callable[[], dict[str, float]],
                log: Callable[[str], None] | None, progress: Progress | None = None,
                on_epoch: EpochCallback | None = None) -> tuple[list[dict], EarlyStopping]:
    """Epochs until the budget or the patience runs out: (one record per epoch, the early stopping).
    With ``progress``, a saved state is resumed first and the state is saved after every epoch;
    ``on_epoch(epoch, valid)`` follows each validation (and its log line) and may raise to stop."""
    config = run.config
    stopper = EarlyStopping(config.patience)
    first, history = progress.load(_unwrap(model), optimizer, stopper) if progress else (0, [])
    if stopper.stopped_early:
        return history, stopper
    loop_started = time.perf_counter()  # for the ETA of the epoch log line
    for epoch in range(first, config.epochs):
        start, valid = time.perf_counter(), None
        losses = run.dist.sum(_train_epoch(model, optimizer, objective, epoch, run.device))
        record = {"epoch": epoch, "loss": losses["loss"] / max(losses["batches"], 1),
                  "train_seconds": time.perf_counter() - start}
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            start = time.perf_counter()
            valid = validate()
            score = valid[config.early_stopping_metric]
            record.update({f"valid_{config.early_stopping_metric}": score, "eval_seconds": time.perf_counter() - start})
            stopper.observe(epoch, score, valid, _unwrap(model))
        if epoch + 1 == objective.warmup_epochs:
            stopper.waited = 0  # the next phase gets its whole patience
        history.append(record)
        stop = epoch + 1 >= objective.warmup_epochs and stopper.should_stop()
        if progress is not None:
            progress.save(epoch, _unwrap(model), optimizer, stopper, history)
        if log is not None and run.dist.rank == 0:
            eta = (time.perf_counter() - loop_started) / (epoch + 1 - first) * (config.epochs - epoch - 1)
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
                + f" epoch {epoch + 1}/{config.epochs} eta≤{eta:.0f}s")
        if on_epoch is not None and valid is not None:
            on_epoch(epoch, dict(valid))
        if stop:
            break
    return history, stopper


def _train_epoch(model, optimizer, objective: Objective, epoch: int, device) -> dict[str, float]:
    """One epoch of optimizer steps on this rank: ``{"loss": sum of batch losses, "batches": count}``."""
    model.train()
    loss_of = objective.loss(epoch)
    total, batches = 0.0, 0
    for batch in objective.batches(epoch):
        loss = loss_of(model, *(tensor.to(device) for tensor in batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        batches += 1
    return {"loss": total, "batches": batches}


def _validate(run: _Run, model, inputs: _Inputs, seed: int) -> dict[str, float]:
    """Validation metrics (means over every rank's users)."""
    sums = evaluate(model, inputs.valid, run.config, run.device, popularity=inputs.popularity, seed=seed)
    return M.means_from_sums(run.dist.sum(sums))


def _test(run: _Run, model, inputs: _Inputs) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Test metrics (means over every rank's users) and their short/long/head/tail breakdown."""
    sums = run.dist.sum(evaluate(model, inputs.test, run.config, run.device, popularity=inputs.popularity,
                                 seed=mix_seed(run.seed, 7927, run.dist.rank), groups=True))
    groups: dict[str, dict[str, float]] = {}
    for key, value in sums.items():
        if "/" in key:
            group, name = key.split("/", 1)
            groups.setdefault(group, {})[name] = value
    plain = M.means_from_sums({k: v for k, v in sums.items() if "/" not in k})
    return plain, {group: M.means_from_sums(values) for group, values in sorted(groups.items())}


def _save_checkpoint(path: str, config: TrainConfig, vocabulary: Vocabulary, stopper: EarlyStopping,
                     test: dict[str, float]) -> str:
    """The best state with its vocabulary and config (``load_checkpoint`` reads it); returns ``path``."""
    import torch

    torch.save({"format_version": CHECKPOINT_FORMAT, "config": config.model_dump(mode="json"),
                "vocabulary": vocabulary.items, "state_dict": stopper.best_state, "best_epoch": stopper.best_epoch,
                "valid": stopper.best_valid, "test": test}, path)
    return path


def _result(run: _Run, inputs: _Inputs, stopper: EarlyStopping, history: list[dict], steps: int,
            test: tuple[dict, dict], started: float) -> dict:
    """The result dict of a run: settings, the early stopping's outcome, the best validation and
    the test metrics (with their breakdown), data counts, timings and the per-epoch history."""
    config = run.config
    epoch_seconds = [record["train_seconds"] for record in history]
    return {
        "model": config.model, "seed": run.seed, "device": str(run.device), "world_size": run.dist.world_size,
        "protocol": config.negatives_protocol, "early_stopping_metric": config.early_stopping_metric,
        "best_epoch": stopper.best_epoch, "epochs_run": len(history), "steps_per_epoch": steps,
        "stopped_early": stopper.stopped_early, "cap_hit": not stopper.stopped_early, "loss": config.loss,
        "valid": stopper.best_valid, "test": test[0], "test_breakdown": test[1],
        "n_items": inputs.n_items, **{k: int(v) for k, v in inputs.counts.items()},
        "seconds_per_epoch": float(np.mean(epoch_seconds)) if epoch_seconds else 0.0,
        "seconds_total": time.perf_counter() - started, "history": history,
    }


# ---------------------------------------------------------------- setup

def _prepare(config: TrainConfig, train_sequences: Sequences, histories: Sequences, valid_targets, test_targets,
             vocabulary: Vocabulary, dist: _Dist) -> _Inputs:
    """Training tensors and evaluation users of this rank; fails when there is nothing to train or
    early-stop on."""
    n_items = vocabulary.n_items
    data = SequenceTrainingData(train_sequences.offsets, train_sequences.items, n_items, config.max_len)
    valid_set = EvalSet.build(histories, valid_targets, vocabulary, config.max_len, "valid")
    test_set = EvalSet.build(histories, test_targets, vocabulary, config.max_len, "test", valid_targets=valid_targets)
    popularity = dist.sum_array(_popularity(histories, n_items))
    counts = dist.sum({"train_sequences": len(data), "dropped_items": train_sequences.dropped_items,
                       "valid_users": len(valid_set), "test_users": len(test_set),
                       "unknown_targets": valid_set.unknown_targets + test_set.unknown_targets,
                       "missing_histories": valid_set.missing_histories + test_set.missing_histories})
    if counts["train_sequences"] == 0:
        raise TrainDataError("no training sequence has two or more known items")
    if counts["valid_users"] == 0:
        raise TrainDataError("no validation target belongs to a user with a real history: nothing to early-stop on")
    if len(data) == 0:
        raise TrainDataError(f"rank {dist.rank} has no training sequence with two or more items; use fewer ranks")
    return _Inputs(data, valid_set, test_set, popularity, counts, n_items)


def _build_model(run: _Run, n_items: int):
    """The configured model on the run's device, wrapped for DDP when there are several ranks."""
    import torch

    from recaug_spark.train.models import build_model

    torch.manual_seed(run.seed)  # identical initial weights on every rank
    model = build_model(run.config.model, n_items, **model_params(run.config)).to(run.device)
    torch.manual_seed(run.seed + run.dist.rank)  # dropout streams differ per rank
    if run.dist.active:
        from torch.nn.parallel import DistributedDataParallel

        device = run.device
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


@contextmanager
def _process_group(device, world_size: int) -> Iterator[None]:
    """Joins (and afterwards leaves) a process group when there are several ranks and none is set up."""
    import torch.distributed as torch_dist

    created = False
    if world_size > 1 and not torch_dist.is_initialized():
        if device.type == "cuda":
            import torch

            torch.cuda.set_device(device)
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    try:
        yield
    finally:
        if created:
            torch_dist.destroy_process_group()


def _rank_files(table_uri: str, version: int | None, chains: Sequence[str] | None, history_uri: str | None,
                history_version: int | None, world_size: int) -> tuple[list[DataFile], list[DataFile]]:
    """(training files, history files) of a distributed run; every rank needs a training file."""
    files = pinned_files(table_uri, version, chains)
    if history_uri is not None:
        history_files = pinned_files(history_uri, history_version)
    else:
        history_files = _default_history(pinned_files(table_uri, version, None))
    if not files:
        raise TrainDataError(f"{table_uri}@{version} has no data files for chains {chains}")
    if len(files) < world_size:
        raise TrainDataError(f"{table_uri}@{version} has {len(files)} data file(s) for chains {chains}, "
                             f"fewer than the {world_size} ranks: each rank needs at least one")
    return files, history_files


def _as_config(config) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, str):
        return TrainConfig.model_validate_json(config)
    return TrainConfig(**config)


def _default_history(files: Iterable[DataFile]) -> list[DataFile]:
    files = list(files)
    if any(dict(f.partition).__contains__(CHAIN_COLUMN) for f in files):
        return [f for f in files if f.partition_value(CHAIN_COLUMN) == REAL_CHAIN]
    return files


def _popularity(sequences: Sequences, n_items: int) -> np.ndarray:
    counts = np.bincount(sequences.items, minlength=n_items + 2)[: n_items + 1].astype(np.float64)
    counts[0] = 0
    return counts


def _unwrap(model):
    """The model inside a DistributedDataParallel wrapper (the model itself when not wrapped)."""
    return getattr(model, "module", model)
