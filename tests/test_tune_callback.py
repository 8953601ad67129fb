"""The trainer's ``on_epoch`` callback (what ``recaug tune`` prunes through): it gets, after each
validation, the numbers the epoch log line shows, and an exception it raises stops training there."""

from __future__ import annotations

import random
import re

import pyarrow as pa
import pytest

pytest.importorskip("torch")

from recaug_spark.train.config import TrainConfig  # noqa: E402
from recaug_spark.train.data import pinned_files, read_targets  # noqa: E402

N_ITEMS = 40


@pytest.fixture(scope="module")
def pattern(tmp_path_factory):
    """120 users whose items follow i → i + 1 (mod 40): 'real' rows and leave-one-out targets."""
    from deltalake import write_deltalake

    root, rnd = tmp_path_factory.mktemp("callback"), random.Random(5)
    users = []
    for u in range(120):
        start, length = rnd.randrange(N_ITEMS), rnd.randint(5, 10)
        users.append((f"u{u:03d}", [f"i{(start + j) % N_ITEMS:02d}" for j in range(length)]))
    table = pa.table(
        {
            "sequence_id": [u for u, _ in users],
            "user_id": [u for u, _ in users],
            "item_ids": pa.array([seq[:-2] for _, seq in users], pa.list_(pa.string())),
            "operator_chain": ["real"] * len(users),
        }
    )
    write_deltalake(str(root / "augmented_sequences"), table, partition_by=["operator_chain"])
    targets = pa.table(
        {
            "user_id": [u for u, _ in users] * 2,
            "split": ["valid"] * len(users) + ["test"] * len(users),
            "item_id": [seq[-2] for _, seq in users] + [seq[-1] for _, seq in users],
        }
    )
    write_deltalake(str(root / "sequence_targets"), targets)
    return pinned_files(str(root / "augmented_sequences")), read_targets(str(root / "sequence_targets"))


def _config(**overrides) -> TrainConfig:
    params = dict(hidden=16, blocks=1, heads=2, max_len=8, dropout=0.1, attention_dropout=0.1, lr=5e-3,
                  batch_size=32, epochs=5, patience=10, num_threads=1, device="cpu", seeds=(3,))
    return TrainConfig(**{**params, **overrides})


def test_on_epoch_gets_after_each_validation_the_numbers_the_log_line_shows(pattern):
    from recaug_spark.train.trainer import train

    files, targets = pattern
    lines, calls = [], []
    result = train(_config(eval_every=2), files, targets, targets, log=lines.append,
                   on_epoch=lambda epoch, metrics: calls.append((epoch, metrics)))
    assert len(lines) == 5  # the log line stays, one per epoch
    logged = {
        int(re.search(r"^epoch=(\d+) ", line).group(1)): re.search(r" valid_ndcg@10=(\S+)", line).group(1)
        for line in lines
        if "valid_ndcg@10=" in line
    }
    assert [epoch for epoch, _ in calls] == sorted(logged) == [1, 3, 4]  # every 2nd epoch and the last
    for epoch, metrics in calls:
        assert f"{metrics['ndcg@10']:.4f}" == logged[epoch]
        assert metrics["ndcg@10"] == result["history"][epoch]["valid_ndcg@10"]  # exact, not the rounded text
        assert {"hr@10", "users"} <= set(metrics) and metrics["users"] == 120
    assert dict(calls)[result["best_epoch"]] == result["valid"]  # the early stopping saw the same metrics


def test_an_exception_raised_by_on_epoch_stops_training_there_and_propagates(pattern, tmp_path):
    from recaug_spark.train.trainer import train

    files, targets = pattern

    class Pruned(Exception):
        pass

    raised = Pruned("stop at epoch 1")

    def prune_at_epoch_one(epoch, metrics):
        if epoch == 1:
            raise raised

    lines, checkpoint = [], tmp_path / "best.pt"
    with pytest.raises(Pruned) as caught:
        train(_config(), files, targets, targets, log=lines.append, on_epoch=prune_at_epoch_one,
              checkpoint_path=str(checkpoint))
    assert caught.value is raised  # unchanged, not wrapped
    assert [line.split()[0] for line in lines] == ["epoch=0", "epoch=1"]  # no epoch after the raise
    assert not checkpoint.exists()  # no test evaluation, no checkpoint of a stopped run
    # the stopped run leaves nothing behind: a fresh run's first two epochs show the same numbers
    again = []
    train(_config(epochs=2), files, targets, targets, log=again.append)
    assert [_figures(line) for line in again] == [_figures(line) for line in lines]


def _figures(line: str) -> str:
    """An epoch line without its timings and progress suffix."""
    return re.sub(r" (train|eval)_seconds=\S+", "", line.split(" epoch ")[0])
