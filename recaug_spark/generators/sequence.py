"""Next-item Transformer generators: forward (extension, synthetic sessions) and reverse (ASReP).

The model is the project's SASRec (``recaug_spark.train.models``) trained with a full softmax over
the item vocabulary, so that it defines a distribution to *sample* from, not only a ranking.
``direction="reverse"`` trains it on reversed training sequences: it then predicts what a user did
*before* their first event, which is how ASReP (Liu et al., SIGIR 2021) writes pre-history for
short sequences.

Data: ``sequences`` (training split only) is read with Spark and only the compact encoded item
arrays reach the driver; training runs in one process, or with ``num_processes > 1`` through
``pyspark.ml.torch.distributor.TorchDistributor`` (gloo on CPU, nccl on GPU) with the same
function. The artifact holds the weights, the model config and the item vocabulary.

Fidelity (stored in the manifest): next-item HR@10 / NDCG@10 (full ranking, history excluded) —
for the forward model on the validation targets, for the reverse model on a held-out first item of
``fidelity_users`` users (their first item is left out of training); the data's repeat rate (share of
item occurrences already earlier in the sequence); and the share of generated sequences identical
to a real one.

Sampling (:func:`generate`) is keyed: each step draws its uniform from ``recaug_spark.rng`` by
(seed, stream, sequence key, step), then picks by inverse CDF among the top-k items, so a
sequence's generated items do not depend on the batch it is in. Padding and mask indices are never
generated, only vocabulary items; items already in the sequence are excluded unless repeats are
allowed.
"""

from __future__ import annotations

import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from recaug_spark import rng
from recaug_spark.generators.artifacts import ArtifactRef, data_fingerprint, read_vocabulary, reusable, save_artifact
from recaug_spark.generators.runtime import (
    EpochProgress,
    HeldOutStopping,
    chunks,
    device,
    register_loader,
    seed_everything,
    set_torch_threads,
    torch_threads,
)

KIND = "sequence_transformer"
_LOGIT_ELEMENTS = 16_000_000  # targets × items per training step (bounds the logits' memory)


class SequenceGeneratorConfig(BaseModel):
    """Training settings of one sequence generator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    direction: Literal["forward", "reverse"] = "forward"
    hidden: int = Field(32, ge=4)
    blocks: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    max_len: int = Field(50, ge=2)
    dropout: float = Field(0.2, ge=0, lt=1)
    epochs: int = Field(20, ge=1)  # a cap: training stops sooner when the held-out loss stops improving
    patience: int = Field(2, ge=1)  # epochs without a better held-out loss before training stops
    min_improvement: float = Field(0.005, ge=0)  # relative decrease of the held-out loss that counts as better
    validation_share: float = Field(0.1, ge=0, lt=1)  # users left out of training to stop early (0: every epoch)
    batch_size: int = Field(128, ge=1)
    num_threads: int = Field(1, ge=1)  # torch threads while fitting (runtime.torch_threads says why 1)
    # 3e-3: on the embedded default both Transformers stop after 8 epochs instead of 16-17 with 1e-3,
    # with a lower held-out loss and higher HR/NDCG@10 (docs/benchmarks.md)
    lr: float = Field(3e-3, gt=0)
    seed: int = 0
    num_processes: int = Field(1, ge=1)  # > 1: TorchDistributor ranks (local mode)
    fidelity_users: int = Field(500, ge=0)  # users whose held-out item measures HR/NDCG (and identical share)


@dataclass
class SequenceGenerator:
    """A loaded generator: the model (eval mode, on its device), its vocabulary and its manifest."""

    model: object
    items: pa.Array  # vocabulary: model index i (1..N) is items[i - 1]
    direction: str
    max_len: int
    repeat_rate: float
    tag: str

    @property
    def n_items(self) -> int:
        return len(self.items)

    def encode(self, values: pa.Array) -> np.ndarray:
        """Model indices of item ids (0 for ids the model does not know)."""
        found = pc.index_in(values, value_set=self.items)
        return pc.fill_null(pc.add(found, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64)


# ---------------------------------------------------------------- data


def encode_sequences(item_lists: Sequence[Sequence[str]], vocabulary: list[str], direction: str) -> list[np.ndarray]:
    """Index arrays (1..N) of each sequence, reversed for the reverse direction; unknown items dropped."""
    index = {item: i + 1 for i, item in enumerate(vocabulary)}
    out = []
    for items in item_lists:
        encoded = np.array([index[i] for i in items if i in index], dtype=np.int64)
        out.append(encoded[::-1].copy() if direction == "reverse" else encoded)
    return out


def repeat_rate(sequences: Sequence[np.ndarray]) -> float:
    """Share of item occurrences that already occurred earlier in their sequence."""
    total = sum(len(s) for s in sequences)
    repeats = sum(len(s) - len(np.unique(s)) for s in sequences)
    return repeats / total if total else 0.0


def _windows(sequences: Sequence[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded (input, target) windows: the last ``max_len + 1`` items of each sequence of ≥ 2."""
    rows = [s[-(max_len + 1):] for s in sequences if len(s) >= 2]
    inputs = np.zeros((len(rows), max_len), dtype=np.int64)
    targets = np.zeros((len(rows), max_len), dtype=np.int64)
    for r, s in enumerate(rows):
        n = len(s) - 1
        inputs[r, max_len - n:] = s[:-1]
        targets[r, max_len - n:] = s[1:]
    return inputs, targets


