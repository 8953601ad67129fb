"""Item attribute generator for long-tail items: a conditional VAE, with a Gaussian-copula baseline.

What is modelled, per item: log price, every categorical attribute of the ``attributes`` JSON
(``brand``, ``color``, ``material``, ``size`` … — values seen fewer than ``min_count`` times pool
into "other"), numeric JSON attributes, and a compact text embedding of title + description
(hashed TF-IDF reduced by truncated SVD, scikit-learn; MiniLM is reserved for description
expansion, where meaning matters more than speed). The category is the *condition*: a variant
always keeps its source item's category.

* **VAE** (Kingma & Welling 2014, conditional): MLP encoder q(z | x, category) and decoder
  p(x | z, category); Gaussian likelihood for numeric columns, softmax for each categorical group.
  A variant of an item is decoded from ``z = μ + σ · ε`` with ``ε`` keyed by (seed, item, copy):
  close to the item, different in detail.
* **Gaussian copula** (fitted per category): normal scores of each column's empirical CDF
  (categorical values as frequency-ordered intervals, as SDV's copulas do), their correlation,
  samples mapped back through the empirical quantiles. A variant of an item moves the item's own
  normal scores: ``z' = ρ·z + √(1−ρ²)·R·ε`` (``R Rᵀ`` the category's correlation, ``ε`` keyed,
  ``ρ = 1/√(1 + scale²)``: the noise-to-item ratio is ``scale``), which keeps the copula's joint
  distribution and stays near the item for small ``scale`` (:func:`copula_variants`).

Constraints on every generated value (both methods, :func:`decode_rows`): price > 0 and inside
the category's observed [p1, p99] band of log price; categorical values are values the category
has; integer attributes stay integers.

Fidelity (in the manifest), measured on **held-out items**: per category, a deterministic share
(``holdout``, by keyed hash of the item id and the seed) is left out of fitting the VAE and the
copula (the schema — vocabularies, scalers, price bands, text projection — is fitted on every
item); both models are shipped as fitted on the rest. Per method (``vae``, ``copula``, and
``independent`` — each column drawn from its global marginal, ignoring category and
correlations, to show the scale): the Wasserstein-1 distance of log price per category divided
by the category's spread (``price_w1``; ``numeric_w1`` the same for numeric attributes that vary
in the category, ``w1_mean`` the mean over price and those attributes), the total-variation
distance of each categorical attribute per category, and the mean absolute difference of the
columns' correlation matrices — all averaged over categories; lower is closer. ``in_sample`` has
the same figures on the fitted items. ``chosen`` is the method that ``attribute_generate`` uses
by default, by :data:`CHOICE_RULE`.
"""

from __future__ import annotations

import io
import json
import math
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recaug_spark import rng
from recaug_spark.generators.artifacts import ArtifactRef, data_fingerprint, reusable, save_artifact
from recaug_spark.generators.runtime import (
    EpochProgress,
    HeldOutStopping,
    device,
    register_loader,
    seed_everything,
    torch_threads,
)
from recaug_spark.text.attributes import is_number, parse_attributes
from recaug_spark.text.tokens import terms

KIND = "item_attribute_vae"
OTHER = "<other>"
_TEXT_FEATURES = 1 << 12
TIE = 0.005  # w1_mean differences up to this are ties
CHOICE_RULE = ("lower w1_mean on held-out items (Wasserstein-1 per category / the category's spread, averaged "
               f"over price and the numeric attributes); within {TIE}: lower categorical_tvd; still tied: copula")


