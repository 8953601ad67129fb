"""Sequential recommenders behind one interface (imports torch: only training code imports this).

Every model takes left-padded item indices ``input_ids`` [B, L] (0 = padding, 1..N items, N+1 the
mask token) and offers:

* ``forward(input_ids) -> [B, L, hidden]`` — a hidden state per position (the state at position t
  predicts the item at t + 1);
* ``item_embedding(ids) -> [..., hidden]`` — output embeddings of items (shared with the input);
* ``score_all(input_ids) -> [B, N + 1]`` — logits of every item (column 0 = padding) after the
  last position, for full ranking.

A model whose ``ignores_leading_padding`` is true (SASRec) gives the same outputs at real positions
when columns that are padding in every row are cut from the left of a batch, provided
``position_offset`` says how many were cut (:func:`trim_leading_padding` does both): a batch of
short sequences then costs its own width, not ``max_len``. A GRU reads padding as input, so
GRU4Rec always gets whole rows.

Training objectives, each a mean over positions with a target (``LOSSES`` by name):

* ``bce_loss`` — SASRec as in S3-Rec/ICLRec: binary cross-entropy of the positive next item
  against one sampled negative per position (the weakest standard objective).
* ``ce_loss`` — softmax cross-entropy over every item ("Turning Dross Into Gold Loss",
  Klenitskiy & Vasilev, RecSys 2023); logits are computed only at positions with a target.
* ``sampled_softmax_loss`` — softmax over the positive and K uniformly sampled negatives shared
  by the batch (as gSASRec trains with many negatives, Petrov & Macdonald, RecSys 2023), for
  catalogs where the full softmax is too costly; a negative equal to the positive is masked.

Models:

* ``SASRec`` (Kang & McAuley, ICDM 2018), as implemented in the S3-Rec/ICLRec baselines: learned
  item and position embeddings, LayerNorm + dropout on the sum, ``blocks`` post-LN Transformer
  blocks (multi-head causal self-attention with padding keys masked, then a point-wise GELU
  feed-forward of width 4 × hidden), truncated-normal-free N(0, 0.02) initialisation.
* ``GRU4Rec`` (Hidasi et al., ICLR 2016) in the sequential-recommendation form: item embedding →
  dropout → GRU (``blocks`` layers) → linear → dot product with item embeddings. Left padding runs
  through the GRU as zero vectors (the padding embedding is fixed at 0).

``build_model(name, n_items, **params)`` looks models up by name; unknown names fail with the list.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

_ATTENTION_MASKED = -10_000.0  # additive mask as in the reference code (a fully masked row stays finite)


class Dropout(nn.Module):
    """Inverted dropout, as ``nn.Dropout``, with the keep-mask drawn by ``rand_like``: on CPU that is
    about twice as fast as ``nn.Dropout``'s Bernoulli sampling, and SASRec drops out seven tensors
    per forward pass (~15% of a training step). Same expectation, same seeding (the torch generator)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand_like(x) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SequentialRecommender(nn.Module):
    n_items: int
    ignores_leading_padding = False

    def item_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self.item_embeddings(ids)

    def score_all(self, input_ids: torch.Tensor, *, position_offset: int = 0) -> torch.Tensor:
        last = self.forward(input_ids, position_offset=position_offset)[:, -1, :]
        return last @ self.item_embeddings.weight[: self.n_items + 1].T


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.heads, self.head_size = heads, hidden // heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attention_dropout = Dropout(attention_dropout)
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.heads, self.head_size).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size) + mask
        context = self.attention_dropout(torch.softmax(scores, dim=-1)) @ v
        context = context.transpose(1, 2).reshape(x.shape)
        return self.norm(self.dropout(self.dense(context)) + x)


class _FeedForward(nn.Module):
    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.dense_in, self.dense_out = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.dropout(self.dense_out(F.gelu(self.dense_in(x)))) + x)


class _Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.attention = _SelfAttention(hidden, heads, dropout, attention_dropout)
        self.feed_forward = _FeedForward(hidden, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.attention(x, mask))