def _pad_left(histories: Sequence[np.ndarray], width: int) -> np.ndarray:
    out = np.zeros((len(histories), width), dtype=np.int64)
    for r, h in enumerate(histories):
        h = h[-width:]
        if len(h):
            out[r, width - len(h):] = h
    return out


# ---------------------------------------------------------------- training


def _batch_rows(targets: np.ndarray, n_items: int, batch_size: int) -> int:
    """Windows per step: ``batch_size``, fewer where the logits (targets × items) would exceed
    :data:`_LOGIT_ELEMENTS`."""
    # Logits only where there is a target (windows are mostly left padding on short-sequence data).
    targets_per_window = max(1.0, float((targets > 0).sum()) / max(len(targets), 1))
    return max(8, min(batch_size, int(_LOGIT_ELEMENTS // ((n_items + 1) * targets_per_window))))


def _window_loss(trained, model, x, y, n_items: int, reduction: str = "mean"):
    """Full-softmax next-item cross-entropy over every target (> 0) of a batch of windows."""
    from torch.nn import functional as F

    at = y > 0
    logits = trained(x)[at] @ model.item_embeddings.weight[: n_items + 1].T
    return F.cross_entropy(logits, y[at], reduction=reduction), int(at.sum())


def held_out_loss(model, inputs: np.ndarray, targets: np.ndarray, n_items: int, batch: int, run_on) -> float:
    """Mean next-item cross-entropy over every target of held-out windows (eval mode: no dropout)."""
    import torch

    was_training, total, count = model.training, 0.0, 0
    model.eval()
    with torch.no_grad():
        for part in chunks(len(inputs), batch):
            loss, n = _window_loss(model, model, torch.from_numpy(inputs[part]).to(run_on),
                                   torch.from_numpy(targets[part]).to(run_on), n_items, reduction="sum")
            total, count = total + float(loss), count + n
    model.train(was_training)
    return total / count if count else float("nan")


def _train_epoch(trained, model, optimizer, data, order: np.ndarray, mine: np.ndarray, steps: int, batch: int,
                 n_items: int, run_on) -> float:
    """One epoch of optimizer steps over ``order`` (this rank's windows, shuffled); the mean batch loss."""
    x_all, y_all = data
    loss_sum = 0.0
    for step in range(steps):
        rows = order[step * batch:(step + 1) * batch]
        if len(rows) == 0:
            rows = mine[:1] if len(mine) else np.array([0])
        loss, _ = _window_loss(trained, model, x_all[rows].to(run_on), y_all[rows].to(run_on), n_items)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach())
    return loss_sum / max(steps, 1)


def train_model(inputs: np.ndarray, targets: np.ndarray, n_items: int, cfg: dict, rank: int = 0, world_size: int = 1,
                held_out: tuple[np.ndarray, np.ndarray] | None = None):
    """Train SASRec with a full softmax on (input, target) windows; returns the state dict (rank 0).

    ``epochs`` is a cap: with ``held_out`` windows (of users left out of training) training stops once
    their loss has not improved for ``patience`` epochs, and the best epoch's weights are returned.
    Deterministic: the same windows in the same order, config and seed give the same weights.
    The same function runs in one process or on each TorchDistributor rank (gradients all-reduced
    by DistributedDataParallel; each rank takes every ``world_size``-th window; every rank measures
    the same held-out loss on the same weights, so all stop at the same epoch).
    """
    with torch_threads(cfg["num_threads"]):
        return _train_model(inputs, targets, n_items, cfg, rank, world_size, held_out)


def _train_model(inputs, targets, n_items: int, cfg: dict, rank: int, world_size: int, held_out):
    import torch

    from recaug_spark.train.models import SASRec

    seed_everything(cfg["seed"])
    run_on = device()
    model = SASRec(n_items, hidden=cfg["hidden"], blocks=cfg["blocks"], heads=cfg["heads"], max_len=cfg["max_len"],
                   dropout=cfg["dropout"], attention_dropout=cfg["dropout"]).to(run_on)
    trained = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    batch = _batch_rows(targets, n_items, cfg["batch_size"])
    mine = np.arange(rank, len(inputs), world_size)
    generator = np.random.default_rng(cfg["seed"])
    data = torch.from_numpy(inputs), torch.from_numpy(targets)
    steps = math.ceil(len(inputs) / world_size / batch)  # equal on every rank (DDP needs the same count)
    stopping = HeldOutStopping(cfg["patience"], cfg["min_improvement"])
    progress = EpochProgress(f"[fit] {cfg['direction']} transformer", cfg["epochs"], enabled=rank == 0)
    model.train()
    for epoch in range(cfg["epochs"]):
        order = mine[generator.permutation(len(mine))] if len(mine) else mine
        loss = _train_epoch(trained, model, optimizer, data, order, mine, steps, batch, n_items, run_on)
        detail = f"loss {loss:.4f}, {steps} steps of {batch}"
        if held_out is not None and len(held_out[0]):
            held = held_out_loss(model, *held_out, n_items, batch, run_on)
            detail += f", held-out loss {held:.4f}" + (" (best)" if stopping.observe(epoch, held, model) else "")
        progress.epoch(epoch + 1, detail)
        if stopping.stop:
            progress.note(f"stopped early after {epoch + 1} epochs (held-out loss not better for {cfg['patience']}); "
                          f"keeping epoch {stopping.best_epoch + 1}")
            break
    stopping.restore(model)
    model.eval()
    summary = {"epochs_trained": epoch + 1, "best_epoch": stopping.best_epoch + 1, "held_out_loss": stopping.best_loss}
    return ({k: v.detach().cpu() for k, v in model.state_dict().items()}, summary) if rank == 0 else None


def _distributed_rank(inputs, targets, n_items, cfg, held_out=None):
    import os

    import torch.distributed as dist

    dist.init_process_group("nccl" if device().type == "cuda" else "gloo")
    try:
        state = train_model(inputs, targets, n_items, cfg, rank=dist.get_rank(), world_size=dist.get_world_size(),
                            held_out=held_out)
    finally:
        dist.destroy_process_group()
    if state is not None:
        import torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        with open(os.environ["RECAUG_GENERATOR_OUT"], "wb") as handle:
            handle.write(buffer.getvalue())
    return None


def train_windows(inputs, targets, n_items, cfg: SequenceGeneratorConfig, held_out=None):
    """(state dict, training summary) of the trained model: in this process, or on ``num_processes``
    TorchDistributor ranks."""
    import torch

    params = cfg.model_dump()
    if cfg.num_processes <= 1:
        return train_model(inputs, targets, n_items, params, held_out=held_out)
    import os
    import tempfile

    from pyspark.ml.torch.distributor import TorchDistributor

    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "state.pt")
        os.environ["RECAUG_GENERATOR_OUT"] = out  # local mode: ranks inherit the driver's environment
        TorchDistributor(num_processes=cfg.num_processes, local_mode=True,
                         use_gpu=torch.cuda.is_available()).run(_distributed_rank, inputs, targets, n_items, params,
                                                                    held_out)
        return torch.load(out)


# ---------------------------------------------------------------- inference


def score_next(generator: SequenceGenerator, histories: np.ndarray) -> np.ndarray:
    """Logits [n, N + 1] of the next item after each left-padded history (column 0 = padding)."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(histories).to(next(generator.model.parameters()).device)
        return generator.model.score_all(x).float().cpu().numpy()


def generate(generator: SequenceGenerator, histories: Sequence[np.ndarray], k: int, *, keys: np.ndarray, seed: int,
             stream: str, temperature: float = 1.0, top_k: int = 20, allow_repeats: bool | None = None,
             allowed_items: np.ndarray | None = None, logit_shift: np.ndarray | None = None,
             chunk_rows: int = 1024) -> np.ndarray:
    """``k`` sampled next items (model indices 1..N) after each history, as an [n, k] array.

    Histories are in the model's direction (most recent last; for the reverse model: the sequence
    reversed). ``allow_repeats`` None follows the data (repeats allowed when its repeat rate is ≥ 1%).
    ``allowed_items`` (bool mask over model indices 0..N, or None for all) restricts what may be generated,
    e.g. to items still in the catalog; a row with no allowed item left gets 0 (nothing generated).
    ``logit_shift`` [N + 1] (or None) is added to every row's logits before the temperature, e.g.
    ``-alpha * log(popularity)`` (``popularity_shift``) so that a model that over-samples popular
    items writes tail items as often as the data has them.
    Sampling is keyed per sequence (``keys``), so the result of a sequence does not depend on the
    other sequences of its batch.
    """
    n = len(histories)
    out = np.zeros((n, k), dtype=np.int64)
    if n == 0 or k == 0:
        return out
    repeats = generator.repeat_rate >= 0.01 if allow_repeats is None else allow_repeats
    keys = np.asarray(keys, dtype=np.uint64)
    if allowed_items is not None:
        allowed_items = np.asarray(allowed_items, dtype=bool)
        if allowed_items.shape != (generator.n_items + 1,):
            raise ValueError(f"allowed_items must be a bool mask of {generator.n_items + 1} model indices "
                             f"(0 = padding, 1..{generator.n_items} = vocabulary), got shape {allowed_items.shape}")
    set_torch_threads()
    top_k = max(1, min(top_k, generator.n_items))
    for part in chunks(n, chunk_rows):
        rows = [np.asarray(h, dtype=np.int64) for h in histories[part]]
        m = len(rows)
        current = _pad_left(rows, generator.max_len)
        blocked = np.zeros((m, generator.n_items + 1), dtype=bool)
        blocked[:, 0] = True  # padding
        if allowed_items is not None:
            blocked |= ~allowed_items
        if not repeats:
            lengths = np.array([len(r) for r in rows], dtype=np.int64)
            if lengths.sum():
                blocked[np.repeat(np.arange(m), lengths), np.concatenate(rows)] = True
        for step in range(k):
            logits = score_next(generator, current)
            if logit_shift is not None:
                logits += logit_shift
            logits[blocked] = -np.inf
            logits /= max(temperature, 1e-6)
            # the top k, ordered by (logit desc, index asc): per row, whatever else is in the batch
            candidates = np.argpartition(-logits, top_k - 1, axis=1)[:, :top_k] if top_k < logits.shape[1] \
                else np.tile(np.arange(logits.shape[1]), (m, 1))
            top = np.take_along_axis(logits, candidates, axis=1)
            order = np.lexsort((candidates, -top), axis=1)
            candidates, top = np.take_along_axis(candidates, order, axis=1), np.take_along_axis(top, order, axis=1)
            best = top[:, :1]
            weights = np.where(np.isfinite(top), np.exp(top - np.where(np.isfinite(best), best, 0.0)), 0.0)
            total = weights.sum(axis=1, keepdims=True)
            u = rng.uniform(seed, f"{stream}/step", keys[part], step)
            cdf = np.cumsum(weights, axis=1) / np.where(total > 0, total, 1)
            pick = np.minimum((cdf < u[:, None]).sum(axis=1), top_k - 1)
            chosen = candidates[np.arange(m), pick]
            chosen[total[:, 0] <= 0] = 0  # every item excluded (tiny catalogs): nothing generated
            out[part, step] = chosen
            current = np.concatenate([current[:, 1:], chosen[:, None]], axis=1)
            if not repeats:
                blocked[np.arange(m), chosen] = True
    return out


def popularity_shift(counts: np.ndarray, alpha: float) -> np.ndarray:
    """``-alpha · log(count + 1)`` per model index (0 = padding stays 0): the logit correction that
    moves sampling from the model's popularity towards uniform (alpha 1 undoes a model that samples
    in proportion to popularity; logit adjustment, Menon et al., ICLR 2021)."""
    shift = -alpha * np.log(np.asarray(counts, dtype=np.float64) + 1.0)
    shift[0] = 0.0
    return shift.astype(np.float32)


def popularity_fidelity(generated: np.ndarray, counts: np.ndarray, head_share: float = 0.2) -> dict[str, float]:
    """How generated items follow the real popularity: ``kl`` = KL(generated ‖ real) over items (real
    counts add-one smoothed), and the share of generated and of real occurrences that fall on tail
    items (outside the ``head_share`` most popular)."""
    counts = np.asarray(counts, dtype=np.float64)[1:]
    made = np.bincount(np.asarray(generated, np.int64).ravel(), minlength=len(counts) + 1)[1:].astype(np.float64)
    if made.sum() == 0:
        return {"kl": float("nan"), "generated_tail_share": float("nan"), "real_tail_share": float("nan")}
    p, q = made / made.sum(), (counts + 1.0) / (counts + 1.0).sum()
    used = p > 0
    head = np.zeros(len(counts), bool)
    head[np.argsort(-counts, kind="stable")[: max(1, int(round(head_share * len(counts))))]] = True
    return {"kl": float((p[used] * np.log(p[used] / q[used])).sum()),
            "generated_tail_share": float(p[~head].sum()),
            "real_tail_share": float(counts[~head].sum() / max(counts.sum(), 1.0))}


# ---------------------------------------------------------------- fidelity


def ranking_metrics(generator: SequenceGenerator, histories: Sequence[np.ndarray], targets: np.ndarray,
                    k: int = 10) -> dict[str, float]:
    """HR@k and NDCG@k of the held-out ``targets`` by full ranking, the history's items excluded."""
    if len(histories) == 0:
        return {"hr@10": float("nan"), "ndcg@10": float("nan"), "users": 0}
    hits, gains = [], []
    for part in chunks(len(histories), 1024):
        rows = list(histories[part])
        logits = score_next(generator, _pad_left(rows, generator.max_len))
        logits[:, 0] = -np.inf
        target = targets[part]
        for r, h in enumerate(rows):
            excluded = [i for i in set(h.tolist()) if i != target[r]]
            logits[r, excluded] = -np.inf
        target_score = logits[np.arange(len(rows)), target]
        rank = (logits > target_score[:, None]).sum(axis=1)
        hits.append(rank < k)
        gains.append(np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0))
    hits, gains = np.concatenate(hits), np.concatenate(gains)
    return {"hr@10": float(hits.mean()), "ndcg@10": float(gains.mean()), "users": int(len(hits))}


