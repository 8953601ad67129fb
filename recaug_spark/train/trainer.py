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
negatives, so the same seed gives the same metrics on the
same device and thread count.

Example::

    cfg = TrainConfig(epochs=200, patience=10, num_threads=2)
    files = pinned_files("wh/augmented_sequences", version=4, chains=["real", "crop"])
    targets = read_targets("wh/sequence_targets")
    result = train(cfg, files, targets, targets)
    result["test"]["ndcg@10"]
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from recaug_spark.train import metrics as M
from recaug_spark.train.config import TrainConfig
from recaug_spark.train.data import (
    CHAIN_COLUMN,
    DataFile,
    EvalSet,
    SequenceTrainingData,
    Sequences,
    TrainDataError,
    Vocabulary,
    _seed,
    pinned_files,
    read_sequences,
    read_targets,
    shard_files,
    targets_of,
)

REAL_CHAIN = "real"
CHECKPOINT_FORMAT = 1


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


# ---------------------------------------------------------------- public entry points

def train(config: TrainConfig, train_files: Sequence[DataFile], valid_targets, test_targets, *,
          history_files: Sequence[DataFile] | None = None, vocabulary: Vocabulary | None = None,
          seed: int | None = None, device=None, checkpoint_path: str | None = None,
          log: Callable[[str], None] | None = None) -> dict:
    """Train and evaluate in this process; returns the result dict (see ``_fit``).

    ``valid_targets`` / ``test_targets``: the ``sequence_targets`` table (pyarrow, filtered by its
    ``split`` column), or (user_id, item_id) tables, or ``{user_id: item_id}`` dicts.
    ``history_files``: where the users' real training sequences are (default: the files of the
    ``real`` operator chain among ``train_files``, or all of them when the table has no chains).
    ``vocabulary``: default every item of the training files and targets.
    """
    history_files = _default_history(train_files) if history_files is None else list(history_files)
    if not history_files:
        raise TrainDataError("train_files hold no 'real' rows to evaluate from: pass history_files "
                             "(e.g. pinned_files(uri, version, chains=['real']) or the sequences table's files)")
    if vocabulary is None:
        vocabulary = Vocabulary.from_files(list(train_files) + [f for f in history_files if f not in train_files],
                                           extra=_target_items(valid_targets, "valid") + _target_items(test_targets, "test"))
    dist = _Dist(device=None)
    return _fit(config, read_sequences(train_files, vocabulary), read_sequences(history_files, vocabulary),
                valid_targets, test_targets, vocabulary, seed=config.seeds[0] if seed is None else seed,
                device=resolve_device(config.device, device), dist=dist, checkpoint_path=checkpoint_path, log=log)


def train_rank(config: TrainConfig | dict | str, table_uri: str, *, version: int | None = None,
               chains: Sequence[str] | None = None, targets_uri: str, targets_version: int | None = None,
               items_uri: str | None = None, items_version: int | None = None,
               history_uri: str | None = None, history_version: int | None = None,
               seed: int | None = None, device=None, checkpoint_path: str | None = None) -> dict:
    """One rank of a distributed run (also works alone): pins the table version, reads its share.

    Ranks and world size come from the environment set by TorchDistributor/torchrun (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Training files are the
    ``chains`` of ``table_uri`` at ``version``; histories for evaluation are the ``real`` chain of the
    same version, or ``history_uri`` (e.g. ``sequences``); the vocabulary is the ``items`` table's
    when ``items_uri`` is given, else rank 0 builds it from all training files and broadcasts it.
    Pass ``version`` explicitly in production: every rank must read the same snapshot.
    """
    import torch.distributed as torch_dist

    config = _as_config(config)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(config.device, device, local_rank)
    created = False
    if world_size > 1 and not torch_dist.is_initialized():
        if device.type == "cuda":
            import torch

            torch.cuda.set_device(device)
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    dist = _Dist(rank, world_size, local_rank, device if world_size > 1 else None)
    try:
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
        targets = read_targets(targets_uri, targets_version)
        if items_uri is not None:
            vocabulary = Vocabulary.from_items_table(items_uri, items_version)
        else:
            vocabulary = Vocabulary.from_json(dist.broadcast(
                Vocabulary.from_files(files, extra=_target_items(targets, None)).to_json() if rank == 0 else None))
        mine = shard_files(files, rank, world_size)
        my_history = shard_files(history_files, rank, world_size) if len(history_files) >= world_size else (
            history_files if rank == 0 else [])
        return _fit(config, read_sequences(mine, vocabulary), read_sequences(my_history, vocabulary), targets, targets,
                    vocabulary, seed=config.seeds[0] if seed is None else seed, device=device, dist=dist,
                    checkpoint_path=checkpoint_path, log=None)
    finally:
        if created:
            torch_dist.destroy_process_group()


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
    model = build_model(config.model, vocabulary.n_items, **_model_params(config))
    model.load_state_dict(saved["state_dict"])
    return model.eval(), vocabulary, config


