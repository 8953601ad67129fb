"""Trainer throughput benchmark: training samples/s fed from Delta vs from memory, and 2 ranks vs 1.

All figures come from one run on the same synthetic ``augmented_sequences``-like table, so the
ratios hold on a shared, noisy machine where absolute seconds do not (interleaved rounds, best of
``--repeats``). The model is the reference SASRec (``TrainConfig`` defaults: hidden 64, 2 blocks,
2 heads, max_len 50, dropout 0.5, Adam lr 1e-3, batch 256, BCE with one sampled negative per
position); a training sample is one sequence of a batch; every side takes ``--steps`` optimizer
steps from the same initial weights.

Data: ``--users`` users with Sports-like sequence lengths (5 + geometric, mean ≈ 9) over
``--items`` Zipf-popular items; one ``real`` row per user and one ``crop`` copy (a contiguous
60% slice), synthesized with numpy and written with the project's Delta writer
(``Warehouse.write``, partitioned by ``operator_chain`` like ``augmented_sequences``, several files
per chain), plus a ``sequence_targets`` table for ``--eval-users`` users. Training reads chains
``real`` and ``crop``.

1. **Delta vs memory** (one process, ``--threads`` torch threads):

   * delta  — the trainer's reader path, timed from the pinned version to the last step:
     ``pinned_files`` (Delta log, chain filter) → ``read_sequences`` (streamed Parquet batches,
     encoded) → ``SequenceTrainingData`` → ``batches`` (shuffling, rejection-sampled negatives)
     → forward / backward / Adam step. The item vocabulary is built once beforehand (as an
     experiment does for all its runs);
   * memory — the same batches, built beforehand and held as tensors: the loop only indexes them
     and steps. This is the upper bound of any data loader;
   * data only — the delta side's reading and batch building without the model, for the
     loader's own samples/s (its headroom over training).

   Target: delta ≥ 0.9 × memory samples/s (data loading must not be the bottleneck). The read of
   the table happens once per run, so it is amortised over ``--steps``; a training run amortises
   it over every epoch (≈ 8,000 steps on Amazon Sports), so short ``--steps`` understate the ratio.

2. **2 ranks vs 1**: ``TorchDistributor(num_processes=N, local_mode=True, use_gpu=False)`` running
   the trainer's own ``train_rank`` (gloo, DistributedDataParallel, each rank pins the version and
   reads its own row-balanced share of the files; the global batch of 256 is split across ranks,
   so a step trains the same number of samples) for one epoch of ``--steps`` steps, each rank
   with one torch thread. samples/s = steps × 256 / the epoch's training seconds (the trainer's
   own timer: batches and steps, without process start, reading or evaluation). On 2 cores the
   ideal ratio is 2.

Usage: python benchmarks/trainer_throughput.py [--users 20000] [--items 10000] [--steps 100]
       [--repeats 3] [--threads 1] [--skip-ranks] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recaug_spark.config import load_config  # noqa: E402
from recaug_spark.delta import Warehouse  # noqa: E402
from recaug_spark.session import get_session  # noqa: E402

CHAINS = ["real", "crop"]
TARGET = 0.9


def interleaved_best(repeats: int, *actions) -> list[dict]:
    """Run the actions in alternation ``repeats`` times; each returns a dict with ``seconds``.
    Keeps, per action, the result of its fastest round (drift on a shared machine hits all alike)."""
    best: list[dict | None] = [None] * len(actions)
    for _ in range(repeats):
        for index, action in enumerate(actions):
            result = action()
            if best[index] is None or result["seconds"] < best[index]["seconds"]:
                best[index] = result
    return best  # type: ignore[return-value]


# ---------------------------------------------------------------- data

def synthesize(users: int, items: int, seed: int) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """(user ids, real sequences, crop parents, crop sequences) as Python lists of item-id strings."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(5 + rng.geometric(0.25, users) - 1, 200)
    popularity = 1.0 / np.arange(1, items + 1)
    flat = rng.choice(items, size=int(lengths.sum()), p=popularity / popularity.sum())
    names = np.array([f"i{i:06d}" for i in range(items)], dtype=object)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    user_ids = [f"u{u:07d}" for u in range(users)]
    real = [names[flat[offsets[u]:offsets[u + 1]]].tolist() for u in range(users)]
    crops = []
    for seq in real:
        width = max(2, int(round(0.6 * len(seq))))
        start = int(rng.integers(0, len(seq) - width + 1))
        crops.append(seq[start:start + width])
    return user_ids, real, user_ids, crops