def popularity_report(generator: SequenceGenerator, starts: Sequence[np.ndarray], k: int, counts: np.ndarray,
                      seed: int, alphas: Sequence[float] = (0.0, 0.5, 1.0)) -> dict[str, dict[str, float]]:
    """``popularity_fidelity`` of ``k`` items generated after each of ``starts``, for each popularity
    correction ``alpha`` (the ``popularity_alpha`` of the generator augmenters): which alpha makes
    the generated items follow the real popularity, and how many land in the tail."""
    keys = np.arange(len(starts), dtype=np.uint64)
    report = {}
    for alpha in alphas:
        shift = popularity_shift(counts, alpha) if alpha else None
        made = generate(generator, starts, k, keys=keys, seed=seed, stream="popularity", logit_shift=shift)
        report[f"alpha={alpha:g}"] = popularity_fidelity(made, counts)
    return report


def identical_share(generated: Sequence[Sequence[int]], real: Sequence[np.ndarray]) -> float:
    """Share of generated sequences equal to some real sequence (a privacy / memorization figure)."""
    if not generated:
        return 0.0
    known = {tuple(s.tolist()) for s in real}
    return sum(tuple(g) in known for g in generated) / len(generated)


# ---------------------------------------------------------------- fit


def _holdout(keys: Sequence[str], count: int, seed: int) -> np.ndarray:
    """Deterministic choice of ``count`` users (smallest keyed hash) whose last item is held out."""
    if count <= 0 or len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    hashed = rng.key_strings(pa.array(list(keys), pa.string()))
    u = rng.uniform(seed, "fidelity-holdout", np.asarray(hashed, dtype=np.uint64), 0)
    return np.argsort(u, kind="stable")[:count]


