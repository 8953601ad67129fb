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
    (the train stage runs in tests/test_experiment.py with a tiny config)."""
    from recaug_spark.pipeline import planned_stages, run_stages
    from recaug_spark.runs import RunContext

    warehouse = tmp_path_factory.mktemp("pipeline") / "wh"
    cfg = load_config(overrides=[f"run.warehouse={warehouse}", "generate.events=5000", "generate.items=300",
                                 "generate.partitions=3", "pipeline.until=augment"])
    ctx = RunContext.create(spark, cfg, run_id="e2e")
    results = run_stages(ctx, planned_stages(cfg), echo=lambda line: None)
    return ctx, results
