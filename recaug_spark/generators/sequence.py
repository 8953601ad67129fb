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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from recaug_spark import rng
from recaug_spark.generators.artifacts import ArtifactRef, read_vocabulary, save_artifact
from recaug_spark.generators.runtime import chunks, device, register_loader, set_torch_threads

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
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
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


def train_model(inputs: np.ndarray, targets: np.ndarray, n_items: int, cfg: dict, rank: int = 0, world_size: int = 1):
    """Train SASRec with a full softmax on (input, target) windows; returns the state dict (rank 0).

    The same function runs in one process or on each TorchDistributor rank (gradients all-reduced
    by DistributedDataParallel; each rank takes every ``world_size``-th window).
    """
    import torch
    from torch.nn import functional as F

    from recaug_spark.train.models import SASRec

    torch.manual_seed(cfg["seed"])
    run_on = device()
    model = SASRec(n_items, hidden=cfg["hidden"], blocks=cfg["blocks"], heads=cfg["heads"], max_len=cfg["max_len"],
                   dropout=cfg["dropout"], attention_dropout=cfg["dropout"]).to(run_on)
    trained = model
    if world_size > 1:
        trained = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    # Logits only where there is a target (windows are mostly left padding on short-sequence data).
    targets_per_window = max(1.0, float((targets > 0).sum()) / max(len(targets), 1))
    batch = max(8, min(cfg["batch_size"], int(_LOGIT_ELEMENTS // ((n_items + 1) * targets_per_window))))
    mine = np.arange(rank, len(inputs), world_size)
    generator = np.random.default_rng(cfg["seed"])
    x_all, y_all = torch.from_numpy(inputs), torch.from_numpy(targets)
    steps = math.ceil(len(inputs) / world_size / batch)  # equal on every rank (DDP needs the same count)
    model.train()
    for epoch in range(cfg["epochs"]):
        started, loss_sum = time.perf_counter(), 0.0
        order = mine[generator.permutation(len(mine))] if len(mine) else mine
        for step in range(steps):
            rows = order[step * batch:(step + 1) * batch]
            if len(rows) == 0:
                rows = mine[:1] if len(mine) else np.array([0])
            x, y = x_all[rows].to(run_on), y_all[rows].to(run_on)
            at = y > 0
            logits = trained(x)[at] @ model.item_embeddings.weight[: n_items + 1].T
            loss = F.cross_entropy(logits, y[at])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
        if rank == 0:
            print(f"[fit] {cfg['direction']} transformer epoch {epoch + 1}/{cfg['epochs']}: loss "
                  f"{loss_sum / max(steps, 1):.4f}, {steps} steps of {batch} in {time.perf_counter() - started:.1f}s",
                  file=sys.stderr, flush=True)
    model.eval()
    return {k: v.detach().cpu() for k, v in model.state_dict().items()} if rank == 0 else None


def _distributed_rank(inputs, targets, n_items, cfg):
    import os

    import torch.distributed as dist

    dist.init_process_group("nccl" if device().type == "cuda" else "gloo")
    try:
        state = train_model(inputs, targets, n_items, cfg, rank=dist.get_rank(), world_size=dist.get_world_size())
    finally:
        dist.destroy_process_group()
    if state is not None:
        import torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        with open(os.environ["RECAUG_GENERATOR_OUT"], "wb") as handle:
            handle.write(buffer.getvalue())
    return None


def _train(inputs, targets, n_items, cfg: SequenceGeneratorConfig, spark=None):
    """State dict of the trained model: in this process, or on ``num_processes`` TorchDistributor ranks."""
    import torch

    params = cfg.model_dump()
    if cfg.num_processes <= 1:
        return train_model(inputs, targets, n_items, params)
    import os
    import tempfile

    from pyspark.ml.torch.distributor import TorchDistributor

    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "state.pt")
        os.environ["RECAUG_GENERATOR_OUT"] = out  # local mode: ranks inherit the driver's environment
        TorchDistributor(num_processes=cfg.num_processes, local_mode=True,
                         use_gpu=torch.cuda.is_available()).run(_distributed_rank, inputs, targets, n_items, params)
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


def fit_sequence_generator(sequences, valid_targets, cfg: SequenceGeneratorConfig, models_dir, *, name: str,
                           trained_on: dict) -> ArtifactRef:
    """Train a generator on ``sequences`` (Spark DataFrame of the training split) and save its artifact.

    ``valid_targets`` (``sequence_targets`` rows with split 'valid', or None) measure the forward
    model's next-item fidelity; the reverse model holds out the first item of ``fidelity_users``
    users instead (those items are not trained on).
    """
    import torch

    table = sequences.select("user_id", "item_ids").toArrow()
    users = table.column("user_id").to_pylist()
    lists = table.column("item_ids").to_pylist()
    vocabulary = sorted({i for items in lists for i in items if i is not None})
    if not vocabulary:
        raise ValueError(f"cannot fit {name}: the training sequences hold no items")
    encoded = encode_sequences(lists, vocabulary, cfg.direction)
    held = _holdout(users, cfg.fidelity_users, cfg.seed)
    train_sequences = list(encoded)
    eval_histories, eval_targets = [], []
    if cfg.direction == "forward" and valid_targets is not None:
        targets = {row["user_id"]: row["item_id"] for row in valid_targets.select("user_id", "item_id").toArrow().to_pylist()}
        index = {item: i + 1 for i, item in enumerate(vocabulary)}
        for r in held:
            target = index.get(targets.get(users[r]))
            if target is not None and len(encoded[r]):
                eval_histories.append(encoded[r])
                eval_targets.append(target)
    else:
        for r in held:
            if len(encoded[r]) >= 2:
                eval_histories.append(encoded[r][:-1])
                eval_targets.append(int(encoded[r][-1]))
                train_sequences[r] = encoded[r][:-1]
    inputs, targets_array = _windows(train_sequences, cfg.max_len)
    if len(inputs) == 0:
        raise ValueError(f"cannot fit {name}: no training sequence has two items or more")
    state = _train(inputs, targets_array, len(vocabulary), cfg)

    model_config = {k: getattr(cfg, k) for k in ("hidden", "blocks", "heads", "max_len", "dropout")}
    rate = repeat_rate(encoded)
    loaded = SequenceGenerator(_build(len(vocabulary), model_config, state), pa.array(vocabulary, pa.string()),
                               cfg.direction, cfg.max_len, rate, tag=name)
    fidelity = {"repeat_rate": rate, "train_windows": int(len(inputs)), "items": len(vocabulary)}
    fidelity |= ranking_metrics(loaded, eval_histories, np.asarray(eval_targets, dtype=np.int64))
    fidelity["evaluated_on"] = "validation targets" if cfg.direction == "forward" and valid_targets is not None \
        else "held-out " + ("first" if cfg.direction == "reverse" else "last") + " items"
    # Memorization: sequences generated from each held-out user's first item, as long as the real one.
    starts = [encoded[r][:1] for r in held if len(encoded[r]) >= 2]
    length = min(10, max((len(encoded[r]) for r in held), default=1))
    if starts:
        keys = np.arange(len(starts), dtype=np.uint64)
        generated = generate(loaded, starts, max(1, length - 1), keys=keys, seed=cfg.seed, stream="fidelity")
        full = [[int(s[0]), *g.tolist()] for s, g in zip(starts, generated)]
        prefixes = [s[:length] for s in encoded]
        fidelity["identical_share"] = identical_share(full, prefixes)
        counts = np.bincount(np.concatenate(encoded), minlength=len(vocabulary) + 1)
        fidelity["popularity"] = popularity_report(loaded, starts, max(1, length - 1), counts, cfg.seed)

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return save_artifact(models_dir, name, kind=KIND, files={"weights.pt": buffer.getvalue(),
                                                             "model.json": json.dumps({
                                                                 **model_config, "direction": cfg.direction,
                                                                 "repeat_rate": rate}).encode()},
                         config=cfg.model_dump(mode="json"), trained_on=trained_on, vocabulary=vocabulary,
                         fidelity=fidelity)


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
    vocabulary = read_vocabulary(ArtifactRef(manifest["name"], manifest["version"], str(path), manifest["content_hash"]))
    state = torch.load(path / "weights.pt", map_location="cpu")
    model = _build(len(vocabulary), settings, state)
    return SequenceGenerator(model, pa.array(vocabulary, pa.string()), settings["direction"], settings["max_len"],
                             settings["repeat_rate"], tag=f"{manifest['name']}@{manifest['version']}")
