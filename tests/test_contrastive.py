"""Contrastive views (recaug_spark.train.contrastive): pairing by parent on planted views, and the
InfoNCE term on representations with known answers."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

from recaug_spark.train.contrastive import ViewPairs, info_nce  # noqa: E402
from recaug_spark.train.data import Sequences  # noqa: E402


def _sequences(rows: list[tuple[str, list[int]]]) -> Sequences:
    lengths = [len(items) for _, items in rows]
    return Sequences(keys=pa.array([key for key, _ in rows], pa.string()),
                     offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                     items=np.array([i for _, items in rows for i in items], np.int64))


REAL = _sequences([("u0", [1, 2, 3]), ("u1", [4, 5]), ("u2", [6, 7, 8])])
# Each view's first item names its parent and copy: u0 has three views, u1 one, u2 none; one view
# belongs to a user without a real row and must be ignored.
VIEWS = _sequences([("u1", [40, 5]), ("u0", [10, 3]), ("zz", [99]), ("u0", [11, 2, 3]), ("u0", [12])])


def _parent(row: np.ndarray) -> str:
    first = int(row[row > 0][0])
    return {1: "u0", 4: "u1", 6: "u2", 10: "u0", 11: "u0", 12: "u0", 40: "u1"}[first]


def test_views_pair_by_parent_two_distinct_views_or_the_view_and_the_real_sequence():
    pairs = ViewPairs.build(REAL, VIEWS, max_len=4)
    assert pairs.view_counts(np.arange(3)).tolist() == [3, 1, 0]
    generator = torch.Generator().manual_seed(0)
    seen_u0 = set()
    for _ in range(60):
        kept, a, b = pairs.pairs(np.array([2, 0, 1]), generator)
        assert kept.tolist() == [1, 2]  # u2 has no view: no pair
        assert [_parent(r) for r in a] == ["u0", "u1"] and [_parent(r) for r in b] == ["u0", "u1"]
        assert not np.array_equal(a[0], b[0])  # two distinct views of u0
        assert b[1].tolist() == [0, 0, 4, 5] and a[1].tolist() == [0, 0, 40, 5]  # u1: its view and its real row
        seen_u0.add((int(a[0][a[0] > 0][0]), int(b[0][b[0] > 0][0])))
    assert seen_u0 == {(x, y) for x in (10, 11, 12) for y in (10, 11, 12) if x != y}  # every ordered pair drawn


def test_pairs_follow_the_generator_seed():
    pairs = ViewPairs.build(REAL, VIEWS, max_len=4)
    draw = lambda seed: pairs.pairs(np.array([0, 1]), torch.Generator().manual_seed(seed))  # noqa: E731
    assert all(np.array_equal(x, y) for x, y in zip(draw(3), draw(3)))
    assert any(not all(np.array_equal(x, y) for x, y in zip(draw(3), draw(s))) for s in range(4, 10))


def test_info_nce_known_answers():
    # Identical representations everywhere: every anchor sees 2P − 1 equal logits.
    same = torch.ones(3, 4)
    assert info_nce(same, same.clone(), temperature=1.0).item() == pytest.approx(math.log(5))
    # Orthogonal pairs, far apart: each anchor's partner dominates, the loss vanishes.
    basis = torch.eye(3) * 10
    assert info_nce(basis, basis.clone(), temperature=0.5, similarity="dot").item() < 1e-6
    # Swapping the partners of two pairs makes the loss large.
    swapped = basis[[1, 0, 2]]
    assert info_nce(basis, swapped, temperature=0.5, similarity="dot").item() > 10
    # Cosine: the logits are 1/τ for the partner and 0 for the 2P − 2 = 4 orthogonal others, at any norm.
    cosine = info_nce(basis, basis.clone(), temperature=0.5)
    assert cosine.item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 4)))
    assert info_nce(basis / 10, basis.clone(), temperature=0.5).item() == pytest.approx(cosine.item())