class SASRec(SequentialRecommender):
    """Self-attentive sequential recommendation (see the module docstring).

    Padding keys are masked out of attention and every other layer is position-wise, so leading
    columns that are padding in every row can be cut (``ignores_leading_padding``): with
    ``position_offset`` = the number cut, real positions keep their position embeddings and outputs.
    """

    ignores_leading_padding = True

    def __init__(self, n_items: int, hidden: int = 64, blocks: int = 2, heads: int = 2, max_len: int = 50,
                 dropout: float = 0.5, attention_dropout: float = 0.5):
        super().__init__()
        self.n_items, self.max_len = n_items, max_len
        self.item_embeddings = nn.Embedding(n_items + 2, hidden, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(hidden, heads, dropout, attention_dropout) for _ in range(blocks))
        self.apply(_init_weights)

    def forward(self, input_ids: torch.Tensor, *, position_offset: int = 0) -> torch.Tensor:
        input_ids = input_ids[:, -self.max_len:]
        length = input_ids.shape[1]
        if position_offset < 0 or position_offset + length > self.max_len:
            raise ValueError(f"position_offset {position_offset} + width {length} exceeds max_len {self.max_len}")
        positions = torch.arange(position_offset, position_offset + length, device=input_ids.device)[None, :]
        x = self.dropout(self.norm(self.item_embeddings(input_ids) + self.position_embeddings(positions)))
        causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
        allowed = causal[None, None, :, :] & (input_ids > 0)[:, None, None, :]
        # A padding position attends to itself: in the reference code its fully masked row attends
        # uniformly to every key, future ones included. Real positions always see themselves, so only
        # padding outputs (never scored) change, and the model is strictly causal.
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=input_ids.device)[None, None]
        mask = (~allowed).to(x.dtype) * _ATTENTION_MASKED
        for block in self.blocks:
            x = block(x, mask)
        return x


class GRU4Rec(SequentialRecommender):
    """GRU over the item embeddings, scored by dot product with the item embeddings."""

    def __init__(self, n_items: int, hidden: int = 64, blocks: int = 1, dropout: float = 0.5,
                 max_len: int | None = None):
        super().__init__()
        self.n_items, self.max_len = n_items, max_len
        self.item_embeddings = nn.Embedding(n_items + 2, hidden, padding_idx=0)
        self.dropout = Dropout(dropout)
        self.gru = nn.GRU(hidden, hidden, num_layers=blocks, batch_first=True, bias=True)
        self.dense = nn.Linear(hidden, hidden)
        self.apply(_init_weights)

    def forward(self, input_ids: torch.Tensor, *, position_offset: int = 0) -> torch.Tensor:
        if position_offset:
            raise ValueError("GRU4Rec reads padding as input: its rows are never cut (position_offset must be 0)")
        if self.max_len:
            input_ids = input_ids[:, -self.max_len:]
        output, _ = self.gru(self.dropout(self.item_embeddings(input_ids)))
        return self.dense(output)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=0.02)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    if isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()


MODELS = {"sasrec": SASRec, "gru4rec": GRU4Rec}


