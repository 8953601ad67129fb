"""Generator inference benchmark: generator augmenters inside the Spark stage vs plain batched torch.

All figures come from one run on the same synthetic ``sequences`` data
(``recaug_spark.augment.synthetic_sequences``, as ``augment_throughput.py`` uses: long-tailed
lengths, Zipf items), so the ratios hold on a shared, noisy machine:

* fit time vs data size — ``fit_sequence_generator`` (forward, ``--epochs``) on the first users
  of the data up to each of ``--fit-scales`` events: seconds, and seconds per 1,000 training
  windows (flat = linear in the data);
* inference, per generator augmenter (``extend``: forward model, ``prehistory``: reverse model,
  ``synthetic_user``: forward model from each user's first item):
  - **stage**: read the Parquet, ``augment_sequences`` with that one branch (real rows pass through,
    models loaded once per Python worker from the artifact), write to Spark's ``noop`` sink;
    ``local[N]`` tasks use one torch thread each;
  - **standalone**: the same model and the same sequences already in memory (encoded item
    indices), ``generate`` in 1,024-row chunks in this process with N torch threads — the model's
    plain batched inference on the same cores, no Spark, no Arrow, no I/O;
  - ratio = stage sequences/s ÷ standalone sequences/s (best of ``--repeats`` each, interleaved).
    Target ≥ 0.8.

Usage: python benchmarks/generator_inference.py [--events 200000] [--fit-scales 2e4,1e5,2e5]
       [--epochs 2] [--repeats 2] [--master local[2]] [--json PATH]
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
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recaug_spark.augment.engine import augment_sequences  # noqa: E402
from recaug_spark.augment.synthetic_sequences import synthesize  # noqa: E402
from recaug_spark.config import AugmentConfig, BranchConfig, SparkConfig  # noqa: E402
from recaug_spark.session import get_session  # noqa: E402

OPERATORS = {  # augmenter -> (model name, params)
    "extend": ("forward_transformer", {"k": 3}),
    "prehistory": ("reverse_transformer", {"k": 3}),
    "synthetic_user": ("forward_transformer", {"length": 4}),
}


def fit_scaling(spark, source: Path, scales: list[int], epochs: int, models: Path) -> list[dict]:
    """Fit time of the forward generator on the first users holding up to each number of events."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from recaug_spark.generators.sequence import SequenceGeneratorConfig, fit_sequence_generator

    frame = spark.read.parquet(str(source)).select("user_id", "item_ids", "length")
    running = frame.withColumn("_events", F.sum("length").over(Window.orderBy("user_id")))
    running = running.cache()
    rows = []
    for scale in scales:
        subset = running.where(F.col("_events") <= scale).select("user_id", "item_ids")
        cfg = SequenceGeneratorConfig(direction="forward", epochs=epochs, fidelity_users=0)
        start = time.perf_counter()
        ref = fit_sequence_generator(subset, None, cfg, models / "scaling", name=f"forward_{scale}", trained_on={},
                                     reuse=False)  # time a fit, never a reused artifact
        seconds = time.perf_counter() - start
        windows = json.loads((Path(ref.path) / "manifest.json").read_text())["fidelity"]["train_windows"]
        rows.append({"events": scale, "seconds": seconds, "windows": windows,
                     "s_per_1k_windows": seconds / max(1, windows) * 1_000})
    running.unpersist()
    return rows


def standalone_rate(ref, operator: str, params: dict, sequences: list[np.ndarray], keys: np.ndarray, threads: int,
                    repeats: int) -> float:
    """Sequences/s of plain batched ``generate`` with ``threads`` torch threads on in-memory indices."""
    from recaug_spark.generators import runtime
    from recaug_spark.generators.sequence import generate

    model = runtime.load(ref)
    encoded = [model.encode(pa.array(s, pa.string())) for s in sequences]
    if operator == "prehistory":
        histories, k = [e[::-1] for e in encoded], params["k"]
    elif operator == "synthetic_user":
        histories, k = [e[:1] for e in encoded], params["length"] - 1
    else:
        histories, k = encoded, params["k"]
    best = float("inf")
    for _ in range(repeats):
        runtime.set_torch_threads(threads)
        start = time.perf_counter()
        generate(model, histories, k, keys=keys, seed=1, stream="bench")
        best = min(best, time.perf_counter() - start)
    return len(histories) / best