class AttributeGeneratorConfig(BaseModel):
    """Training settings of the item attribute generator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latent: int = Field(8, ge=1)
    hidden: int = Field(64, ge=4)
    text_dims: int = Field(8, ge=0)  # SVD dimensions of the text embedding (0: no text)
    epochs: int = Field(150, ge=1)  # a cap: training stops sooner when the held-out loss stops improving
    patience: int = Field(20, ge=1)  # epochs without a better held-out loss before training stops
    min_improvement: float = Field(0.0, ge=0)  # relative decrease of the held-out loss that counts as better
    validation_share: float = Field(0.1, ge=0, lt=1)  # fitted items left out of training to stop early (0: every epoch)
    num_threads: int = Field(1, ge=1)  # torch threads while fitting (runtime.torch_threads says why 1)
    lr: float = Field(3e-3, gt=0)
    beta: float = Field(1.0, gt=0)  # weight of the KL term
    min_count: int = Field(3, ge=1)  # categorical values seen fewer times pool into "other"
    holdout: float = Field(0.2, ge=0, lt=1)  # share of each category's items held out to measure fidelity
    seed: int = 0


# ---------------------------------------------------------------- encoding


def _hashed(texts: list[str]) -> np.ndarray:
    """Term counts hashed into :data:`_TEXT_FEATURES` buckets (crc32: the same in every process)."""
    out = np.zeros((len(texts), _TEXT_FEATURES), dtype=np.float32)
    for row, text in enumerate(texts):
        for token in terms(text):
            out[row, zlib.crc32(token.encode()) % _TEXT_FEATURES] += 1.0
    return out


@dataclass
class Schema:
    """How items become model columns: the fitted vocabularies, scalers and text projection."""

    categories: list[str]
    categorical: dict[str, list[str]]  # attribute -> values (OTHER last)
    numeric: list[str]  # numeric JSON attributes
    integer: list[str]  # those that were integers in every item
    price_mean: float
    price_std: float
    numeric_mean: list[float]
    numeric_std: list[float]
    band: dict[str, tuple[float, float]]  # category -> (p1, p99) of log price
    category_values: dict[str, dict[str, list[str]]]  # category -> attribute -> values seen there
    idf: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    components: np.ndarray = field(default_factory=lambda: np.zeros((0, _TEXT_FEATURES), np.float32))

    @property
    def widths(self) -> list[int]:
        """Column group widths of x: 1 (log price), numeric attributes, each categorical group, text."""
        return [1, *([1] * len(self.numeric)), *[len(v) for v in self.categorical.values()], len(self.components)]

    def to_json(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k not in ("idf", "components")}
        return json.loads(json.dumps(data))

    def text(self, titles, descriptions) -> np.ndarray:
        if not len(self.components):
            return np.zeros((len(titles), 0), np.float32)
        counts = _hashed([f"{t or ''} {d or ''}" for t, d in zip(titles, descriptions)]) * self.idf
        norms = np.linalg.norm(counts, axis=1, keepdims=True)
        return (counts / np.where(norms > 0, norms, 1.0)) @ self.components.T

    def encode(self, frame) -> tuple[np.ndarray, np.ndarray]:
        """(x, category index) of a pandas frame of items."""
        parsed = [parse_attributes(a) for a in frame["attributes"]]
        price = np.log(np.clip(frame["price"].astype(float).fillna(math.exp(self.price_mean)).to_numpy(), 1e-6, None))
        columns = [((price - self.price_mean) / self.price_std)[:, None]]
        for k, name in enumerate(self.numeric):
            values = np.array([float(p.get(name, self.numeric_mean[k])) if is_number(p.get(name)) else self.numeric_mean[k]
                               for p in parsed])
            columns.append(((values - self.numeric_mean[k]) / self.numeric_std[k])[:, None])
        for name, values in self.categorical.items():
            index = {v: i for i, v in enumerate(values)}
            codes = np.array([index.get(str(p.get(name)), len(values) - 1) for p in parsed])
            columns.append(np.eye(len(values), dtype=np.float32)[codes])
        columns.append(self.text(frame["title"].tolist(), frame["description"].tolist()))
        category = {c: i for i, c in enumerate(self.categories)}
        codes = np.array([category.get(c, 0) for c in frame["category"]], dtype=np.int64)
        return np.concatenate(columns, axis=1).astype(np.float32), codes


def fit_schema(frame, cfg: AttributeGeneratorConfig) -> Schema:
    """The column vocabularies and scalers of a pandas frame of catalog items with valid prices."""
    parsed = [parse_attributes(a) for a in frame["attributes"]]
    keys = sorted({k for p in parsed for k in p})
    numeric = [k for k in keys if all(is_number(p[k]) for p in parsed if k in p)]
    integer = [k for k in numeric if all(float(p[k]).is_integer() for p in parsed if k in p)]
    categorical = {}
    for k in keys:
        if k in numeric:
            continue
        counts: dict[str, int] = {}
        for p in parsed:
            if k in p:
                counts[str(p[k])] = counts.get(str(p[k]), 0) + 1
        categorical[k] = sorted(v for v, n in counts.items() if n >= cfg.min_count) + [OTHER]
    log_price = np.log(frame["price"].to_numpy(dtype=float))
    numeric_values = [np.array([float(p[k]) for p in parsed if k in p]) for k in numeric]
    band, category_values = {}, {}
    for category, rows in frame.groupby("category").indices.items():
        band[str(category)] = (float(np.percentile(log_price[rows], 1)), float(np.percentile(log_price[rows], 99)))
        category_values[str(category)] = {k: sorted({str(parsed[r][k]) for r in rows if k in parsed[r]})
                                          for k in categorical}
    schema = Schema(sorted(map(str, frame["category"].unique())), categorical, numeric, integer,
                    float(log_price.mean()), float(log_price.std() or 1.0),
                    [float(v.mean()) if len(v) else 0.0 for v in numeric_values],
                    [float(v.std() or 1.0) if len(v) else 1.0 for v in numeric_values], band, category_values)
    if cfg.text_dims:
        from sklearn.decomposition import TruncatedSVD

        counts = _hashed([f"{t or ''} {d or ''}" for t, d in zip(frame["title"], frame["description"])])
        documents = (counts > 0).sum(axis=0)
        schema.idf = (np.log((1 + len(frame)) / (1 + documents)) + 1).astype(np.float32)
        weighted = counts * schema.idf
        weighted /= np.where((n := np.linalg.norm(weighted, axis=1, keepdims=True)) > 0, n, 1.0)
        dims = max(1, min(cfg.text_dims, len(frame) - 1, int((documents > 0).sum()) - 1))
        svd = TruncatedSVD(n_components=dims, random_state=cfg.seed).fit(weighted)
        schema.components = svd.components_.astype(np.float32)
    return schema


# ---------------------------------------------------------------- the VAE


def _build_vae(input_width: int, categories: int, cfg: dict):
    import torch
    from torch import nn

    class ConditionalVAE(nn.Module):
        def __init__(self):
            super().__init__()
            hidden, latent = cfg["hidden"], cfg["latent"]
            self.encoder = nn.Sequential(nn.Linear(input_width + categories, hidden), nn.ReLU(),
                                         nn.Linear(hidden, hidden), nn.ReLU())
            self.mu, self.log_var = nn.Linear(hidden, latent), nn.Linear(hidden, latent)
            self.decoder = nn.Sequential(nn.Linear(latent + categories, hidden), nn.ReLU(),
                                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, input_width))
            self.categories = categories

        def condition(self, codes):
            return torch.nn.functional.one_hot(codes, self.categories).float()

        def encode(self, x, codes):
            h = self.encoder(torch.cat([x, self.condition(codes)], dim=1))
            return self.mu(h), self.log_var(h).clamp(-10, 10)

        def decode(self, z, codes):
            return self.decoder(torch.cat([z, self.condition(codes)], dim=1))

    return ConditionalVAE()


@dataclass
class AttributeGenerator:
    """A loaded generator: schema, the VAE (eval mode), the copula and the method chosen by fidelity."""

    schema: Schema
    model: object
    copula: dict
    tag: str
    chosen: str = "vae"  # the default method of attribute_generate (the manifest's fidelity["chosen"])


def kinds_of(schema: Schema) -> list[tuple[str, int]]:
    """(kind, width) of each column group of x, in order: price, numeric…, categorical…, text."""
    kinds = [("price", 1), *[("numeric", 1) for _ in schema.numeric]]
    kinds += [("categorical", len(v)) for v in schema.categorical.values()]
    if len(schema.components):
        kinds.append(("text", len(schema.components)))
    return kinds


def _vae_loss(model, x, codes, kinds: list[tuple[str, int]], beta: float):
    import torch
    from torch.nn import functional as F

    mu, log_var = model.encode(x, codes)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
    out = model.decode(z, codes)
    loss, start = 0.0, 0
    for kind, width in kinds:
        part, target = out[:, start:start + width], x[:, start:start + width]
        if kind == "categorical":
            loss = loss + F.cross_entropy(part, target.argmax(dim=1), reduction="sum")
        else:
            loss = loss + F.mse_loss(part, target, reduction="sum")
        start += width
    kl = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp())
    return (loss + beta * kl) / len(x)


def _held_out_vae_loss(model, x, codes, kinds, beta: float) -> float:
    """The VAE loss of held-out rows with z = μ (no sampling: the same figure every time it is asked)."""
    import torch
    from torch.nn import functional as F

    with torch.no_grad():
        mu, log_var = model.encode(x, codes)
        out, loss, start = model.decode(mu, codes), 0.0, 0
        for kind, width in kinds:
            part, target = out[:, start:start + width], x[:, start:start + width]
            loss += float(F.cross_entropy(part, target.argmax(dim=1), reduction="sum") if kind == "categorical"
                          else F.mse_loss(part, target, reduction="sum"))
            start += width
        kl = float(-0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp()))
    return (loss + beta * kl) / max(len(x), 1)


def train_vae(x: np.ndarray, codes: np.ndarray, schema: Schema, cfg: AttributeGeneratorConfig,
              held_out: np.ndarray | None = None):
    """(the conditional VAE trained with Adam in batches of 256, its training summary).

    ``epochs`` is a cap: with ``held_out`` (a bool mask over the rows) those rows are left out of
    training and training stops once their loss has not improved for ``patience`` epochs; the best
    epoch's weights are kept. Deterministic for the same rows in the same order, config and seed."""
    with torch_threads(cfg.num_threads):
        return _train_vae(x, codes, schema, cfg, held_out)