# ---------------------------------------------------------------- internals

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


def _target_items(targets, split: str | None) -> list[str]:
    return [str(i) for i in targets_of(targets, split).column("item_id").to_pylist() if i is not None]


def _model_params(config: TrainConfig) -> dict:
    return {"hidden": config.hidden, "blocks": config.blocks, "heads": config.heads, "max_len": config.max_len,
            "dropout": config.dropout, "attention_dropout": config.attention_dropout}


def _popularity(sequences: Sequences, n_items: int) -> np.ndarray:
    counts = np.bincount(sequences.items, minlength=n_items + 2)[: n_items + 1].astype(np.float64)
    counts[0] = 0
    return counts


def evaluate(model, eval_set: EvalSet, config: TrainConfig, device, *, popularity: np.ndarray | None = None,
             seed: int = 0, groups: bool = False) -> dict[str, float]:
    """Metric sums (flat dict; ``users`` included) of ``model`` on ``eval_set`` under the configured
    protocol; with ``groups``, also ``<group>/<metric>`` sums for short/long histories and head/tail
    targets (popularity from the training histories). Divide with ``metrics.means_from_sums``."""
    import torch

    from recaug_spark.train.models import trim_leading_padding

    inner = getattr(model, "module", model)
    inner.eval()
    protocol = config.negatives_protocol
    generator = torch.Generator().manual_seed(seed)
    ranks = np.zeros(len(eval_set), np.int64)
    candidates = np.zeros(len(eval_set), np.int64)
    # Batches of similar lengths, each cut to its own width where the model allows it: the same
    # scores, at a fraction of the cost on data whose sequences are mostly shorter than max_len.
    by_length = protocol == "full" and inner.ignores_leading_padding
    with torch.no_grad():
        for index, inputs, targets, history in eval_set.batches(config.eval_batch_size, by_length=by_length):
            offset, (inputs,) = trim_leading_padding(inner, torch.from_numpy(inputs))
            scores = inner.score_all(inputs.to(device), position_offset=offset).float()
            if protocol == "full":
                batch_ranks, batch_candidates = M.full_ranks(scores, torch.from_numpy(targets).to(device),
                                                             torch.from_numpy(history).to(device),
                                                             config.exclude_history)
            else:
                negatives = M.sample_negatives(torch.from_numpy(targets), torch.from_numpy(history), inner.n_items,
                                               config.sampled_negatives, generator,
                                               popularity if protocol == "popularity" else None)
                batch_ranks, batch_candidates = M.sampled_ranks(scores, torch.from_numpy(targets).to(device),
                                                                negatives.to(device))
            ranks[index] = batch_ranks.cpu().numpy()
            candidates[index] = batch_candidates.cpu().numpy()
    sums = M.metric_sums(ranks, candidates, config.ks)
    if groups:
        masks = {**M.history_length_groups(eval_set.history_lengths, config.short_history_max)}
        if popularity is not None:
            masks.update(M.popularity_groups(eval_set.targets, popularity, config.head_item_share))
        for name, mask in masks.items():
            for key, value in M.metric_sums(ranks[mask], candidates[mask], config.ks).items():
                sums[f"{name}/{key}"] = value
    return sums


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

    def sampled(model, inputs, positives, negatives):
        shared = torch.randint(1, n_items + 1, (config.loss_negatives,), generator=generator)
        return sampled_softmax_loss(model, inputs, positives, shared.to(inputs.device))

    return sampled