def training_table(sequences) -> pa.Table:
    """``user_id``, ``item_ids`` of the training sequences (Spark) in a stable order: by user id (then
    the items, for a table with repeated user ids), so that what reaches torch — and so the fitted
    weights — never depends on the Spark partitioning or the number of executors."""
    table = sequences.select("user_id", "item_ids").toArrow()
    tie = pc.fill_null(pc.binary_join(table.column("item_ids"), "\x1f"), "")
    keyed = table.append_column("_tie", tie)
    return keyed.sort_by([("user_id", "ascending"), ("_tie", "ascending")]).drop_columns(["_tie"]).combine_chunks()


def _valid_pairs(valid_targets) -> pa.Table:
    """(user_id, item_id) of the validation targets in a stable order (empty table for None)."""
    if valid_targets is None:
        return pa.table({"user_id": pa.array([], pa.string()), "item_id": pa.array([], pa.string())})
    table = valid_targets.select("user_id", "item_id").toArrow()
    return table.sort_by([("user_id", "ascending"), ("item_id", "ascending")]).combine_chunks()


def _keyed_users(keys: Sequence[str], seed: int, stream: str) -> np.ndarray:
    """A uniform in [0, 1) per user, keyed by (seed, stream, user id): independent of the row order."""
    hashed = rng.key_strings(pa.array(list(keys), pa.string()))
    return rng.uniform(seed, stream, np.asarray(hashed, dtype=np.uint64), 0)