def _train_vae(x: np.ndarray, codes: np.ndarray, schema: Schema, cfg: AttributeGeneratorConfig, held_out):
    import torch

    seed_everything(cfg.seed)
    model = _build_vae(x.shape[1], len(schema.categories), cfg.model_dump())
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    held_out = np.zeros(len(x), bool) if held_out is None or held_out.all() else held_out
    xs, cs = torch.from_numpy(x[~held_out]), torch.from_numpy(codes[~held_out])
    check = (torch.from_numpy(x[held_out]), torch.from_numpy(codes[held_out])) if held_out.any() else None
    kinds, stopping = kinds_of(schema), HeldOutStopping(cfg.patience, cfg.min_improvement)
    progress, generator, batch = EpochProgress("[fit] attribute VAE", cfg.epochs), np.random.default_rng(cfg.seed), 256
    for epoch in range(cfg.epochs):
        model.train()
        order, total = generator.permutation(len(xs)), 0.0
        for start in range(0, len(xs), batch):
            rows = torch.from_numpy(order[start:start + batch])
            loss = _vae_loss(model, xs[rows], cs[rows], kinds, cfg.beta)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
        model.eval()
        detail = f"loss {total / max(len(xs), 1):.4f}"
        if check is not None:
            held = _held_out_vae_loss(model, *check, kinds, cfg.beta)
            detail += f", held-out loss {held:.4f}" + (" (best)" if stopping.observe(epoch, held, model) else "")
        if (epoch + 1) % 10 == 0 or stopping.stop or epoch + 1 == cfg.epochs:  # short epochs: every 10th line
            progress.epoch(epoch + 1, detail)
        if stopping.stop:
            progress.note(f"stopped early after {epoch + 1} epochs; keeping epoch {stopping.best_epoch + 1}")
            break
    stopping.restore(model)
    return model.eval(), {"epochs_trained": epoch + 1, "best_epoch": stopping.best_epoch + 1,
                          "held_out_loss": stopping.best_loss, "held_out_items": int(held_out.sum())}


