"""One trial of ``recaug tune``: augment the training sequences with the trial's policy, train briefly,
score on the **validation** split only.

A trial never touches Spark for the rows: the pinned ``sequences`` table is read with pyarrow and
run through the augment engine's reference per-batch function (``augment.engine.augment_record_batch``:
real and branch rows from one batch; the stage's executors run ``branch_record_batch`` and Spark adds
the real rows, with the same rows as the result, tests/test_augment_stage.py), so a trial trains on
exactly the rows ``recaug augment`` would write for that policy (randomness is keyed per user, not per
partition). The rows go to
Parquet files in a scratch folder, one per operator chain, and the trainer reads them as it reads a
pinned ``augmented_sequences`` version (``train.consumption.arm_inputs`` + ``train.trainer.train``).
The scratch folder is removed when the trial ends.

Operators fitted without Spark (``Augmenter.fit`` not overridden) and ``max_length`` targeting run
as they are; operators or targeting that fit state on a DataFrame (popularity, generator models)
need ``fit_frame``: a callable giving the ``sequences`` DataFrame (the CLI passes one from its Spark
session).

The test split is never read here: :func:`read_split_targets` keeps the ``valid`` rows of
``sequence_targets`` (batches filtered as they are read) and the trainer gets those as both its
validation and its "test" targets, so its test evaluation sees no user at all.

A *budget* sets the epochs and the share of users (a stable hash of ``user_id``): the proxy ranks
trials cheaply, the full budget re-runs the best ones. Every trial of an evaluator trains with the
same seed (same initial weights) and the same number of optimizer steps per epoch (the real rows'
batches, as in ``train/experiment.py``'s fairness rule).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recaug_spark.augment.base import Augmenter
from recaug_spark.schemas import REAL_CHAIN
from recaug_spark.tune.space import Policy

SEQUENCE_COLUMNS = ("user_id", "item_ids", "timestamps", "event_types", "session_ids", "countries", "devices")


class TuneError(ValueError):
    """A search that cannot run; the message names the table, operator or setting."""


@dataclass(frozen=True)
class Budget:
    """How much one evaluation trains: ``epochs`` (× the fixed steps per epoch) on ``user_share`` of the users."""

    label: str  # proxy / full
    epochs: int
    user_share: float = 1.0


@dataclass(frozen=True)
class TrialInputs:
    """The pinned tables trials read (versions fixed when the study starts)."""

    sequences_uri: str
    sequences_version: int
    targets_uri: str
    targets_version: int
    items_uri: str | None = None
    items_version: int | None = None


def pin_inputs(warehouse: str) -> TrialInputs:
    """The latest versions of ``sequences``, ``sequence_targets`` and (when present) ``items``."""
    from recaug_spark.delta import resolve_uri, table_exists, table_version

    uris = {name: resolve_uri(name, warehouse) for name in ("sequences", "sequence_targets", "items")}
    for name in ("sequences", "sequence_targets"):
        if not table_exists(uris[name]):
            raise TuneError(
                f"no {name} table at {uris[name]}: run the pipeline through clean first (recaug run --until clean)"
            )
    items = uris["items"] if table_exists(uris["items"]) else None
    return TrialInputs(
        uris["sequences"],
        table_version(uris["sequences"]),
        uris["sequence_targets"],
        table_version(uris["sequence_targets"]),
        items,
        table_version(items) if items else None,
    )


def read_split_targets(uri: str, version: int, split: str) -> pa.Table:
    """The (user_id, split, item_id) rows of one split of ``sequence_targets``, filtered batch by batch."""
    from recaug_spark.train.data import iter_batches, pinned_files

    kept = [
        batch.filter(pc.equal(batch.column("split"), split))
        for batch in iter_batches(pinned_files(uri, version), ["user_id", "split", "item_id"])
    ]
    schema = pa.schema([("user_id", pa.string()), ("split", pa.string()), ("item_id", pa.string())])
    return pa.Table.from_batches([b.cast(schema) for b in kept], schema=schema)


def sampled_users(user_ids: pa.Array, share: float, seed: int) -> np.ndarray:
    """A boolean mask keeping about ``share`` of the users, by a stable hash of each id (the same users
    for every trial, whatever the table's order)."""
    from recaug_spark import rng

    if share >= 1:
        return np.ones(len(user_ids), bool)
    return rng.uniform(seed, "tune:users", rng.key_strings(user_ids)) < share


def epoch_reporter(metric: str, report: Callable[[int, float], None]) -> Callable[[int, dict], None]:
    """A trainer ``on_epoch`` callback (``train.trainer.train``) that calls ``report(epoch, score)`` with
    the validation ``metric`` after every validation; what ``report`` raises (the pruning exception)
    stops the training."""

    def on_epoch(epoch: int, metrics: dict) -> None:
        report(epoch, float(metrics[metric]))

    return on_epoch


def needs_spark(policy: Policy) -> list[str]:
    """The operators and targeting of ``policy`` that fit their state on a Spark DataFrame."""
    from recaug_spark.augment.registry import build

    found = [
        name
        for b in policy.branches
        for name in b.operators
        if type(build(name, b.params.get(name))).fit is not Augmenter.fit
    ]
    found += [
        f"{b.chain}: cold_start_days/long_tail_share targeting"
        for b in policy.branches
        if b.cold_start_days is not None or b.long_tail_share is not None
    ]
    return sorted(set(found))


@dataclass
class TrialEvaluator:
    """Evaluates policies on one warehouse's pinned tables; loads the sequences, validation targets and
    vocabulary once (lazily) and reuses them for every trial.

    ``cfg``: the whole ``Config`` (``train`` for the model and loss, ``augment`` for the engine settings,
    ``run.seed`` for the augmentation, ``tune.train_seed`` for the models)."""

    cfg: Any
    inputs: TrialInputs
    models_dir: str | None = None
    fit_frame: Callable[[], Any] | None = None
    scratch: str | None = None  # default: the system's temporary folder
    _cache: dict = field(default_factory=dict, repr=False)

    def __call__(self, policy: Policy, budget: Budget, report: Callable[[int, float], None] | None = None) -> dict:
        """Augment, train and validate once: ``{"score", "best_epoch", "cap_hit", "epochs_run", "seconds",
        "rows"}`` (``rows``: rows per operator chain, real included)."""
        started = time.perf_counter()
        sequences = self.sequences(budget.user_share)
        branches = self.compile(policy)
        folder = Path(tempfile.mkdtemp(prefix=f"trial-{budget.label}-", dir=self.scratch))
        try:
            files = write_trial_rows(sequences, branches, self.cfg, folder)
            result = self._train(policy, budget, files, report)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        metric = self.cfg.train.early_stopping_metric
        score = (result.get("valid") or {}).get(metric, math.nan)
        return {
            "score": float(score),
            "best_epoch": int(result["best_epoch"]),
            "cap_hit": bool(result["cap_hit"]),
            "epochs_run": int(result["epochs_run"]),
            "seconds": time.perf_counter() - started,
            "rows": {chain: sum(f.rows for f in chain_files) for chain, chain_files in files.items()},
        }

    def sequences(self, share: float) -> pa.Table:
        key = ("sequences", share)
        if key not in self._cache:
            from recaug_spark.train.data import iter_batches, pinned_files

            files = pinned_files(self.inputs.sequences_uri, self.inputs.sequences_version)
            present = set(files and _columns(files[0].path))
            table = pa.Table.from_batches(list(iter_batches(files, [c for c in SEQUENCE_COLUMNS if c in present])))
            self._cache[key] = table.filter(pa.array(sampled_users(table.column("user_id"), share, self.cfg.run.seed)))
        return self._cache[key]

    def compile(self, policy: Policy) -> list:
        from recaug_spark.augment.engine import compile_branches

        if policy.is_baseline:
            return []
        spark_fitted = needs_spark(policy)
        if spark_fitted and self.fit_frame is None:
            raise TuneError(
                f"{spark_fitted} fit their state with Spark: run the search from `recaug tune` "
                "(which passes the sequences DataFrame) or leave them out of tune.space.chains"
            )
        frame = self.fit_frame() if spark_fitted else None
        augment = self.cfg.augment.model_copy(update={"branches": policy.branches})
        return compile_branches(augment, frame, None, self.models_dir)

    def _targets_and_vocabulary(self):
        if "valid" not in self._cache:
            from recaug_spark.train.data import Vocabulary, pinned_files

            valid = read_split_targets(self.inputs.targets_uri, self.inputs.targets_version, "valid")
            if self.inputs.items_uri is not None:
                vocabulary = Vocabulary.from_items_table(self.inputs.items_uri, self.inputs.items_version)
            else:
                vocabulary = Vocabulary.from_files(
                    pinned_files(self.inputs.sequences_uri, self.inputs.sequences_version),
                    extra=valid.column("item_id").to_pylist(),
                )
            self._cache["valid"] = (valid, vocabulary)
        return self._cache["valid"]

    def _train(self, policy: Policy, budget: Budget, files: dict, report) -> dict:
        from recaug_spark.train.consumption import arm_inputs
        from recaug_spark.train.trainer import train

        valid, vocabulary = self._targets_and_vocabulary()
        real = files[REAL_CHAIN]
        steps = self.cfg.train.steps_per_epoch or max(
            1, math.ceil(sum(f.rows for f in real) / self.cfg.train.batch_size)
        )
        trainer_cfg = self.cfg.train.trainer_config().model_copy(
            update={"epochs": budget.epochs, "steps_per_epoch": steps}
        )
        chain_files = [f for chain, chain_files in files.items() if chain != REAL_CHAIN for f in chain_files]
        train_files, objective = arm_inputs(policy.variant, real, chain_files)
        on_epoch = None if report is None else epoch_reporter(trainer_cfg.early_stopping_metric, report)
        return train(
            trainer_cfg,
            train_files,
            valid,
            valid,
            history_files=real,
            vocabulary=vocabulary,
            seed=self.cfg.tune.train_seed,
            on_epoch=on_epoch,
            objective=objective,
        )


def _columns(path: str) -> list[str]:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).schema_arrow.names


