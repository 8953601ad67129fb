"""The fit stage: trains the generator models that model-based augmenters use (``fit`` section).

Reads ``sequences`` (the training split only: held-out targets live in ``sequence_targets``, of
which only the *validation* rows are read, to report fidelity), and ``items``, at the versions it
pins, and writes one versioned artifact per generator into the models folder (``run.models``,
default: the warehouse's own ``models`` folder; :mod:`recaug_spark.generators.artifacts`):

* ``reverse_transformer`` — next-item Transformer on reversed sequences (ASReP pre-history);
* ``forward_transformer`` — the same forward (sequence extension, synthetic sessions);
* ``item_attributes`` — VAE over item attributes (Gaussian-copula baseline in its fidelity);
* ``description_index`` — all-MiniLM-L6-v2 embedding index for description expansion.

Each artifact records the table versions it was trained on and its fidelity figures; the stage
reports them (× 10,000 in the ``runs`` table's counts). A re-run with the same run id finds the
artifacts it already wrote (their manifests name the run id) and trains nothing again; any run whose
training data (content hash of what the fitter reads, in a stable order) and generator config equal
an artifact's reuses that artifact (``reused.<generator>`` = 1 in the counts) instead of fitting it
again: fits are deterministic, so a refit would give the same model.

Training is sized to the data: ``epochs`` is a cap; each model stops once the loss of a held-out
share of its training data (``validation_share``) has not improved for ``patience`` epochs, keeping
the best epoch's weights. Each epoch prints a line with the time so far and an ETA to the cap.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable

from recaug_spark.runs import RunContext, StageResult

SEQUENCE_GENERATORS = ("reverse_transformer", "forward_transformer")


def _already_fitted(models_dir: str, name: str, run_id: str, config: dict):
    """The artifact this run id already wrote for ``name`` with this config, else None."""
    from recaug_spark.generators.artifacts import ArtifactError, latest, manifest

    try:
        ref = latest(models_dir, name)
    except ArtifactError:
        return None
    written = manifest(ref)
    same = written.get("trained_on", {}).get("run_id") == run_id and written.get("config") == config
    return ref if same else None


def _fitters(ctx: RunContext, pinned: dict[str, int]) -> dict[str, tuple[object, Callable]]:
    """Generator name → (its config, a function fitting it). Given a worker pool, a sequence fitter
    prepares on the driver, submits the training and returns a callable that waits for it and saves the
    artifact; otherwise every fitter returns the ArtifactRef."""
    from pyspark.sql import functions as F

    cfg = ctx.cfg.fit
    warehouse = ctx.warehouse
    models = ctx.models_dir

    def trained_on(*tables: str) -> dict:
        return {"run_id": ctx.run_id, **{table: pinned[table] for table in tables}}

    def sequence_fitter(name: str):
        def fit(pool=None):
            from recaug_spark.generators.sequence import PendingFit, prepare_sequence_fit, train_windows

            sequences = warehouse.read("sequences", version=pinned["sequences"])
            targets = warehouse.read("sequence_targets", version=pinned["sequence_targets"])
            valid = targets.where(F.col("split") == "valid")
            pending = prepare_sequence_fit(sequences, valid, getattr(cfg, name), models, name=name,
                                           trained_on=trained_on("sequences", "sequence_targets"))
            if not isinstance(pending, PendingFit):
                return pending  # an artifact of the same data and config
            if pool is None or pending.cfg.num_processes > 1:
                return pending.finish(train_windows(*pending.train_args()))
            training = pool.submit(train_windows, *pending.train_args())
            return lambda: pending.finish(training.result())  # finished once the driver's other fits are done
        return fit

    def attribute_fitter(_pool=None):  # fitted in this process: the pool is for sequence models
        from recaug_spark.generators.attributes import fit_attribute_generator

        return fit_attribute_generator(warehouse.read("items", version=pinned["items"]), cfg.item_attributes, models,
                                       name="item_attributes", trained_on=trained_on("items"))

    def description_fitter(_pool=None):
        from recaug_spark.generators.text import fit_description_index

        return fit_description_index(warehouse.read("items", version=pinned["items"]), cfg.description_index,
                                     models, name="description_index", trained_on=trained_on("items"))

    fitters = {name: (getattr(cfg, name), sequence_fitter(name)) for name in SEQUENCE_GENERATORS}
    fitters["item_attributes"] = (cfg.item_attributes, attribute_fitter)
    fitters["description_index"] = (cfg.description_index, description_fitter)
    return fitters


def _fidelity_counts(name: str, fidelity: dict) -> dict[str, int]:
    """Numeric fidelity figures as ``fidelity.<generator>.<figure>_x10000`` counts (nested keys joined by '.')."""
    counts: dict[str, int] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            counts[f"{prefix}_x10000"] = int(round(float(value) * 10_000))

    walk(f"fidelity.{name}", fidelity or {})
    return counts


def run_fit(ctx: RunContext) -> StageResult:
    """Fit the chosen generators. With two cores or more, the sequence Transformers train in worker
    processes (one each, spawned) while the driver fits the item generators: the same weights as one
    after another in this process (one torch thread each, the same data and seed)."""
    from recaug_spark.generators.artifacts import manifest

    cfg = ctx.cfg.fit
    pinned = {table: ctx.read_version(table) for table in ("sequences", "sequence_targets", "items")}  # last clean's
    counts: dict[str, int] = {}
    tables = {f"read:{table}": version for table, version in pinned.items()}
    chosen = [(name, entry) for name, entry in _fitters(ctx, pinned).items() if name in cfg.generators]
    started, refs, fitted = time.perf_counter(), {}, set()
    with _training_pool(cfg) as pool:
        for number, (name, (generator_cfg, fit)) in enumerate(chosen, start=1):
            refs[name] = _already_fitted(ctx.models_dir, name, ctx.run_id, generator_cfg.model_dump(mode="json"))
            if refs[name] is None:
                _log(f"[fit] {number}/{len(chosen)} {name}: fitting (or reusing an artifact of the same data "
                     "and config)")
                refs[name] = fit(pool)
                fitted.add(name)  # by this run id: trained, or reused from an artifact of the same data and config
        for number, (name, _) in enumerate(chosen, start=1):
            ref = refs[name]() if callable(refs[name]) else refs[name]
            if name in fitted:
                counts[f"reused.{name}"] = int(manifest(ref).get("trained_on", {}).get("run_id") != ctx.run_id)
            fidelity = manifest(ref).get("fidelity") or {}
            _log(f"[fit] {number}/{len(chosen)} {ref.tag} (done {time.perf_counter() - started:.1f}s into the "
                 f"stage): {_describe(fidelity)}")
            counts |= _fidelity_counts(name, fidelity)
            counts[f"artifact.{name}.version"] = int(ref.version.lstrip("v"))
    counts["generators"] = len(cfg.generators)
    sequences = ctx.warehouse.read("sequences", version=pinned["sequences"]).count()
    return StageResult("fit", rows_in=sequences, rows_out=len(cfg.generators), counts=counts,
                       tables=tables, skipped=len(cfg.generators) > 0 and not fitted)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _training_pool(cfg):
    """Worker processes for the sequence Transformers (spawned: no forked JVM gateway or torch thread
    pools), or None where they train in this process: one core, or ``fit.parallel`` false."""
    import os

    workers = min(len([g for g in SEQUENCE_GENERATORS if g in cfg.generators]), os.cpu_count() or 1)
    if not cfg.parallel or workers < 2:
        yield None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _describe(fidelity: dict) -> str:
    parts = []
    for key, value in fidelity.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4f}")
        elif isinstance(value, (int, str)):
            parts.append(f"{key} {value}")
        elif isinstance(value, dict):
            parts.append(f"{key} {{{_describe(value)}}}")
    return ", ".join(parts)