def _fidelity_split(encoded, users, held, valid_pairs: pa.Table, vocabulary, cfg) -> tuple[list, list, list]:
    """(training sequences, fidelity histories, fidelity targets): the forward model is measured on
    the validation targets of the ``held`` users; otherwise their last item (in the model's direction)
    is held out of training and measured."""
    train_sequences, histories, targets = list(encoded), [], []
    if cfg.direction == "forward" and valid_pairs.num_rows:
        valid = dict(zip(valid_pairs.column("user_id").to_pylist(), valid_pairs.column("item_id").to_pylist()))
        index = {item: i + 1 for i, item in enumerate(vocabulary)}
        for r in held:
            target = index.get(valid.get(users[r]))
            if target is not None and len(encoded[r]):
                histories.append(encoded[r])
                targets.append(target)
        return train_sequences, histories, targets
    for r in held:
        if len(encoded[r]) >= 2:
            histories.append(encoded[r][:-1])
            targets.append(int(encoded[r][-1]))
            train_sequences[r] = encoded[r][:-1]
    return train_sequences, histories, targets


def _early_stopping_split(train_sequences, users, cfg) -> tuple[tuple, tuple | None]:
    """(training windows, held-out windows or None): the windows of a keyed ``validation_share`` of
    users are left out of training and measure the loss that stops it early."""
    stop_users = _keyed_users(users, cfg.seed, "early-stopping") < cfg.validation_share
    if cfg.validation_share > 0 and stop_users.any() and not stop_users.all():
        fit_on = _windows([s for s, out in zip(train_sequences, stop_users) if not out], cfg.max_len)
        held = _windows([s for s, out in zip(train_sequences, stop_users) if out], cfg.max_len)
        if len(fit_on[0]) and len(held[0]):
            return fit_on, held
    return _windows(train_sequences, cfg.max_len), None


