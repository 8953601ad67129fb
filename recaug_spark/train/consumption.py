"""How an experiment arm consumes its augmented rows (``VariantConfig.consume``).

Every mode reads the rows the Spark job wrote to ``augmented_sequences``, selected by provenance
(the ``operator_chain`` partition): nothing is augmented in the data loader.

* ``rows`` — the chains' rows are extra training sequences (the trainer's default objective);
* ``weighted`` — the same sequences, each row's next-item loss weighted by its chain's weight
  (real rows weigh 1), so that a noisy operator counts for less than a real click;
* ``contrastive`` — the next-item loss on the real rows only, plus ``contrastive_weight`` × an
  InfoNCE term between two views of each batch user's sequence (``recaug_spark.train.contrastive``);
* ``pretrain`` — ``pretrain_epochs`` epochs on real + augmented rows, then the real rows only,
  with early stopping held until the switch and its patience restarted there (the ASReP recipe).

``arm_inputs(variant, real_files, chain_files)`` gives the files a run trains on and the objective
factory for ``recaug_spark.train.trainer.train``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from recaug_spark.schemas import REAL_CHAIN
from recaug_spark.train.data import CHAIN_COLUMN, DataFile, SequenceTrainingData, TrainDataError, gather, mix_seed

MODES = ("rows", "weighted", "contrastive", "pretrain")


def arm_inputs(variant, real_files: Sequence[DataFile], chain_files: Sequence[DataFile]):
    """``(training files, objective factory or None)`` of an arm; ``variant`` None is the baseline.
    Files are in path order, as the table lists them."""
    mode = "rows" if variant is None else variant.consume
    if mode == "contrastive":
        return list(real_files), _keyed(contrastive_objective(list(chain_files), variant.contrastive_weight,
                                                             variant.temperature, variant.similarity), variant)
    files = sorted([*real_files, *chain_files], key=lambda f: f.path)
    if mode == "rows":
        return files, None
    chains = [f.partition_value(CHAIN_COLUMN) for f in files]
    rows = [f.rows for f in files]
    if mode == "weighted":
        weights = [1.0 if chain == REAL_CHAIN else variant.chain_weight(chain) for chain in chains]
        return files, _keyed(weighted_objective(np.repeat(np.asarray(weights, np.float64), rows)), variant)
    is_real = np.repeat([chain == REAL_CHAIN for chain in chains], rows)
    return files, _keyed(pretrain_objective(is_real, variant.pretrain_epochs), variant)


def _keyed(factory, variant):
    """``factory`` labelled with the variant's settings: a resumed run's progress must come from
    the same consumption settings (``recaug_spark.train.progress``)."""
    factory.settings = variant.model_dump(mode="json")
    return factory


def _epoch_loss(inputs, epoch: int):
    from recaug_spark.train.trainer import training_loss

    return training_loss(inputs.config, inputs.n_items, mix_seed(inputs.seed, epoch, inputs.rank, 104729))


def _per_row(values: np.ndarray, inputs, what: str) -> np.ndarray:
    """``values`` (one per row of the files, in file order) for each training row of ``inputs.data``."""
    if len(values) != len(inputs.sequences):
        raise TrainDataError(f"{what}: {len(values)} values for {len(inputs.sequences)} sequences read; the files' "
                             "row counts in the Delta log disagree with their contents")
    return inputs.sequences.in_file_order(values)[inputs.data.sequence_rows]


def weighted_objective(row_weights: np.ndarray):
    """Next-item batches with a fourth tensor, each row's loss weight, under the configured loss."""
    from recaug_spark.train.trainer import Objective

    def factory(inputs):
        import torch

        weights = torch.from_numpy(_per_row(row_weights, inputs, "weighted"))

        def batches(epoch: int):
            for rows, generator in inputs.data.batch_rows(epoch, inputs.batch_size, inputs.seed, inputs.rank,
                                                          inputs.steps):
                yield (*inputs.data.tensors(rows, generator), weights[rows])

        return Objective(batches, lambda epoch: _epoch_loss(inputs, epoch))

    return factory


def pretrain_objective(is_real: np.ndarray, epochs: int):
    """All rows for ``epochs`` epochs, then the real rows only (same steps per epoch)."""
    from recaug_spark.train.trainer import Objective

    def factory(inputs):
        real_rows = np.flatnonzero(_per_row(is_real, inputs, "pretrain"))
        sequence_rows = inputs.data.sequence_rows[real_rows]
        offsets, items = gather(inputs.sequences.offsets, inputs.sequences.items, sequence_rows)
        real = SequenceTrainingData(offsets, items, inputs.n_items, inputs.config.max_len)

        def batches(epoch: int):
            data = inputs.data if epoch < epochs else real
            return data.batches(epoch, inputs.batch_size, inputs.seed, inputs.rank, inputs.steps)

        return Objective(batches, lambda epoch: _epoch_loss(inputs, epoch), warmup_epochs=epochs)

    return factory


def contrastive_objective(view_files: Sequence[DataFile], weight: float, temperature: float,
                          similarity: str = "cos"):
    """Next-item batches on the real rows with a fourth tensor (each row's sequence index), under
    the configured loss + ``weight`` × InfoNCE between two views of each row's user."""
    from recaug_spark.train.trainer import Objective

    def factory(inputs):
        import torch

        from recaug_spark.train.contrastive import ViewPairs, contrastive_term
        from recaug_spark.train.data import read_sequences

        views = read_sequences(view_files, inputs.vocabulary)
        pairs = ViewPairs.build(inputs.sequences, views, inputs.config.max_len)
        sequence_rows = torch.from_numpy(inputs.data.sequence_rows)

        def batches(epoch: int):
            for rows, generator in inputs.data.batch_rows(epoch, inputs.batch_size, inputs.seed, inputs.rank,
                                                          inputs.steps):
                yield (*inputs.data.tensors(rows, generator), sequence_rows[rows])

        def loss(epoch: int):
            next_item = _epoch_loss(inputs, epoch)
            generator = torch.Generator().manual_seed(mix_seed(inputs.seed, epoch, inputs.rank, 15485863))

            def total(model, input_ids, positives, negatives, rows):
                value = next_item(model, input_ids, positives, negatives)
                term = contrastive_term(model, pairs, rows.cpu().numpy(), generator, temperature=temperature,
                                        device=input_ids.device, similarity=similarity)
                return value if term is None else value + weight * term

            return total

        return Objective(batches, loss)

    return factory