def _fit(config: TrainConfig, train_sequences: Sequences, histories: Sequences, valid_targets, test_targets,
         vocabulary: Vocabulary, *, seed: int, device, dist: _Dist, checkpoint_path: str | None,
         log: Callable[[str], None] | None) -> dict:
    import torch

    from recaug_spark.train.models import build_model

    started = time.perf_counter()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
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

    torch.manual_seed(seed)  # identical initial weights on every rank
    model = build_model(config.model, n_items, **_model_params(config)).to(device)
    torch.manual_seed(seed + dist.rank)  # dropout streams differ per rank
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    inner = getattr(model, "module", model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay)
    batch_size = math.ceil(config.batch_size / dist.world_size)
    steps = dist.max_int(config.steps_per_epoch or data.num_batches(batch_size))  # fixed: equal steps per variant
    stop_name = config.early_stopping_metric
    eval_seed = _seed(seed, 7919, dist.rank)

    best_score, best_epoch, best_state, best_valid, waited = -math.inf, -1, None, None, 0
    history, epoch_seconds = [], []
    stopped_early = False
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        model.train()
        loss_sum, batches = 0.0, 0
        objective = training_loss(config, inner.n_items, _seed(seed, epoch, dist.rank, 104729))
        for inputs, positives, negatives in data.batches(epoch, batch_size, seed, dist.rank, steps):
            loss = objective(model, inputs.to(device), positives.to(device), negatives.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            batches += 1
        losses = dist.sum({"loss": loss_sum, "batches": batches})
        epoch_seconds.append(time.perf_counter() - epoch_start)
        record = {"epoch": epoch, "loss": losses["loss"] / max(losses["batches"], 1), "train_seconds": epoch_seconds[-1]}
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            eval_start = time.perf_counter()
            valid = M.means_from_sums(dist.sum(evaluate(model, valid_set, config, device, popularity=popularity,
                                                        seed=eval_seed)))
            score = valid[stop_name]
            record.update({f"valid_{stop_name}": score, "eval_seconds": time.perf_counter() - eval_start})
            if score > best_score:
                best_score, best_epoch, best_valid, waited = score, epoch, valid, 0
                best_state = {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}
            else:
                waited += 1
        history.append(record)
        if log is not None and dist.rank == 0:
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if waited >= config.patience:
            stopped_early = True
            break

    if best_state is not None:  # None only when every validation score was NaN
        inner.load_state_dict(best_state)
    test_sums = dist.sum(evaluate(model, test_set, config, device, popularity=popularity,
                                  seed=_seed(seed, 7927, dist.rank), groups=True))
    plain = {k: v for k, v in test_sums.items() if "/" not in k}
    groups: dict[str, dict[str, float]] = {}
    for key, value in test_sums.items():
        if "/" in key:
            group, name = key.split("/", 1)
            groups.setdefault(group, {})[name] = value
    result = {
        "model": config.model, "seed": seed, "device": str(device), "world_size": dist.world_size,
        "protocol": config.negatives_protocol, "early_stopping_metric": stop_name,
        "best_epoch": best_epoch, "epochs_run": len(history), "steps_per_epoch": steps,
        "stopped_early": stopped_early, "cap_hit": not stopped_early, "loss": config.loss,
        "valid": best_valid, "test": M.means_from_sums(plain),
        "test_breakdown": {group: M.means_from_sums(sums) for group, sums in sorted(groups.items())},
        "n_items": n_items, **{k: int(v) for k, v in counts.items()},
        "seconds_per_epoch": float(np.mean(epoch_seconds)) if epoch_seconds else 0.0,
        "seconds_total": time.perf_counter() - started, "history": history,
    }
    if checkpoint_path is not None and dist.rank == 0:
        torch.save({"format_version": CHECKPOINT_FORMAT, "config": config.model_dump(mode="json"),
                    "vocabulary": vocabulary.items, "state_dict": best_state, "best_epoch": best_epoch,
                    "valid": best_valid, "test": result["test"]}, checkpoint_path)
        result["checkpoint"] = checkpoint_path
    return dist.broadcast(result)