def stage_seconds(spark, source: Path, operator: str, params: dict, models: Path, partitions: int) -> float:
    cfg = AugmentConfig(partitions=partitions, branches=(BranchConfig(chain=operator, params={operator: params}),),
                        items={"enabled": False})
    frame = spark.read.parquet(str(source))
    augmented = augment_sequences(frame, cfg, 1, "bench", "bench", models_dir=str(models))  # fits on the driver
    start = time.perf_counter()
    augmented.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--fit-scales", default="2e4,1e5,2e5")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cores = int(args.master.removeprefix("local[").removesuffix("]")) if args.master.startswith("local[") else 2
    workdir = Path(tempfile.mkdtemp(prefix="generator-bench-"))
    spark = get_session(SparkConfig(master=args.master, driver_memory="6g", shuffle_partitions=cores * 2))
    results: dict = {"cores": cores}
    try:
        source = workdir / "sequences"
        stats = synthesize(spark, source, args.events)
        results["data"] = stats
        print(f"data: {stats['events']:,} events, {stats['users']:,} users, {stats['items']:,} items")

        models = workdir / "models"
        results["fit_scaling"] = fit_scaling(spark, source, [int(float(s)) for s in args.fit_scales.split(",")],
                                             args.epochs, models)
        print("\nfit time vs data size (forward generator, "
              f"{args.epochs} epochs, {cores} cores)\n{'events':>10}{'windows':>10}{'seconds':>10}{'s/1k windows':>14}")
        for row in results["fit_scaling"]:
            print(f"{row['events']:>10,}{row['windows']:>10,}{row['seconds']:>10.1f}{row['s_per_1k_windows']:>14.2f}")

        from recaug_spark.generators.sequence import SequenceGeneratorConfig, fit_sequence_generator

        frame = spark.read.parquet(str(source))
        refs = {}
        for name, direction in (("forward_transformer", "forward"), ("reverse_transformer", "reverse")):
            cfg = SequenceGeneratorConfig(direction=direction, epochs=args.epochs, fidelity_users=200)
            refs[name] = fit_sequence_generator(frame, None, cfg, models, name=name, trained_on={},
                                                reuse=False)

        table = pq.read_table(source, columns=["user_id", "item_ids"])
        sequences = [np.array(s, dtype=object) for s in table.column("item_ids").to_pylist()]
        keys = np.arange(len(sequences), dtype=np.uint64)
        results["inference"] = {}
        for operator, (model, params) in OPERATORS.items():
            stage_best, alone = float("inf"), 0.0
            for _ in range(args.repeats):
                stage_best = min(stage_best, stage_seconds(spark, source, operator, params, models, cores * 2))
                alone = max(alone, standalone_rate(refs[model], operator, params, sequences, keys, cores, 1))
            stage_rate = len(sequences) / stage_best
            results["inference"][operator] = {"stage_seq_s": stage_rate, "standalone_seq_s": alone,
                                              "ratio": stage_rate / alone}
        print(f"\ninference on {len(sequences):,} sequences ({args.master}; best of {args.repeats})")
        print(f"{'operator':<16}{'stage seq/s':>14}{'torch seq/s':>14}{'ratio':>8}{'target':>9}")
        for operator, row in results["inference"].items():
            print(f"{operator:<16}{row['stage_seq_s']:>14,.0f}{row['standalone_seq_s']:>14,.0f}{row['ratio']:>8.2f}"
                  f"{'≥ 0.80':>9}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        spark.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