def write_tables(spark, root: str, users: int, items: int, eval_users: int, files_per_chain: int, seed: int) -> dict:
    """``augmented_sequences`` (real + crop, partitioned by operator_chain) and ``sequence_targets``."""
    import pandas as pd
    from pyspark.sql import types as T

    user_ids, real, crop_parents, crops = synthesize(users, items, seed)
    rows = pd.DataFrame({
        "sequence_id": user_ids + [f"{u}~0:0" for u in crop_parents],
        "user_id": user_ids + crop_parents,
        "item_ids": real + crops,
        "operator_chain": ["real"] * len(real) + ["crop"] * len(crops),
    })
    rows["length"] = rows["item_ids"].map(len).astype("int32")
    schema = T.StructType([
        T.StructField("sequence_id", T.StringType(), False),
        T.StructField("user_id", T.StringType(), False),
        T.StructField("item_ids", T.ArrayType(T.StringType()), False),
        T.StructField("operator_chain", T.StringType(), False),
        T.StructField("length", T.IntegerType(), False),
    ])
    warehouse = Warehouse(spark, root)
    df = spark.createDataFrame(rows, schema).repartition(files_per_chain)
    written = warehouse.write("augmented_sequences", df, mode="overwrite", partition_by=["operator_chain"])

    rng = np.random.default_rng(seed + 1)
    chosen = rng.choice(users, size=min(eval_users, users), replace=False)
    targets = pd.DataFrame({
        "user_id": [user_ids[u] for u in chosen] * 2,
        "split": ["valid"] * len(chosen) + ["test"] * len(chosen),
        "item_id": [f"i{i:06d}" for i in rng.integers(0, items, size=2 * len(chosen))],
    })
    targets_written = warehouse.write("sequence_targets", spark.createDataFrame(targets), mode="overwrite")
    return {"uri": written.uri, "version": written.version, "targets_uri": targets_written.uri,
            "targets_version": targets_written.version, "rows": len(rows), "files": written.files}


# ---------------------------------------------------------------- 1. Delta vs memory