# ---------------------------------------------------------------- decoding with constraints


def decode_rows(schema: Schema, out: np.ndarray, categories: list[str], uniforms: np.ndarray | None = None) -> list[dict]:
    """Model outputs → {"price", "numeric": {…}, "categorical": {…}} per row, constraints applied.

    Categorical values: the most likely value the row's category has (``uniforms`` given: sampled
    among them by inverse CDF, one uniform per group); numbers clipped to what the category shows.
    """
    rows = []
    kinds = kinds_of(schema)
    for r, category in enumerate(categories):
        start, price, numeric, categorical = 0, None, {}, {}
        for g, (kind, width) in enumerate(kinds):
            part = out[r, start:start + width]
            start += width
            if kind == "price":
                low, high = schema.band.get(category, (-np.inf, np.inf))
                log_price = float(np.clip(part[0] * schema.price_std + schema.price_mean, low, high))
                price = round(math.exp(log_price), 2)  # cents; rounding must not leave the band
                if math.isfinite(low) and (price <= 0 or math.log(price) < low):
                    price = math.ceil(math.exp(low) * 100) / 100
                if math.isfinite(high) and math.log(price) > high:
                    price = math.floor(math.exp(high) * 100) / 100
            elif kind == "numeric":
                k = len(numeric)
                name = schema.numeric[k]
                value = float(part[0] * schema.numeric_std[k] + schema.numeric_mean[k])
                numeric[name] = int(round(value)) if name in schema.integer else value
            elif kind == "categorical":
                name = list(schema.categorical)[len(categorical)]
                values = schema.categorical[name]
                allowed = set(schema.category_values.get(category, {}).get(name, [])) or set(values[:-1])
                mask = np.array([v in allowed for v in values])
                if not mask.any():
                    continue
                logits = np.where(mask, part, -np.inf)
                if uniforms is None:
                    categorical[name] = values[int(np.argmax(logits))]
                else:
                    weights = np.exp(logits - logits[mask].max())
                    cdf = np.cumsum(weights) / weights.sum()
                    categorical[name] = values[min(int((cdf < uniforms[r, g]).sum()), len(values) - 1)]
        rows.append({"price": price, "numeric": numeric, "categorical": categorical})
    return rows


def merge_attributes(original: str | None, decoded: dict) -> str:
    """The item's attributes JSON with generated values for the keys it has (no attribute is added)."""
    parsed = parse_attributes(original)
    generated = {**decoded["numeric"], **{k: v for k, v in decoded["categorical"].items() if v != OTHER}}
    merged = {**parsed, **{k: v for k, v in generated.items() if k in parsed}}
    return json.dumps({k: merged[k] for k in sorted(merged)}, ensure_ascii=False)


# ---------------------------------------------------------------- the copula