def build_model(name: str, n_items: int, **params) -> SequentialRecommender:
    """A model by registered name: ``build_model("sasrec", n_items=1000, hidden=64)``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)}")
    if name == "gru4rec":
        params = {k: v for k, v in params.items() if k in ("hidden", "blocks", "dropout", "max_len")}
    return MODELS[name](n_items, **params)


def trim_leading_padding(model: nn.Module, *tensors: torch.Tensor) -> tuple[int, tuple[torch.Tensor, ...]]:
    """``(position_offset, tensors)``: the [B, L] tensors without the leading columns where the
    first of them (the input ids) is padding in every row, when ``model`` ignores leading padding;
    else ``(0, tensors)`` unchanged. At least one column is kept."""
    inner = getattr(model, "module", model)
    width = tensors[0].shape[1]
    if not inner.ignores_leading_padding or width <= 1 or width > inner.max_len:
        return 0, tensors
    used = (tensors[0] != 0).any(0).nonzero()
    cut = min(int(used[0]), width - 1) if len(used) else width - 1
    return cut, (tuple(t[:, cut:] for t in tensors) if cut else tensors)


def bce_loss(model: nn.Module, input_ids: torch.Tensor, positives: torch.Tensor,
             negatives: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over positions with a target of −log σ(h·e⁺) − log(1 − σ(h·e⁻)).

    ``model`` may be wrapped (DistributedDataParallel): the forward pass goes through the wrapper,
    the item embeddings through the wrapped module. Columns that are padding in every row are cut
    first where the model allows it (:func:`trim_leading_padding`): the loss is the same.
    ``weights`` [B] (optional): a weight per row, the mean then weighted by it (every loss here).
    """
    inner = getattr(model, "module", model)
    offset, (input_ids, positives, negatives) = trim_leading_padding(model, input_ids, positives, negatives)
    hidden = model(input_ids, position_offset=offset)
    positive_logits = (hidden * inner.item_embedding(positives)).sum(-1)
    negative_logits = (hidden * inner.item_embedding(negatives)).sum(-1)
    is_target = (positives > 0).to(hidden.dtype)
    if weights is not None:
        is_target = is_target * weights.to(hidden.dtype)[:, None]
    losses = -F.logsigmoid(positive_logits) - F.logsigmoid(-negative_logits)
    return (losses * is_target).sum() / is_target.sum().clamp(min=1e-12)


def _target_states(model: nn.Module, input_ids: torch.Tensor, positives: torch.Tensor):
    """(hidden states [T, H], positive item indices [T], row of each [T]) at the T positions with a target."""
    offset, (input_ids, positives) = trim_leading_padding(model, input_ids, positives)
    hidden = model(input_ids, position_offset=offset)
    is_target = positives > 0
    return hidden[is_target], positives[is_target], is_target.nonzero()[:, 0]


def _mean(losses: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The mean of per-position ``losses``, weighted by the weight of each position's row if given."""
    if weights is None:
        return losses.mean()
    position_weights = weights.to(losses.dtype)[rows]
    return (losses * position_weights).sum() / position_weights.sum().clamp(min=1e-12)


def ce_loss(model: nn.Module, input_ids: torch.Tensor, positives: torch.Tensor,
            negatives: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over positions with a target of −log softmax(h·E)[positive], over all N items.

    Padding (0) and the mask token (N + 1) are never candidates. ``negatives`` is ignored (it
    keeps the signature of the other losses).
    """
    inner = getattr(model, "module", model)
    hidden, targets, rows = _target_states(model, input_ids, positives)
    if len(targets) == 0:
        return hidden.sum() * 0.0
    logits = hidden @ inner.item_embeddings.weight[1: inner.n_items + 1].T
    return _mean(F.cross_entropy(logits, targets - 1, reduction="none"), rows, weights)


def sampled_softmax_loss(model: nn.Module, input_ids: torch.Tensor, positives: torch.Tensor,
                         sampled: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over positions with a target of −log softmax([h·e⁺, h·e⁻₁ … h·e⁻ₖ])[0].

    ``sampled`` [K]: item indices shared by every position of the batch; where one equals a
    position's positive it is masked out of that position's softmax.
    """
    inner = getattr(model, "module", model)
    hidden, targets, rows = _target_states(model, input_ids, positives)
    if len(targets) == 0:
        return hidden.sum() * 0.0
    positive_logits = (hidden * inner.item_embedding(targets)).sum(-1, keepdim=True)
    negative_logits = hidden @ inner.item_embedding(sampled).T
    negative_logits = negative_logits.masked_fill(sampled[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([positive_logits, negative_logits], dim=1)
    zeros = torch.zeros(len(targets), dtype=torch.long, device=logits.device)
    return _mean(F.cross_entropy(logits, zeros, reduction="none"), rows, weights)
