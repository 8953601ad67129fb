"""One SparkSession for the whole suite (local[2], UI off, few shuffle partitions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recaug_spark.config import SparkConfig, load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASETS = REPO_ROOT.parent / "shared" / "datasets"


def dataset_path(*parts: str) -> Path:
    """A path under ../shared/datasets, or a pytest skip saying why it is absent."""
    path = DATASETS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real dataset not present at {path} (only CI and dev machines have ../shared/datasets)")
    return path


@pytest.fixture(scope="session")
def spark():
    from recaug_spark.session import get_session

    session = get_session(SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="2g",
                                      conf={"spark.default.parallelism": "4"}))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def default_run(spark, tmp_path_factory):
    """One run of generate → ingest → clean → augment on 5,000 generated events, shared by several tests
    (the train stage runs on it once, with a tiny config, in ``trained_run``)."""
    from recaug_spark.pipeline import planned_stages, run_stages
    from recaug_spark.runs import RunContext

    warehouse = tmp_path_factory.mktemp("pipeline") / "wh"
    cfg = load_config(overrides=[f"run.warehouse={warehouse}", "generate.events=5000", "generate.items=300",
                                 "generate.partitions=3", "pipeline.until=augment"])
    ctx = RunContext.create(spark, cfg, run_id="e2e")
    results = run_stages(ctx, planned_stages(cfg), echo=lambda line: None)
    return ctx, results


TRAINED_RUN_ID = "e2e-train"


@pytest.fixture(scope="session")
def trained_run(default_run, tmp_path_factory):
    """The train stage once on ``default_run``'s warehouse with a tiny config (run id ``e2e-train``: the
    baseline, ``augmented`` (all chains) and ``crop``, seeds 1 and 2, 2 epochs, hidden 16), so that the
    ``metrics`` table exists. Returns (the train RunContext, its StageResult, its report folder)."""
    from recaug_spark.pipeline import run_stages
    from recaug_spark.runs import RunContext

    ctx, _ = default_run
    reports = tmp_path_factory.mktemp("reports")
    cfg = ctx.cfg.with_overrides(**{
        "train.epochs": 2, "train.seeds": [1, 2], "train.hidden": 16, "train.max_len": 20, "train.batch_size": 64,
        "train.num_threads": 1, "train.report_dir": str(reports),
        "train.variants": [{"name": "augmented", "chains": "all"}, {"name": "crop", "chains": ["crop"]}],
    })
    train_ctx = RunContext(ctx.spark, cfg, ctx.warehouse, TRAINED_RUN_ID)
    [result] = run_stages(train_ctx, ["train"], echo=lambda line: None)
    return train_ctx, result, reports / TRAINED_RUN_ID


GRAMMAR_ITEMS = 30  # toy grammar: item i is always followed by item i + 1 (mod 30)


def grammar_rows(users: int = 200, seed: int = 0) -> list[tuple[str, list[str]]]:
    """(user_id, item_ids) of the toy grammar: runs of 3–9 consecutive items from a random start."""
    import numpy as np

    r = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        start, n = int(r.integers(0, GRAMMAR_ITEMS)), int(r.integers(3, 10))
        rows.append((f"u{u}", [f"i{(start + j) % GRAMMAR_ITEMS:02d}" for j in range(n)]))
    return rows


@pytest.fixture(scope="session")
def toy_generators(spark, tmp_path_factory):
    """Forward and reverse Transformer generators fitted on the toy grammar (tiny model, seconds each).

    Returns (models folder, {"forward": ArtifactRef, "reverse": ArtifactRef}, the grammar rows)."""
    from recaug_spark.generators.sequence import SequenceGeneratorConfig, fit_sequence_generator

    models = tmp_path_factory.mktemp("models")
    rows = grammar_rows()
    sequences = spark.createDataFrame(rows, "user_id string, item_ids array<string>")
    following = [(u, f"i{(int(items[-1][1:]) + 1) % GRAMMAR_ITEMS:02d}", "valid") for u, items in rows]
    valid = spark.createDataFrame(following, "user_id string, item_id string, split string")
    refs = {}
    for direction in ("forward", "reverse"):
        cfg = SequenceGeneratorConfig(direction=direction, hidden=16, epochs=30, dropout=0.0, lr=5e-3, fidelity_users=50)
        refs[direction] = fit_sequence_generator(sequences, valid if direction == "forward" else None, cfg, models,
                                                 name=f"{direction}_transformer", trained_on={"sequences": 0})
    return models, refs, rows