def fit_copula(x_columns: np.ndarray, codes: np.ndarray, schema: Schema) -> dict:
    """Per category: each column's sorted values (empirical quantiles) and the normal-score correlation."""
    from scipy.stats import norm, rankdata

    fitted = {}
    for c, category in enumerate(schema.categories):
        rows = x_columns[codes == c]
        if len(rows) < 3:
            continue
        scores = norm.ppf(np.column_stack([rankdata(col) / (len(col) + 1) for col in rows.T]))
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.corrcoef(scores, rowvar=False) if rows.shape[1] > 1 else np.ones((1, 1))
        corr = np.nan_to_num(corr, nan=0.0)
        np.fill_diagonal(corr, 1.0)
        fitted[category] = {"quantiles": np.sort(rows, axis=0).tolist(), "corr": corr.tolist()}
    return fitted


def _root(corr: np.ndarray) -> np.ndarray:
    """R with R Rᵀ = corr (eigen-decomposition: also for a singular correlation, where Cholesky fails)."""
    eigen, vectors = np.linalg.eigh(corr)
    return vectors * np.sqrt(np.clip(eigen, 0, None))


def _correlated(normals: np.ndarray, corr: np.ndarray) -> np.ndarray:
    """Rows ``R ε``: row by row, so a row's value does not depend on the batch it is in."""
    return (normals[:, None, :] * _root(corr)[None, :, :]).sum(axis=2)