@dataclass
class PendingFit:
    """A sequence generator's fit prepared on the driver: :meth:`train_args` are what the training
    needs (arrays and the config: picklable, so it may run in another process, same weights), then
    :meth:`finish` measures fidelity on the trained weights and saves the artifact."""

    name: str
    cfg: SequenceGeneratorConfig
    models_dir: object
    trained_on: dict
    fingerprint: str
    vocabulary: list
    encoded: list
    held: np.ndarray
    evaluation: tuple  # (histories, targets) of the next-item fidelity
    evaluated_on: str
    windows: tuple  # (inputs, targets) trained on
    held_out: tuple | None  # windows of the early-stopping users

    def train_args(self) -> tuple:
        return (*self.windows, len(self.vocabulary), self.cfg, self.held_out)

    def finish(self, trained: tuple) -> ArtifactRef:
        state, summary = trained
        cfg, (inputs, _) = self.cfg, self.windows
        model_config = {k: getattr(cfg, k) for k in ("hidden", "blocks", "heads", "max_len", "dropout")}
        rate = repeat_rate(self.encoded)
        loaded = SequenceGenerator(_build(len(self.vocabulary), model_config, state),
                                   pa.array(self.vocabulary, pa.string()), cfg.direction, cfg.max_len, rate,
                                   tag=self.name)
        fidelity = {"repeat_rate": rate, "train_windows": int(len(inputs)), "items": len(self.vocabulary), **summary,
                    "held_out_windows": int(len(self.held_out[0])) if self.held_out else 0}
        histories, targets = self.evaluation
        fidelity |= ranking_metrics(loaded, histories, np.asarray(targets, dtype=np.int64))
        fidelity["evaluated_on"] = self.evaluated_on
        fidelity |= _generation_fidelity(loaded, self.encoded, self.held, len(self.vocabulary), cfg.seed)
        return _save_sequence(self.models_dir, self.name, cfg, state, model_config, rate, self.vocabulary,
                              self.trained_on, fidelity, self.fingerprint)


