"""One SparkSession for the whole suite (local[2], UI off, few shuffle partitions), and the markers.

Markers (registered in ``pytest.ini``; applied here, in :func:`pytest_collection_modifyitems`, so that
no test has to remember them):

* ``spark``: needs a JVM. The test uses the session ``spark`` fixture, directly or through other
  fixtures (``default_run``, ``toy_generators``, a module's own fixture...), or asks for one of this
  file's Spark fixtures at run time (``request.getfixturevalue``), or is a ``cluster`` test;
* ``cluster``: in a file that starts a Spark standalone cluster (:data:`CLUSTER_FILES`);
* ``realdata``: reads ``../shared/datasets`` (calls :func:`dataset_path`, itself or in a fixture it
  uses); such a test skips, with the reason, where that folder is absent;
* ``slow``: takes more than ~20 s on a 2-core machine: uses a fixture of :data:`SLOW_FIXTURES`, reads
  real data, or is one of :data:`SLOW_TESTS`.

``pytest -m "not spark"`` runs the Spark-free tests in seconds; ``pytest -m "not slow"`` skips the
minutes-long ones; a plain ``pytest`` runs everything.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from pathlib import Path

import pytest

from recaug_spark.config import SparkConfig, load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASETS = REPO_ROOT.parent / "shared" / "datasets"

CLUSTER_FILES = frozenset({"test_cluster.py", "test_standalone_e2e.py", "test_determinism_cluster.py",
                           "test_faults.py", "test_fault_driver.py"})
# This file's fixtures that start (or stand on) the session SparkSession.
SPARK_FIXTURES = ("spark", "default_run", "trained_run", "toy_generators")
# The pipeline (generate → augment on 5,000 events) and its train stage: minutes, once per session.
SLOW_FIXTURES = frozenset({"default_run", "trained_run"})
# Tests that take more than ~20 s on their own (file::function, every parametrization).
SLOW_TESTS = {
    "test_cluster.py::test_start_run_job_stop": "starts a master and a worker, runs a job on them",
    "test_standalone_e2e.py::test_pipeline_on_standalone_cluster": "the whole pipeline through spark-submit",
    "test_determinism_cluster.py::test_same_rows_with_one_or_two_executors_and_after_a_killed_task":
        "three augment jobs on a two-worker cluster",
    "test_notebooks.py::test_notebook_executes_on_the_default_run": "a Jupyter kernel per notebook",
    "test_exit.py::test_read_arrow_exits_zero_every_time": "20 fresh interpreters",
    "test_faults.py::test_executor_killed_mid_ingest_gives_the_same_tables": "pipeline runs on a 2-worker cluster",
    "test_faults.py::test_executor_killed_mid_clean_gives_the_same_tables": "pipeline runs on a 2-worker cluster",
    "test_faults.py::test_executor_killed_mid_augment_gives_the_same_rows": "pipeline runs on a 2-worker cluster",
    "test_exit.py::test_documented_notebook_read_exits_zero_every_time": "20 fresh interpreters with Polars",
    "test_generator_sequence.py::test_two_torch_distributor_ranks_train_the_same_kind_of_generator":
        "two TorchDistributor ranks, 30 epochs",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker in _markers(item):
            item.add_marker(marker)


def _markers(item) -> list[str]:
    file = item.path.name
    function = getattr(item, "function", None)
    fixtures = set(getattr(item, "fixturenames", ()))  # the closure: fixtures used through other fixtures too
    if "getfixturevalue" in _source(function):  # fixtures asked for at run time: the ones its module names
        module = _file_text(str(item.path))
        fixtures |= {name for name in SPARK_FIXTURES if f'"{name}"' in module}
    cluster = file in CLUSTER_FILES
    realdata = any("dataset_path(" in _source(f) for f in (function, *_fixture_functions(item)))
    test = f"{file}::{getattr(item, 'originalname', item.name)}"
    slow = bool(fixtures & SLOW_FIXTURES) or realdata or test in SLOW_TESTS
    spark = cluster or bool(fixtures & set(SPARK_FIXTURES))
    flags = {"spark": spark, "cluster": cluster, "realdata": realdata, "slow": slow}
    return [marker for marker, on in flags.items() if on]


def _fixture_functions(item) -> list:
    """The functions of the fixtures the test uses (pytest's fixture info; empty if it ever moves)."""
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return [d.func for name in getattr(item, "fixturenames", ()) for d in definitions.get(name, ())]


@lru_cache(maxsize=None)
def _source(function) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


@lru_cache(maxsize=None)
def _file_text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


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
        cfg = SequenceGeneratorConfig(direction=direction, hidden=16, epochs=30, dropout=0.0, lr=5e-3,
                                      fidelity_users=50)
        refs[direction] = fit_sequence_generator(sequences, valid if direction == "forward" else None, cfg, models,
                                                 name=f"{direction}_transformer", trained_on={"sequences": 0})
    return models, refs, rows
