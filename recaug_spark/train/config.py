"""The ``train`` section: model, optimisation, early stopping and evaluation protocol.

Kept apart from ``recaug_spark.config`` until it is wired into ``Config``; it uses the same
frozen, extra-keys-forbidden ``_Section`` base, so a typo fails before anything trains.

Example::

    cfg = TrainConfig(model="sasrec", epochs=200, patience=10, seeds=(1, 2, 3))
    cfg.model_dump()["hidden"]  # 64
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recaug_spark.config import _Section


class TrainConfig(_Section):
    # ---- model (defaults: SASRec as in the S3-Rec / ICLRec baselines) ----
    model: Literal["sasrec", "gru4rec"] = "sasrec"
    hidden: int = Field(64, ge=1)
    blocks: int = Field(2, ge=1)  # transformer blocks (SASRec) or GRU layers (GRU4Rec)
    heads: int = Field(2, ge=1)  # attention heads (SASRec only); must divide hidden
    max_len: int = Field(50, ge=1)  # the model sees a sequence's last max_len items
    dropout: float = Field(0.5, ge=0, lt=1)  # hidden / embedding dropout
    attention_dropout: float = Field(0.5, ge=0, lt=1)  # SASRec attention-probability dropout

    # ---- optimisation ----
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)  # global: each of W ranks takes ceil(batch_size / W)
    epochs: int = Field(200, ge=1)
    patience: int = Field(10, ge=1)  # validations without a better NDCG@10 before stopping
    eval_every: int = Field(1, ge=1)  # validate every N epochs
    seeds: tuple[int, ...] = (42,)  # train_seeds runs one model per seed; train uses the first

    # ---- evaluation ----
    negatives_protocol: Literal["full", "popularity", "uniform"] = "full"  # full ranking or 1 + N sampled
    sampled_negatives: int = Field(100, ge=1)  # N for the sampled protocols
    ks: tuple[int, ...] = (1, 5, 10, 20)
    early_stopping_metric: str = "ndcg@10"
    exclude_history: bool = True  # items of the user's history cannot be recommended (score -inf)
    eval_batch_size: int = Field(512, ge=1)
    short_history_max: int = Field(5, ge=1)  # breakdown: histories of at most this many items are "short"
    head_item_share: float = Field(0.2, gt=0, lt=1)  # breakdown: the most popular 20% of items are "head"

    # ---- execution ----
    num_threads: int | None = Field(None, ge=1)  # torch.set_num_threads per process; None: leave as is
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.model == "sasrec" and self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if not self.ks or min(self.ks) < 1:
            raise ValueError("ks must be positive cut-offs, e.g. [1, 5, 10, 20]")
        name, _, k = self.early_stopping_metric.partition("@")
        if name not in ("hr", "ndcg", "recall", "mrr", "auc") or (k and int(k) not in self.ks) or (
                name in ("hr", "ndcg", "recall") and not k):
            raise ValueError(f"early_stopping_metric {self.early_stopping_metric!r} must be one of hr@K, ndcg@K, "
                             f"recall@K (K in ks={list(self.ks)}), mrr, auc")
        return self
