"""Top-K evaluation of next-item recommenders: ranks, metrics, breakdowns, confidence intervals.

Protocol (leave-one-out, as S3-Rec / ICLRec / CL4SRec): each user has one held-out target item.

* **Full ranking** (``full_ranks``): the target is ranked against every item. Items of the user's
  history are excluded — their score is set to ``-inf`` — except the target itself, which keeps
  its score when it also occurs in the history (a repeat purchase is ranked on its merit instead of
  failing by construction). The reference code of those papers sets history scores to 0 instead;
  on Amazon Sports 5-core the two give the same figures, while leaving the history in gives an
  NDCG@10 about 27% lower. The padding column 0 is never a candidate.
* **Sampled ranking** (``sampled_ranks``): the target is ranked against N sampled negatives (100
  by default, drawn uniformly or by popularity among the items that are neither the target nor in
  the history, see ``sample_negatives``). Sampled metrics are far higher than full-ranking ones and
  may rank models differently (Krichene & Rendle, KDD 2020): report which protocol was used.

Ranks are 0-based and **pessimistic on ties**: a candidate with the same score as the target is
counted as ranked above it, so a constant model scores like the worst case, never like the best.

Metrics from a 0-based rank r among n candidates: HR@K = 1[r < K]; NDCG@K = 1/log2(r + 2) if
r < K; MRR = 1/(r + 1); AUC = (n - 1 - r)/(n - 1), the share of negatives ranked below the target.
With a single relevant item per user, Recall@K equals HR@K (reported under both names).

``mean_ci`` gives a mean and a Student-t confidence interval over seeds, with the t quantile
computed exactly from the t distribution's closed-form CDF for integer degrees of freedom (no
scipy needed).

Example::

    ranks = np.array([0, 2, 30])
    summarize(ranks, n_candidates=np.array([100, 100, 100]), ks=(10,))
    # {'hr@10': 0.667, 'ndcg@10': 0.5, 'recall@10': 0.667, 'mrr': ..., 'auc': ..., 'users': 3}
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

# ---------------------------------------------------------------- ranks (torch tensors or numpy)

def full_ranks(scores, targets, history=None, exclude_history: bool = True):
    """0-based rank of each target among all items, and the number of candidates per user.

    ``scores``: [B, n_items + 1] (column 0 is padding); ``targets``: [B] item indices (1..n_items);
    ``history``: [B, H] item indices of each user's history, 0-padded (or None). Returns two int64
    tensors (or arrays, for numpy input): ranks and candidate counts.
    """
    import torch

    as_numpy = isinstance(scores, np.ndarray)
    scores = torch.as_tensor(scores).float()
    targets = torch.as_tensor(targets, device=scores.device).long()[:, None]
    target_scores = scores.gather(1, targets)
    # One pass over [B, n_items + 1] (no copy): count every column scoring >= the target (ties count
    # against it; float sums are exact below 2^24 items and twice as fast as bool sums on CPU), then
    # take back the target itself, the padding column and each distinct excluded item.
    at_least = (scores >= target_scores).float().sum(1) - 1 - (scores[:, :1] >= target_scores).float()[:, 0]
    candidates = torch.full_like(at_least, scores.shape[1] - 1)
    if history is not None and exclude_history:
        excluded = torch.as_tensor(history, device=scores.device).long()
        excluded = torch.where(excluded == targets, 0, excluded).sort(1).values
        distinct = excluded > 0
        distinct[:, 1:] &= excluded[:, 1:] != excluded[:, :-1]
        at_least -= ((scores.gather(1, excluded) >= target_scores) & distinct).float().sum(1)
        candidates -= distinct.float().sum(1)
    ranks, candidates = at_least.long(), candidates.long()
    if as_numpy:
        return ranks.cpu().numpy(), candidates.cpu().numpy()
    return ranks, candidates


def sampled_ranks(scores, targets, negatives):
    """0-based rank of each target among itself and its sampled negatives ([B, N] item indices).

    Returns ranks and candidate counts (N + 1 per user).
    """
    import torch

    as_numpy = isinstance(scores, np.ndarray)
    scores = torch.as_tensor(scores).float()
    targets = torch.as_tensor(targets, device=scores.device).long()
    negatives = torch.as_tensor(negatives, device=scores.device).long()
    target_scores = scores.gather(1, targets[:, None])
    negative_scores = scores.gather(1, negatives)
    ranks = (negative_scores >= target_scores).sum(1).long()  # ties count against the target
    candidates = torch.full_like(ranks, negatives.shape[1] + 1)
    if as_numpy:
        return ranks.cpu().numpy(), candidates.cpu().numpy()
    return ranks, candidates


def sample_negatives(targets, history, n_items: int, k: int, generator, popularity=None):
    """``k`` distinct negatives per user, never the target nor a history item ([B, k] indices).

    Drawn without replacement with probability ∝ ``popularity`` (counts per item index, length
    n_items + 1) or uniformly when it is None, using the given ``torch.Generator``. When a user has
    fewer than ``k`` eligible items, k shrinks to the smallest eligible count in the batch.
    """
    import torch

    targets = torch.as_tensor(targets).long()
    weights = torch.ones(len(targets), n_items + 1, dtype=torch.float64)
    if popularity is not None:
        weights *= torch.as_tensor(popularity, dtype=torch.float64)[None, :].clamp(min=0) + 1e-12
    weights[:, 0] = 0
    if history is not None:
        weights.scatter_(1, torch.as_tensor(history).long(), 0.0)
    weights[torch.arange(len(targets)), targets] = 0
    weights[:, 0] = 0
    eligible = int((weights > 0).sum(1).min()) if len(targets) else k
    k = min(k, eligible)
    if k <= 0:
        return torch.zeros(len(targets), 0, dtype=torch.long)
    return torch.multinomial(weights, k, replacement=False, generator=generator)


# ---------------------------------------------------------------- metrics (numpy)

def metric_values(ranks, n_candidates, ks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, np.ndarray]:
    """Per-user metric values from 0-based ranks and candidate counts."""
    ranks = np.asarray(ranks, dtype=np.float64)
    n = np.asarray(n_candidates, dtype=np.float64) * np.ones_like(ranks)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
        out[f"recall@{k}"] = out[f"hr@{k}"]  # one relevant item per user: recall@K == HR@K
    out["mrr"] = 1.0 / (ranks + 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["auc"] = np.where(n > 1, (n - 1.0 - ranks) / (n - 1.0), 1.0)
    return out


def metric_sums(ranks, n_candidates, ks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, float]:
    """Sums of the per-user metrics plus ``users``: add these across ranks or batches, then divide."""
    sums = {name: float(values.sum()) for name, values in metric_values(ranks, n_candidates, ks).items()}
    sums["users"] = float(np.asarray(ranks).size)
    return sums


def means_from_sums(sums: Mapping[str, float]) -> dict[str, float]:
    users = sums.get("users", 0.0)
    out = {name: (value / users if users else float("nan")) for name, value in sums.items() if name != "users"}
    out["users"] = int(users)
    return out


def summarize(ranks, n_candidates, ks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, float]:
    """Mean HR@K, NDCG@K, Recall@K, MRR and AUC over users, plus the user count."""
    return means_from_sums(metric_sums(ranks, n_candidates, ks))


def breakdown(ranks, n_candidates, groups: Mapping[str, np.ndarray],
              ks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, dict[str, float]]:
    """``summarize`` within each named group (a boolean mask over users)."""
    ranks = np.asarray(ranks)
    n = np.asarray(n_candidates) * np.ones_like(ranks)
    return {name: summarize(ranks[mask], n[mask], ks) for name, mask in groups.items()}


def history_length_groups(lengths, short_max: int, cold_max: int | None = None) -> dict[str, np.ndarray]:
    """``short``: histories of at most ``short_max`` items; ``long``: the others; with ``cold_max``,
    also ``cold``: the users with the fewest interactions (at most ``cold_max`` history items; on a
    5-core dataset evaluated leave-one-out, ``cold_max=4`` is the users at the 5-core minimum)."""
    lengths = np.asarray(lengths)
    groups = {"short": lengths <= short_max, "long": lengths > short_max}
    if cold_max is not None:
        groups["cold"] = lengths <= cold_max
    return groups


def head_items(popularity, share: float = 0.2) -> np.ndarray:
    """Boolean mask over item indices: the ``share`` most popular items (ties broken by index)."""
    popularity = np.asarray(popularity, dtype=np.float64).copy()
    popularity[0] = -np.inf  # padding
    n_items = len(popularity) - 1
    n_head = int(math.ceil(share * n_items)) if n_items else 0
    order = np.lexsort((np.arange(len(popularity)), -popularity))  # most popular first, then by index
    mask = np.zeros(len(popularity), dtype=bool)
    mask[order[:n_head]] = True
    mask[0] = False
    return mask


def popularity_groups(targets, popularity, share: float = 0.2) -> dict[str, np.ndarray]:
    """``head``: the target is among the ``share`` most popular items; ``tail``: the others."""
    head = head_items(popularity, share)[np.asarray(targets)]
    return {"head": head, "tail": ~head}


# ---------------------------------------------------------------- confidence intervals over seeds

def _t_two_sided_cdf(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` (closed form; Abramowitz & Stegun 26.7.3/4)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    s = math.sin(theta)
    if df % 2 == 1:
        if df == 1:
            return 2.0 * theta / math.pi
        term, total = 1.0, 1.0
        for j in range(1, (df - 3) // 2 + 1):
            term *= c2 * (2 * j) / (2 * j + 1)
            total += term
        return 2.0 / math.pi * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0
    for j in range(1, (df - 2) // 2 + 1):
        term *= c2 * (2 * j - 1) / (2 * j)
        total += term
    return s * total


def t_quantile(confidence: float, df: int) -> float:
    """Two-sided critical value t such that P(|T| < t) = confidence (e.g. 0.95, df=4 → 2.776)."""
    if df < 1:
        raise ValueError("df must be at least 1")
    if df > 2000:
        from statistics import NormalDist

        z = NormalDist().inv_cdf(0.5 + confidence / 2)
        return z + (z ** 3 + z) / (4 * df)  # Cornish-Fisher, error < 1e-6 here
    low, high = 0.0, 1.0
    while _t_two_sided_cdf(high, df) < confidence:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2
        if _t_two_sided_cdf(mid, df) < confidence:
            low = mid
        else:
            high = mid
        if high - low < 1e-12:
            break
    return (low + high) / 2


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample standard deviation and Student-t confidence interval of per-seed values.

    With a single value the interval is undefined (half_width NaN).
    """
    values = np.asarray(list(values), dtype=np.float64)
    n = values.size
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(values.mean())
    if n == 1:
        return {"mean": mean, "std": float("nan"), "half_width": float("nan"), "low": float("nan"),
                "high": float("nan"), "n": 1}
    std = float(values.std(ddof=1))
    half = t_quantile(confidence, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "half_width": half, "low": mean - half, "high": mean + half, "n": int(n)}