def fit_sequence_generator(sequences, valid_targets, cfg: SequenceGeneratorConfig, models_dir, *, name: str,
                           trained_on: dict, reuse: bool = True) -> ArtifactRef:
    """Train a generator on ``sequences`` (Spark DataFrame of the training split) and save its artifact
    (:func:`prepare_sequence_fit`, training in this process, :meth:`PendingFit.finish`)."""
    pending = prepare_sequence_fit(sequences, valid_targets, cfg, models_dir, name=name, trained_on=trained_on,
                                   reuse=reuse)
    return pending if isinstance(pending, ArtifactRef) else pending.finish(train_windows(*pending.train_args()))


def prepare_sequence_fit(sequences, valid_targets, cfg: SequenceGeneratorConfig, models_dir, *, name: str,
                         trained_on: dict, reuse: bool = True) -> ArtifactRef | PendingFit:
    """Read and encode what a generator trains on; the artifact to reuse instead, if any.

    ``valid_targets`` (``sequence_targets`` rows with split 'valid', or None) measure the forward
    model's next-item fidelity; the reverse model holds out the first item of ``fidelity_users``
    users instead (those items are not trained on). With ``reuse``, an artifact of ``models_dir``
    fitted with the same config on the same data (:func:`~recaug_spark.generators.artifacts.reusable`)
    is returned instead.
    """
    table, valid_pairs = training_table(sequences), _valid_pairs(valid_targets)
    fingerprint = data_fingerprint(table, valid_pairs)
    if reuse and (found := reusable(models_dir, name, cfg.model_dump(mode="json"), fingerprint)) is not None:
        print(f"[fit] {name}: reusing {found.tag} (same data and config)", file=sys.stderr, flush=True)
        return found
    users, lists = table.column("user_id").to_pylist(), table.column("item_ids").to_pylist()
    vocabulary = sorted({i for items in lists for i in items if i is not None})
    if not vocabulary:
        raise ValueError(f"cannot fit {name}: the training sequences hold no items")
    encoded = encode_sequences(lists, vocabulary, cfg.direction)
    held = _holdout(users, cfg.fidelity_users, cfg.seed)
    train_sequences, eval_histories, eval_targets = _fidelity_split(encoded, users, held, valid_pairs, vocabulary, cfg)
    windows, held_out = _early_stopping_split(train_sequences, users, cfg)
    if len(windows[0]) == 0:
        raise ValueError(f"cannot fit {name}: no training sequence has two items or more")
    evaluated_on = "validation targets" if cfg.direction == "forward" and valid_targets is not None \
        else "held-out " + ("first" if cfg.direction == "reverse" else "last") + " items"
    return PendingFit(name, cfg, models_dir, trained_on, fingerprint, vocabulary, encoded, held,
                      (eval_histories, eval_targets), evaluated_on, windows, held_out)


