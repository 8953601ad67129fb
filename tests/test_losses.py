"""Training objectives (recaug_spark.train.models): bce / ce / sampled_softmax on inputs with known
answers, and each loss trained end to end on a pattern a model must learn."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from recaug_spark.train.config import TrainConfig  # noqa: E402
from recaug_spark.train.models import bce_loss, ce_loss, sampled_softmax_loss  # noqa: E402
from recaug_spark.train.trainer import training_loss  # noqa: E402


class _Fixed(torch.nn.Module):
    """A 'model' whose hidden state at every position is one given vector (no leading-padding cut)."""

    ignores_leading_padding = False

    def __init__(self, n_items: int, embeddings: torch.Tensor, state: torch.Tensor):
        super().__init__()
        self.n_items = n_items
        self.item_embeddings = torch.nn.Embedding.from_pretrained(embeddings, freeze=False)
        self.state = state

    def item_embedding(self, ids):
        return self.item_embeddings(ids)

    def forward(self, input_ids, *, position_offset=0):
        return self.state.expand(*input_ids.shape, -1)


def _batch():
    inputs = torch.tensor([[0, 1, 2], [0, 0, 3]])
    positives = torch.tensor([[0, 2, 3], [0, 0, 4]])  # three positions with a target
    return inputs, positives


def test_zero_states_give_the_log_of_the_candidate_counts():
    n_items = 6
    model = _Fixed(n_items, torch.randn(n_items + 2, 4), torch.zeros(4))
    inputs, positives = _batch()
    negatives = torch.tensor([[0, 5, 5], [0, 0, 5]])
    assert bce_loss(model, inputs, positives, negatives).item() == pytest.approx(2 * math.log(2))
    assert ce_loss(model, inputs, positives).item() == pytest.approx(math.log(n_items))
    shared = torch.tensor([1, 5, 6])  # never a positive: K + 1 equal logits
    assert sampled_softmax_loss(model, inputs, positives, shared).item() == pytest.approx(math.log(4))
    # A sampled negative equal to a position's positive leaves that position's softmax: item 2 is
    # the positive of one of three positions, which then has 3 candidates instead of 4.
    colliding = torch.tensor([2, 5, 6])
    expected = (math.log(3) + 2 * math.log(4)) / 3
    assert sampled_softmax_loss(model, inputs, positives, colliding).item() == pytest.approx(expected)


def test_ce_matches_a_hand_computed_softmax_and_ignores_padding_and_mask_token():
    n_items = 3
    embeddings = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [9.0, 9.0]])  # 0 and 4 never scored
    model = _Fixed(n_items, embeddings, torch.tensor([2.0, 0.0]))
    inputs, positives = torch.tensor([[1, 2]]), torch.tensor([[0, 3]])
    logits = [2.0, 0.0, 2.0]  # items 1, 2, 3
    expected = -(logits[2] - math.log(sum(math.exp(v) for v in logits)))
    assert ce_loss(model, inputs, positives).item() == pytest.approx(expected)


def test_sampled_softmax_negatives_follow_the_seed_and_stay_in_the_catalog(monkeypatch):
    import recaug_spark.train.models as models

    cfg = TrainConfig(loss="sampled_softmax", loss_negatives=50, device="cpu")
    draws: list[torch.Tensor] = []
    monkeypatch.setattr(models, "sampled_softmax_loss", lambda m, i, p, shared, weights=None: draws.append(shared) or 0.0)

    def two_batches(seed):
        objective = training_loss(cfg, 7, seed)
        for _ in range(2):
            objective(None, torch.zeros(1, 2, dtype=torch.long), None, None)
        return draws[-2:]

    first, again, other = two_batches(1), two_batches(1), two_batches(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[0], first[1])
    seen = torch.cat(first)
    assert len(seen) == 100 and int(seen.min()) >= 1 and int(seen.max()) <= 7 and len(seen.unique()) == 7


def test_unknown_loss_is_rejected_by_the_config():
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="hinge")