def write_trial_rows(sequences: pa.Table, branches: list, cfg, folder: Path) -> dict[str, list]:
    """The augment stage's rows for ``branches`` (real rows first), one Parquet file per operator chain
    under ``folder``: ``{chain: [DataFile]}`` with the ``operator_chain`` partition set, as
    ``train.data.pinned_files`` lists a Delta version."""
    import pyarrow.parquet as pq

    from recaug_spark.augment.arrow_io import output_schema
    from recaug_spark.augment.engine import augment_record_batch
    from recaug_spark.schemas import AUGMENTED_SEQUENCES
    from recaug_spark.train.data import CHAIN_COLUMN, DataFile

    schema = output_schema(AUGMENTED_SEQUENCES)
    by_chain: dict[str, list[pa.RecordBatch]] = {}
    for batch in sequences.to_batches(max_chunksize=cfg.augment.arrow_batch_rows):
        for out in augment_record_batch(batch, branches, cfg.augment, cfg.run.seed, "tune", cfg.hash, schema):
            by_chain.setdefault(out.column(CHAIN_COLUMN)[0].as_py(), []).append(out)
    if REAL_CHAIN not in by_chain:
        raise TuneError("the sequences table has no user left to train on (tune.budget.proxy_user_share too small?)")
    files = {}
    for index, (chain, batches) in enumerate(sorted(by_chain.items())):
        path = folder / f"chain-{index}.parquet"
        pq.write_table(pa.Table.from_batches(batches, schema=schema), path)
        rows = sum(b.num_rows for b in batches)
        files[chain] = [DataFile(str(path), rows, path.stat().st_size, ((CHAIN_COLUMN, chain),))]
    return files