def delta_vs_memory(table: dict, args) -> dict:
    import torch

    from recaug_spark.train.config import TrainConfig
    from recaug_spark.train.data import SequenceTrainingData, Vocabulary, pinned_files, read_sequences
    from recaug_spark.train.models import bce_loss, build_model
    from recaug_spark.train.trainer import model_params, resolve_device

    cfg = TrainConfig(num_threads=args.threads, device=args.device)
    device = resolve_device(cfg.device)
    torch.set_num_threads(args.threads)
    vocabulary = Vocabulary.from_files(pinned_files(table["uri"], table["version"], CHAINS))
    seed, batch_size, steps = 42, cfg.batch_size, args.steps

    def load() -> SequenceTrainingData:
        files = pinned_files(table["uri"], table["version"], CHAINS)
        sequences = read_sequences(files, vocabulary)
        return SequenceTrainingData(sequences.offsets, sequences.items, vocabulary.n_items, cfg.max_len)

    def fresh_model():
        torch.manual_seed(seed)
        model = build_model(cfg.model, vocabulary.n_items, **model_params(cfg)).to(device)
        model.train()
        return model, torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))

    def step(model, optimizer, inputs, positives, negatives) -> float:
        loss = bce_loss(model, inputs.to(device), positives.to(device), negatives.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    held = list(load().batches(0, batch_size, seed, steps=steps))  # the memory side's tensors
    samples = sum(len(b[0]) for b in held)

    def from_delta() -> dict:
        model, optimizer = fresh_model()
        start = time.perf_counter()
        data = load()
        read = time.perf_counter() - start
        loss, n = 0.0, 0
        for inputs, positives, negatives in data.batches(0, batch_size, seed, steps=steps):
            loss = step(model, optimizer, inputs, positives, negatives)
            n += len(inputs)
        _sync(device)
        return {"seconds": time.perf_counter() - start, "read_seconds": read, "samples": n, "last_loss": loss}

    def from_memory() -> dict:
        model, optimizer = fresh_model()
        start = time.perf_counter()
        loss = 0.0
        for inputs, positives, negatives in held:
            loss = step(model, optimizer, inputs, positives, negatives)
        _sync(device)
        return {"seconds": time.perf_counter() - start, "samples": samples, "last_loss": loss}

    def data_only() -> dict:
        start = time.perf_counter()
        data = load()
        read = time.perf_counter() - start
        n = sum(len(b[0]) for b in data.batches(0, batch_size, seed, steps=steps))
        return {"seconds": time.perf_counter() - start, "read_seconds": read, "samples": n}

    delta, memory, loader = interleaved_best(args.repeats, from_delta, from_memory, data_only)
    loss_gap = abs(delta["last_loss"] - memory["last_loss"])
    if delta["samples"] != memory["samples"] or loss_gap > 1e-4 * abs(memory["last_loss"]):
        raise AssertionError(f"the two sides trained differently: delta {delta}, memory {memory}")
    for side in (delta, memory, loader):
        side["samples_per_s"] = side["samples"] / side["seconds"]
    step_seconds = delta["seconds"] - delta["read_seconds"]
    return {"device": str(device), "threads": args.threads, "steps": steps, "batch_size": batch_size,
            "n_items": vocabulary.n_items, "delta": delta, "memory": memory, "data_only": loader,
            "ratio": delta["samples_per_s"] / memory["samples_per_s"],
            "ratio_streaming": (delta["samples"] / step_seconds) / memory["samples_per_s"],
            "target": TARGET}


def _sync(device) -> None:
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- 2. ranks

def ranks(table: dict, args) -> dict:
    from pyspark.ml.torch.distributor import TorchDistributor

    from recaug_spark.train.config import TrainConfig
    from recaug_spark.train.trainer import train_rank

    cfg = TrainConfig(epochs=1, steps_per_epoch=args.steps, num_threads=1, device="cpu", seeds=(42,))
    payload = cfg.model_dump_json()

    def run(processes: int):
        def action() -> dict:
            started = time.perf_counter()
            result = TorchDistributor(num_processes=processes, local_mode=True, use_gpu=False).run(
                train_rank, payload, table["uri"], version=table["version"], chains=CHAINS,
                targets_uri=table["targets_uri"], targets_version=table["targets_version"])
            seconds = float(result["history"][0]["train_seconds"])
            steps = int(result["steps_per_epoch"])
            return {"seconds": seconds, "steps": steps, "samples": steps * cfg.batch_size,
                    "samples_per_s": steps * cfg.batch_size / seconds, "world_size": int(result["world_size"]),
                    "wall_seconds": time.perf_counter() - started, "loss": float(result["history"][0]["loss"])}
        return action

    one, two = interleaved_best(args.repeats, run(1), run(2))
    return {"one": one, "two": two, "ratio": two["samples_per_s"] / one["samples_per_s"], "ideal": 2.0}


# ---------------------------------------------------------------- main

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000, help="users (each a real row and a crop row)")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--eval-users", type=int, default=500, help="users with targets (the rank runs evaluate them)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="best of N, sides interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the Delta-vs-memory runs")
    parser.add_argument("--files-per-chain", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="Delta-vs-memory runs")
    parser.add_argument("--skip-ranks", action="store_true", help="only the Delta-vs-memory comparison")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, removed)")
    parser.add_argument("--json", default=None, help="also save the figures to this JSON file")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="recaug-trainbench-"))
    cfg = load_config(overrides=[f"spark.master={args.master}", "spark.shuffle_partitions=4"])
    spark = get_session(cfg.spark)
    try:
        started = time.perf_counter()
        table = write_tables(spark, str(workdir / "wh"), args.users, args.items, args.eval_users,
                             args.files_per_chain, seed=7)
        print(f"wrote {table['rows']:,} sequences ({args.users:,} users × real + crop) in {table['files']} files "
              f"to {table['uri']} v{table['version']} in {time.perf_counter() - started:.1f}s", flush=True)
        io = delta_vs_memory(table, args)
        report = {"users": args.users, "items": args.items, "rows": table["rows"], "files": table["files"],
                  "repeats": args.repeats, "delta_vs_memory": io}
        print(f"\n1. Delta vs memory: SASRec, {io['steps']} steps × batch {io['batch_size']}, {io['n_items']:,} items, "
              f"{io['device']}, {io['threads']} thread(s), best of {args.repeats}")
        print(f"{'side':<14}{'seconds':>10}{'samples/s':>12}{'× memory':>10}")
        for name, key in (("memory", "memory"), ("delta", "delta"), ("data only", "data_only")):
            side = io[key]
            print(f"{name:<14}{side['seconds']:>10.2f}{side['samples_per_s']:>12,.0f}"
                  f"{side['samples_per_s'] / io['memory']['samples_per_s']:>10.2f}")
        verdict = "met" if io["ratio"] >= TARGET else "NOT met"
        print(f"delta / memory = {io['ratio']:.3f} (target ≥ {TARGET}: {verdict}); read of the pinned version "
              f"{io['delta']['read_seconds']:.2f}s once per run; per-step streaming alone {io['ratio_streaming']:.3f}")
        if not args.skip_ranks:
            rk = ranks(table, args)
            report["ranks"] = rk
            print(f"\n2. Ranks: TorchDistributor local mode, train_rank, gloo, 1 thread per rank, {args.steps} steps × "
                  f"global batch 256, best of {args.repeats}")
            print(f"{'ranks':<8}{'seconds':>10}{'samples/s':>12}{'× 1 rank':>10}")
            for side in (rk["one"], rk["two"]):
                print(f"{side['world_size']:<8}{side['seconds']:>10.2f}{side['samples_per_s']:>12,.0f}"
                      f"{side['samples_per_s'] / rk['one']['samples_per_s']:>10.2f}")
            print(f"2 ranks / 1 rank = {rk['ratio']:.2f} (ideal {rk['ideal']:.0f} on 2 free cores)")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, sort_keys=True))
            print(f"\nfigures saved to {args.json}")
    finally:
        spark.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