def _generation_fidelity(loaded: SequenceGenerator, encoded, held, n_items: int, seed: int) -> dict:
    """Memorization (identical share) and popularity of sequences generated from each held-out user's
    first item, as long as the real one (at most 10)."""
    starts = [encoded[r][:1] for r in held if len(encoded[r]) >= 2]
    if not starts:
        return {}
    length = min(10, max((len(encoded[r]) for r in held), default=1))
    keys = np.arange(len(starts), dtype=np.uint64)
    generated = generate(loaded, starts, max(1, length - 1), keys=keys, seed=seed, stream="fidelity")
    full = [[int(s[0]), *g.tolist()] for s, g in zip(starts, generated)]
    counts = np.bincount(np.concatenate(encoded), minlength=n_items + 1)
    return {"identical_share": identical_share(full, [s[:length] for s in encoded]),
            "popularity": popularity_report(loaded, starts, max(1, length - 1), counts, seed)}


def _save_sequence(models_dir, name, cfg, state, model_config, rate, vocabulary, trained_on, fidelity, fingerprint):
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return save_artifact(models_dir, name, kind=KIND, files={"weights.pt": buffer.getvalue(),
                                                             "model.json": json.dumps({
                                                                 **model_config, "direction": cfg.direction,
                                                                 "repeat_rate": rate}).encode()},
                         config=cfg.model_dump(mode="json"), trained_on=trained_on, vocabulary=vocabulary,
                         fidelity=fidelity, data_hash=fingerprint)


def _build(n_items: int, model_config: dict, state):
    from recaug_spark.train.models import SASRec

    model = SASRec(n_items, hidden=model_config["hidden"], blocks=model_config["blocks"], heads=model_config["heads"],
                   max_len=model_config["max_len"], dropout=model_config["dropout"],
                   attention_dropout=model_config["dropout"])
    model.load_state_dict(state)
    return model.to(device()).eval()


@register_loader(KIND)
def load_sequence_generator(path: Path, manifest: dict) -> SequenceGenerator:
    import torch

    settings = json.loads((path / "model.json").read_text())
    vocabulary = read_vocabulary(ArtifactRef(manifest["name"], manifest["version"], str(path),
                                             manifest["content_hash"]))
    state = torch.load(path / "weights.pt", map_location="cpu")
    model = _build(len(vocabulary), settings, state)
    return SequenceGenerator(model, pa.array(vocabulary, pa.string()), settings["direction"], settings["max_len"],
                             settings["repeat_rate"], tag=f"{manifest['name']}@{manifest['version']}")