def _quantile(quantiles: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Each column's empirical quantile at ``u`` (rows of uniforms)."""
    index = np.minimum((u * len(quantiles)).astype(int), len(quantiles) - 1)
    return np.take_along_axis(quantiles, index, axis=0)


def sample_copula(copula: dict, category: str, n: int, seed: int) -> np.ndarray:
    """``n`` rows of the category's columns from its copula (empirical quantiles of normal draws)."""
    from scipy.stats import norm

    fitted = copula[category]
    quantiles, corr = np.array(fitted["quantiles"]), np.array(fitted["corr"])
    generator = np.random.default_rng([seed, zlib.crc32(category.encode())])
    z = generator.standard_normal((n, len(corr))) @ _root(corr).T
    return _quantile(quantiles, norm.cdf(z))


def copula_step(fitted: dict, columns: np.ndarray, normals: np.ndarray, rho: float) -> np.ndarray:
    """Rows near ``columns``: their normal scores (mid-ranks among the category's values, as the
    copula was fitted) moved to ``ρ·z + √(1−ρ²)·R·ε``, mapped back through the empirical quantiles.
    ``ρ = 1`` gives back the fitted values of the category (a value it lacks: the nearest by rank)."""
    from scipy.stats import norm

    quantiles, corr = np.array(fitted["quantiles"]), np.array(fitted["corr"])
    below = np.column_stack([np.searchsorted(quantiles[:, j], columns[:, j], "left") for j in range(len(corr))])
    upto = np.column_stack([np.searchsorted(quantiles[:, j], columns[:, j], "right") for j in range(len(corr))])
    z = norm.ppf((below + (upto - below + 1) / 2) / (len(quantiles) + 1))
    moved = rho * z + math.sqrt(max(1.0 - rho * rho, 0.0)) * _correlated(normals[:, :len(corr)], corr)
    return _quantile(quantiles, norm.cdf(moved))


def column_count(schema: Schema) -> int:
    """Width of :func:`_columns` (and of a category's copula): price, numeric, categorical, text."""
    return 1 + len(schema.numeric) + len(schema.categorical) + len(schema.components)


def _columns(schema: Schema, x: np.ndarray) -> np.ndarray:
    """x reduced to one column per attribute: price, numeric, categorical codes (frequency order), text."""
    out, start = [], 0
    for kind, width in kinds_of(schema):
        part = x[:, start:start + width]
        start += width
        if kind == "categorical":
            out.append(part.argmax(axis=1).astype(float)[:, None])
        else:
            out.append(part)
    return np.concatenate(out, axis=1)


def _as_output(schema: Schema, columns: np.ndarray, quantiles: np.ndarray | None) -> np.ndarray:
    """:func:`_columns` rows of one category back in the model-output layout :func:`decode_rows` reads.

    A categorical code becomes logits: the code far ahead, then the category's frequencies (from its
    copula ``quantiles``; None: uniform), so a value the category lacks falls to its most common one."""
    out, at = [], 0
    for kind, width in kinds_of(schema):
        if kind != "categorical":
            out.append(columns[:, at:at + width])
            at += width
            continue
        counts = (np.bincount(quantiles[:, at].astype(int), minlength=width)[:width] if quantiles is not None
                  else np.zeros(width))
        codes = np.clip(columns[:, at].astype(int), 0, width - 1)
        out.append(1e3 * np.eye(width)[codes] + np.log((counts + 0.5) / (counts.sum() + 0.5 * width)))
        at += 1
    return np.concatenate(out, axis=1)


# ---------------------------------------------------------------- fidelity


def _mean(values) -> float:
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def _distances(schema: Schema, r: np.ndarray, f: np.ndarray) -> dict | None:
    """One category's distances (None: fewer than 3 rows): W1 / spread of price and of each numeric
    column that varies there (by column index), TVD of each categorical column, correlation gap."""
    from scipy.stats import wasserstein_distance

    if len(r) < 3 or len(f) < 3:
        return None
    first = 1 + len(schema.numeric)
    w1 = {j: wasserstein_distance(r[:, j], f[:, j]) / (r[:, j].std() or 1.0)
          for j in range(first) if j == 0 or r[:, j].std() > 0}
    tvd = []
    for i, width in enumerate(len(v) for v in schema.categorical.values()):
        p = np.bincount(r[:, first + i].astype(int), minlength=width) / len(r)
        q = np.bincount(f[:, first + i].astype(int), minlength=width) / len(f)
        tvd.append(0.5 * np.abs(p - q).sum())
    k, corr = first + len(schema.categorical), float("nan")
    if k > 1:
        with np.errstate(invalid="ignore", divide="ignore"):  # a constant column: no correlation
            cr = np.nan_to_num(np.corrcoef(r[:, :k], rowvar=False))
            cf = np.nan_to_num(np.corrcoef(f[:, :k], rowvar=False))
        corr = float(np.abs(cr - cf)[np.triu_indices(k, 1)].mean())
    return {"w1": w1, "tvd": tvd, "corr": corr}


def fidelity(schema: Schema, real: np.ndarray, codes: np.ndarray, generated: dict[str, np.ndarray],
             fake_codes: np.ndarray | None = None) -> dict:
    """Distances of generated vs real attributes, per method (columns as :func:`_columns` gives them).

    ``fake_codes``: the categories of the generated rows (default ``codes``: one per real row).
    Each column's W1 is averaged over categories; ``w1_mean`` is the mean over price and the
    numeric columns (each counted once)."""
    fake_codes = codes if fake_codes is None else fake_codes
    report = {}
    for method, fake in generated.items():
        parts = [_distances(schema, real[codes == c], fake[fake_codes == c]) for c in range(len(schema.categories))]
        parts = [p for p in parts if p is not None]
        numeric = sorted({j for p in parts for j in p["w1"] if j > 0})
        per_column = [_mean([p["w1"][j] for p in parts if j in p["w1"]]) for j in [0, *numeric]] if parts else []
        report[method] = {"price_w1": per_column[0] if per_column else float("nan"),
                          "numeric_w1": _mean(per_column[1:]), "w1_mean": _mean(per_column),
                          "categorical_tvd": _mean([t for p in parts for t in p["tvd"]]),
                          "correlation_diff": _mean([p["corr"] for p in parts])}
    return report


def choose_method(report: dict) -> str:
    """The default method of ``attribute_generate`` by :data:`CHOICE_RULE` (missing figures lose)."""
    def figure(method: str, key: str) -> float:
        value = report.get(method, {}).get(key, float("nan"))
        return value if value == value else math.inf

    vae, copula = figure("vae", "w1_mean"), figure("copula", "w1_mean")
    if abs(vae - copula) > TIE:
        return "vae" if vae < copula else "copula"
    return "vae" if figure("vae", "categorical_tvd") < figure("copula", "categorical_tvd") else "copula"


def _vae_samples(model, schema: Schema, codes: np.ndarray, seed: int) -> np.ndarray:
    """One decoded sample from the prior per row, with the row's category (for fidelity)."""
    import torch

    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(len(codes), model.mu.out_features, generator=generator)
        out = model.decode(z, torch.from_numpy(codes)).numpy()
    decoded = decode_rows(schema, out, [schema.categories[c] for c in codes],
                          uniforms=np.random.default_rng(seed).random((len(codes), len(kinds_of(schema)))))
    return _decoded_columns(schema, decoded, out)


def _copula_samples(copula: dict, schema: Schema, codes: np.ndarray, seed: int) -> np.ndarray:
    """One copula sample per row, with the row's category (zeros where the category has no copula)."""
    out = np.zeros((len(codes), column_count(schema)))
    for c, category in enumerate(schema.categories):
        rows = np.flatnonzero(codes == c)
        if category in copula and len(rows):
            out[rows] = sample_copula(copula, category, len(rows), seed)
    return out


def _decoded_columns(schema: Schema, decoded: list[dict], out: np.ndarray) -> np.ndarray:
    rows = []
    for d in decoded:
        row = [(math.log(d["price"]) - schema.price_mean) / schema.price_std]
        row += [(float(d["numeric"].get(n, m)) - m) / s for n, m, s in zip(schema.numeric, schema.numeric_mean,
                                                                          schema.numeric_std)]
        row += [float(values.index(d["categorical"].get(name, OTHER))) for name, values in schema.categorical.items()]
        rows.append(row)
    text = out[:, -len(schema.components):] if len(schema.components) else np.zeros((len(out), 0))
    return np.concatenate([np.array(rows, dtype=float).reshape(len(decoded), -1), text], axis=1)


def measure(schema: Schema, model, copula: dict, real: np.ndarray, codes: np.ndarray, fitted: np.ndarray,
            seed: int, repeats: int = 10) -> dict:
    """:func:`fidelity` of ``repeats`` samples per real row (of its category) from each method;
    ``independent`` draws each column from ``fitted`` (the fitted items' columns)."""
    fake_codes = np.repeat(codes, repeats)
    draw = np.random.default_rng(seed)
    generated = {"vae": _vae_samples(model, schema, fake_codes, seed),
                 "copula": _copula_samples(copula, schema, fake_codes, seed),
                 "independent": np.column_stack([draw.choice(col, len(fake_codes)) for col in fitted.T])}
    return fidelity(schema, real, codes, generated, fake_codes)


# ---------------------------------------------------------------- fit, save, load


def holdout_mask(item_ids, categories, share: float, seed: int) -> np.ndarray:
    """Items held out of fitting: per category, the ``floor(share · n)`` items of smallest keyed hash
    (item id, seed), as long as at least 3 items of the category are left to fit on."""
    held = np.zeros(len(item_ids), dtype=bool)
    if share <= 0 or not len(item_ids):
        return held
    u = rng.uniform(seed, "attribute-holdout", rng.key_strings([str(i) for i in item_ids]), 0)
    categories = np.asarray([str(c) for c in categories])
    for category in np.unique(categories):
        rows = np.flatnonzero(categories == category)
        count = min(int(share * len(rows)), max(len(rows) - 3, 0))
        held[rows[np.argsort(u[rows], kind="stable")[:count]]] = True
    return held


def catalog_frame(items):
    """The catalog's columns (pandas) in a stable order: by item id (then every column, for repeated
    ids), so that the fitted VAE and copula never depend on the Spark partitioning."""
    columns = ["item_id", "title", "description", "category", "price", "attributes"]
    frame = items.select(*columns).toPandas()
    return frame.sort_values(columns, kind="stable", na_position="last").reset_index(drop=True)


def fit_attribute_generator(items, cfg: AttributeGeneratorConfig, models_dir, *, name: str = "item_attributes",
                            trained_on: dict, reuse: bool = True) -> ArtifactRef:
    """Fit the VAE and the copula on the catalog (``items`` table, Spark), less the held-out items
    that measure their fidelity, choose the default method and save the artifact.

    Items without a valid (> 0) price or category are left out (their count is in the fidelity
    report as ``excluded``). With ``reuse``, an artifact of ``models_dir`` fitted with the same
    config on the same catalog is returned instead of fitting again."""
    frame = catalog_frame(items)
    fingerprint = data_fingerprint(frame.astype(object).where(frame.notna(), None).to_numpy().tolist())
    if reuse and (found := reusable(models_dir, name, cfg.model_dump(mode="json"), fingerprint)) is not None:
        print(f"[fit] {name}: reusing {found.tag} (same data and config)", file=sys.stderr, flush=True)
        return found
    valid = frame["price"].notna() & (frame["price"] > 0) & frame["category"].notna()
    train = frame[valid].reset_index(drop=True)
    if len(train) < 10:
        raise ValueError(f"cannot fit {name}: {len(train)} items with a price and a category (at least 10 needed)")
    schema = fit_schema(train, cfg)
    x, codes = schema.encode(train)
    held = holdout_mask(train["item_id"].tolist(), train["category"].tolist(), cfg.holdout, cfg.seed)
    ids = rng.key_strings([str(i) for i in train["item_id"]])
    stop_on = rng.uniform(cfg.seed, "attribute-early-stopping", ids, 0)[~held] < cfg.validation_share
    with torch_threads(cfg.num_threads):
        model, summary = train_vae(x[~held], codes[~held], schema, cfg, held_out=stop_on)
        real = _columns(schema, x)
        copula = fit_copula(real[~held], codes[~held], schema)
        evaluate = held if held.any() else ~held  # no holdout: measured on the fitted items
        report = measure(schema, model, copula, real[evaluate], codes[evaluate], real[~held], cfg.seed)
        in_sample = measure(schema, model, copula, real[~held], codes[~held], real[~held], cfg.seed)
    report.update(chosen=choose_method(report), rule=CHOICE_RULE, items=int(len(train)), held_out=int(held.sum()),
                  excluded=int((~valid).sum()), in_sample={m: in_sample[m] for m in ("vae", "copula")},
                  training=summary)
    return _save(models_dir, name, schema, model, copula, cfg, trained_on, report, fingerprint)


def _save(models_dir, name: str, schema: Schema, model, copula: dict, cfg: AttributeGeneratorConfig,
          trained_on: dict, report: dict, fingerprint: str | None = None) -> ArtifactRef:
    import torch

    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    arrays = io.BytesIO()
    np.savez(arrays, idf=schema.idf, components=schema.components)
    input_width = sum(width for _, width in kinds_of(schema))
    files = {"vae.pt": weights.getvalue(), "text.npz": arrays.getvalue(),
             "schema.json": json.dumps(schema.to_json()).encode(), "copula.json": json.dumps(copula).encode(),
             "model.json": json.dumps({"input_width": int(input_width), **cfg.model_dump()}).encode()}
    return save_artifact(models_dir, name, kind=KIND, files=files, config=cfg.model_dump(mode="json"),
                         trained_on=trained_on, fidelity=report, data_hash=fingerprint)


@register_loader(KIND)
def load_attribute_generator(path: Path, manifest: dict) -> AttributeGenerator:
    """The generator; its default method is the manifest's ``chosen`` (artifacts from before: the VAE)."""
    import torch

    settings = json.loads((path / "model.json").read_text())
    data = json.loads((path / "schema.json").read_text())
    data["band"] = {k: tuple(v) for k, v in data["band"].items()}
    schema = Schema(**data)
    with np.load(path / "text.npz") as arrays:
        schema.idf, schema.components = arrays["idf"], arrays["components"]
    model = _build_vae(settings["input_width"], len(schema.categories), settings)
    model.load_state_dict(torch.load(path / "vae.pt", map_location="cpu"))
    model = model.to(device()).eval()
    return AttributeGenerator(schema, model, json.loads((path / "copula.json").read_text()),
                              tag=f"{manifest['name']}@{manifest['version']}",
                              chosen=manifest.get("fidelity", {}).get("chosen", "vae"))


def _row_categories(schema: Schema, frame, codes: np.ndarray) -> list[str]:
    """Each item's category, or the schema's category its code falls back to (one the model lacks)."""
    return [c if c in schema.band else schema.categories[k] for c, k in zip(frame["category"], codes)]


def variants(generator: AttributeGenerator, frame, normals: np.ndarray, uniforms: np.ndarray, scale: float):
    """(prices, attributes JSON) of one variant per item of ``frame``: decoded from z = μ + scale·σ·ε.

    ``normals`` [n, latent] and ``uniforms`` [n, groups] are the item's keyed draws."""
    import torch

    schema = generator.schema
    x, codes = schema.encode(frame)
    run_on = next(generator.model.parameters()).device
    with torch.no_grad():
        xs, cs = torch.from_numpy(x).to(run_on), torch.from_numpy(codes).to(run_on)
        mu, log_var = generator.model.encode(xs, cs)
        z = mu + scale * torch.exp(0.5 * log_var) * torch.from_numpy(normals.astype(np.float32)).to(run_on)
        out = generator.model.decode(z, cs).cpu().numpy()
    decoded = decode_rows(schema, out, _row_categories(schema, frame, codes), uniforms=uniforms)
    return [d["price"] for d in decoded], [merge_attributes(a, d) for a, d in zip(frame["attributes"], decoded)]


def copula_variants(generator: AttributeGenerator, frame, normals: np.ndarray, scale: float):
    """(prices, attributes JSON) of one variant per item of ``frame`` from its category's copula.

    The item's columns move by :func:`copula_step` with ``ρ = 1/√(1 + scale²)`` (``normals``
    [n, :func:`column_count`] are the item's keyed draws) and are decoded with the VAE path's
    constraints (:func:`decode_rows`). An item of a category without a copula keeps its values."""
    schema = generator.schema
    x, codes = schema.encode(frame)
    categories = _row_categories(schema, frame, codes)
    columns, rho = _columns(schema, x), 1.0 / math.sqrt(1.0 + scale * scale)
    out = np.zeros((len(frame), x.shape[1]))
    for category in sorted(set(categories)):
        rows = np.flatnonzero(np.asarray(categories) == category)
        fitted = generator.copula.get(category)
        moved = copula_step(fitted, columns[rows], normals[rows], rho) if fitted else columns[rows]
        out[rows] = _as_output(schema, moved, np.array(fitted["quantiles"]) if fitted else None)
    decoded = decode_rows(schema, out, categories)
    return [d["price"] for d in decoded], [merge_attributes(a, d) for a, d in zip(frame["attributes"], decoded)]
