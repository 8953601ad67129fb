"""Consumption modes of augmented rows (recaug_spark.train.consumption) on a planted table whose
answers are known: which rows each batch holds, with which weight, when pre-training switches,
and that the contrastive term is exactly weight × InfoNCE of the paired views."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

from recaug_spark.config import VariantConfig  # noqa: E402
from recaug_spark.train.config import TrainConfig  # noqa: E402
from recaug_spark.train.consumption import arm_inputs  # noqa: E402
from recaug_spark.train.data import SequenceTrainingData, Vocabulary, pinned_files, read_sequences  # noqa: E402

N_ITEMS = 60
# Real rows use items 0..39 (i → i + 1 pattern), 'crop' rows only items 40..59: a batch row's
# items tell which chain it came from.


def _config(**overrides) -> TrainConfig:
    params = dict(hidden=16, blocks=1, heads=2, max_len=8, dropout=0.0, attention_dropout=0.0, lr=5e-3,
                  batch_size=16, epochs=6, patience=1, num_threads=1, device="cpu", seeds=(3,), loss="ce")
    params.update(overrides)
    return TrainConfig(**params)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    from deltalake import write_deltalake

    rnd = random.Random(5)
    rows, targets = [], []
    for u in range(40):
        start = rnd.randrange(30)
        items = [f"i{start + j:02d}" for j in range(6)]
        rows.append((f"u{u:02d}", items[:4], "real"))
        targets += [(f"u{u:02d}", "valid", items[4]), (f"u{u:02d}", "test", items[5])]
        for copy in range(2 if u % 4 else 0):  # every 4th user has no view
            rows.append((f"u{u:02d}", [f"i{40 + rnd.randrange(20):02d}" for _ in range(3)], "crop"))
    uri = str(tmp_path_factory.mktemp("consume") / "augmented_sequences")
    write_deltalake(uri, pa.table({"user_id": [r[0] for r in rows], "item_ids": [r[1] for r in rows],
                                   "operator_chain": [r[2] for r in rows]}), partition_by=["operator_chain"])
    vocabulary = Vocabulary([f"i{i:02d}" for i in range(N_ITEMS)])
    target_table = pa.table({"user_id": [t[0] for t in targets], "split": [t[1] for t in targets],
                             "item_id": [t[2] for t in targets]})
    return SimpleNamespace(real=pinned_files(uri, chains=["real"]), crop=pinned_files(uri, chains=["crop"]),
                           vocabulary=vocabulary, targets=target_table)


def _inputs(table, files, config):
    sequences = read_sequences(files, table.vocabulary)
    data = SequenceTrainingData(sequences.offsets, sequences.items, table.vocabulary.n_items, config.max_len)
    return SimpleNamespace(config=config, data=data, sequences=sequences, vocabulary=table.vocabulary,
                           n_items=table.vocabulary.n_items, seed=3, rank=0, batch_size=16,
                           steps=data.num_batches(16))


def _is_crop(inputs: torch.Tensor) -> np.ndarray:
    items = inputs.numpy()
    return ((items > 40) & (items <= N_ITEMS)).any(1)  # vocabulary indices 41..60 are i40..i59


def test_rows_mode_trains_on_real_and_augmented_rows_in_table_order(table):
    variant = VariantConfig(name="r", chains=["crop"])
    files, objective = arm_inputs(variant, table.real, table.crop)
    assert objective is None and files == sorted(table.real + table.crop, key=lambda f: f.path)
    assert arm_inputs(None, table.real, []) == (table.real, None)


def test_weighted_mode_gives_each_row_its_chain_weight(table):
    variant = VariantConfig(name="w", chains=["crop"], consume="weighted", chain_weights={"crop": 0.25})
    files, factory = arm_inputs(variant, table.real, table.crop)
    objective = factory(_inputs(table, files, _config()))
    seen = 0
    for inputs, positives, negatives, weights in objective.batches(0):
        crop = _is_crop(inputs)
        assert np.allclose(weights.numpy(), np.where(crop, 0.25, 1.0))
        seen += len(weights)
    assert seen == 40 + 60  # 40 real rows, 30 users × 2 crop rows


def test_weighted_loss_ignores_rows_of_weight_zero(table):
    from recaug_spark.train.models import build_model, ce_loss

    torch.manual_seed(0)
    model = build_model("sasrec", N_ITEMS, hidden=16, blocks=1, heads=2, max_len=8, dropout=0.0,
                        attention_dropout=0.0)
    inputs = torch.tensor([[0, 1, 2, 3], [0, 41, 42, 43]])
    positives = torch.tensor([[0, 2, 3, 4], [0, 42, 43, 44]])
    weighted = ce_loss(model, inputs, positives, None, torch.tensor([1.0, 0.0]))
    assert weighted.item() == pytest.approx(ce_loss(model, inputs[:1], positives[:1]).item(), rel=1e-6)
    halves = ce_loss(model, inputs, positives, None, torch.tensor([0.5, 0.5]))
    assert halves.item() == pytest.approx(ce_loss(model, inputs, positives).item(), rel=1e-6)


def test_pretrain_switches_to_real_rows_after_its_epochs(table):
    variant = VariantConfig(name="p", chains=["crop"], consume="pretrain", pretrain_epochs=2)
    files, factory = arm_inputs(variant, table.real, table.crop)
    objective = factory(_inputs(table, files, _config()))
    assert objective.warmup_epochs == 2
    crop_rows = [sum(int(_is_crop(batch[0]).sum()) for batch in objective.batches(epoch)) for epoch in range(4)]
    assert crop_rows[0] == crop_rows[1] == 60 and crop_rows[2] == crop_rows[3] == 0


def test_pretrain_holds_early_stopping_until_the_switch(table):
    from recaug_spark.train.trainer import train

    variant = VariantConfig(name="p", chains=["crop"], consume="pretrain", pretrain_epochs=4)
    files, factory = arm_inputs(variant, table.real, table.crop)
    # lr 0: no validation ever improves on the first, so patience 1 would stop after epoch 1
    config = _config(lr=1e-12, epochs=10, patience=1)
    plain = train(config, files, table.targets, table.targets, history_files=table.real, vocabulary=table.vocabulary)
    held = train(config, files, table.targets, table.targets, history_files=table.real, vocabulary=table.vocabulary,
                 objective=factory)
    assert plain["epochs_run"] == 2 and plain["stopped_early"]
    assert held["epochs_run"] == 5 and held["stopped_early"]  # 4 pre-training epochs, then patience 1


def test_contrastive_adds_weight_times_info_nce_of_the_paired_views(table):
    from recaug_spark.train.contrastive import ViewPairs, contrastive_term
    from recaug_spark.train.models import build_model
    from recaug_spark.train.trainer import training_loss

    variant = VariantConfig(name="c", chains=["crop"], consume="contrastive", contrastive_weight=0.3,
                            temperature=0.5)
    files, factory = arm_inputs(variant, table.real, table.crop)
    assert files == table.real  # the next-item loss sees real rows only
    config = _config()
    inputs = _inputs(table, files, config)
    objective = factory(inputs)
    torch.manual_seed(0)
    model = build_model("sasrec", N_ITEMS, hidden=16, blocks=1, heads=2, max_len=8, dropout=0.0,
                        attention_dropout=0.0)
    batch = next(iter(objective.batches(0)))
    assert len(batch) == 4 and not _is_crop(batch[0]).any()
    total = objective.loss(0)(model, *batch)

    from recaug_spark.train.data import mix_seed

    pairs = ViewPairs.build(inputs.sequences, read_sequences(table.crop, table.vocabulary), config.max_len)
    generator = torch.Generator().manual_seed(mix_seed(3, 0, 0, 15485863))
    term = contrastive_term(model, pairs, batch[3].numpy(), generator, temperature=0.5, device="cpu")
    plain = training_loss(config, N_ITEMS, 0)(model, *batch[:3])
    assert term.item() > 0
    assert total.item() == pytest.approx(plain.item() + 0.3 * term.item(), rel=1e-5)


@pytest.mark.parametrize("mode", ["weighted", "contrastive", "pretrain"])
def test_every_mode_trains_end_to_end_and_learns_the_pattern(table, mode):
    from recaug_spark.train.trainer import train

    extra = {"weighted": {"weight": 0.5}, "contrastive": {}, "pretrain": {"pretrain_epochs": 2}}[mode]
    variant = VariantConfig(name="v", chains=["crop"], consume=mode, **extra)
    files, factory = arm_inputs(variant, table.real, table.crop)
    result = train(_config(epochs=15, patience=3), files, table.targets, table.targets, history_files=table.real,
                   vocabulary=table.vocabulary, objective=factory)
    assert result["test"]["users"] == 40
    assert result["test"]["hr@10"] > 0.5, result["history"]  # random: about 10 / 56
