"""Item augmenters: EDA text operators on titles and descriptions, Gaussian noise on numeric features.

Pure and Spark-free: each operator maps a pandas DataFrame of catalog items (the ``items`` table's
columns) to its augmented copy, given its parameters, fitted state (:class:`ItemState`: a synonym
lexicon and per-category :data:`FeatureStats`) and keyed uniforms (``base.Draws``, one per item).
Randomness is keyed by (global seed, operator, item key, copy, token or draw index), so an item's
augmented rows are the same whatever the partitioning or batch composition.

Text operators (EDA, Wei & Zou 2019, "Easy Data Augmentation"), each changing about ``alpha``
of an item's words: ``synonym_replace``, ``random_insert`` (a synonym of one of the text's words
at a random place), ``random_swap`` and ``random_delete``. The lexicon is Princeton WordNet 3.0
restricted to the catalog's own words (``recaug_spark.text.lexicon``), so the fitted state is small.

**Protected tokens** are never changed, moved or deleted (:func:`protected_mask`). A token is
whitespace-delimited; leading and trailing punctuation is split off its *core*
(``recaug_spark.text.tokens``). It is protected if
its core

* has no letter (punctuation, symbols) or has a digit: numbers, ``40cm``, ``2-person``, ``700x25c``;
* is a size (``xs``, ``s``, ``m``, ``l``, ``xl``, ``xxl``, ``small``, ``one-size`` …) or a unit
  (``cm``, ``mm``, ``kg``, ``g``, ``ml``, ``l``, ``oz``, ``inch`` …): ``recaug_spark.text.units``;
* is brand-like: a word of the item's ``brand``/``size``/``model`` attribute (``protect_attributes``),
  a word with a capital letter anywhere but at the start of a sentence (raw, not normalized text),
  or a word the lexicon does not know (neither a WordNet lemma, an inflection of one, nor a stop
  word): invented brand names (``stridewell``), model codes, foreign words.

Operators preserve the protected tokens' order too; ``random_insert`` never inserts between two
adjacent protected tokens (``40 cm`` stays together). Synonyms are single lower-case words that
are themselves never protected. Text operators leave a null or fully protected text unchanged.

Noise operators (``price_noise``, ``feature_noise``): ``value + rel_sigma · spread · z`` with
``z ~ N(0, 1)`` (Box–Muller on keyed uniforms), where ``spread`` is the feature's spread within
the item's category (IQR / 1.349, a robust σ; the standard deviation when the IQR is 0), fitted
once; the result is clipped to the [min, max] observed in that category. Prices are fitted on
valid (> 0) prices only, so they stay > 0, and rounded to ``decimals``; numeric JSON attributes
(JSON numbers, not strings) that were integers in every item stay integers.

Example::

    lexicon = Lexicon.from_mapping({"shirt": ["tee"]})  # recaug_spark.text.lexicon
    op = registry.build_item("synonym_replace", {"alpha": 1.0, "fields": ["title"]})
    apply_chain(items, [op], ItemState(lexicon=lexicon), seed=7, branch=0, copy=0)
    # "blue shirt 40cm" -> "blue tee 40cm" ("blue" is unknown to this tiny lexicon: protected)
"""

from __future__ import annotations

import json
import math
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from recaug_spark import rng
from recaug_spark.augment.base import AugmenterError, Draws, Operator, Params, register_item
from recaug_spark.augment.kernels import pick
from recaug_spark.text.attributes import attribute_words, numeric_attributes
from recaug_spark.text.lexicon import MAX_SENSES, Lexicon
from recaug_spark.text.stopwords import STOPWORDS
from recaug_spark.text.tokens import SENTENCE_END, Token, render, tokenize
from recaug_spark.text.units import SIZE_TOKENS, UNIT_TOKENS

TEXT_FIELDS = ("title", "description")


# --------------------------------------------------------------------------------------------
# Protected tokens


def is_protected(core: str, sentence_start: bool, lexicon: Lexicon | None, extra: frozenset[str] = frozenset()) -> bool:
    """The protection rule of the module docstring for one token core."""
    if not any(c.isalpha() for c in core) or any(c.isdigit() for c in core):
        return True
    low = core.lower()
    if low in SIZE_TOKENS or low in UNIT_TOKENS or low in extra:
        return True
    if core != low and not (sentence_start and core[0].isupper() and core[1:] == core[1:].lower()):
        return True
    return lexicon is not None and not lexicon.knows(low)


def protected_mask(tokens: Sequence[Token], lexicon: Lexicon | None, extra: frozenset[str] = frozenset(),
                   memo: dict | None = None) -> list[bool]:
    """:func:`is_protected` for each token of a text; ``memo`` caches the rule without ``extra``."""
    memo = {} if memo is None else memo
    mask, sentence_start = [], True
    for prefix, core, suffix in tokens:
        key = (core, sentence_start)
        if key not in memo:
            memo[key] = is_protected(core, sentence_start, lexicon)
        mask.append(memo[key] or (bool(extra) and core.lower() in extra))
        sentence_start = (suffix or core).endswith(SENTENCE_END)
    return mask


def _match_case(word: str, like: str) -> str:
    return word.capitalize() if like[:1].isupper() else word


# --------------------------------------------------------------------------------------------
# Fitted feature statistics


@dataclass(frozen=True)
class FeatureStat:
    """A numeric feature's distribution within one category."""

    n: int
    lo: float
    hi: float
    iqr_sigma: float  # (q75 - q25) / 1.349: the σ of a normal with this IQR
    std: float  # sample standard deviation (0 for one value)
    integral: bool  # every value was a JSON integer

    @classmethod
    def from_values(cls, values: Iterable[float], integral: bool = False) -> FeatureStat:
        v = np.sort(np.asarray(list(values), dtype=np.float64))
        q25, q75 = np.percentile(v, [25, 75])
        return cls(len(v), float(v[0]), float(v[-1]), float((q75 - q25) / 1.349),
                   float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, bool(integral))

    def spread(self, kind: str) -> float:
        return self.iqr_sigma if kind == "iqr" and self.iqr_sigma > 0 else self.std


FeatureStats = Mapping[tuple[Any, str], FeatureStat]  # (category, feature) -> stat; feature "price" or "attributes.<key>"
PRICE_FEATURE = "price"
ATTRIBUTE_PREFIX = "attributes."


def feature_values(items: pd.DataFrame) -> pd.DataFrame:
    """Long form (category, feature, value, integral) of every item's valid price and numeric attribute."""
    rows = []
    categories = items["category"].tolist() if "category" in items else [None] * len(items)
    if "price" in items:
        for category, price in zip(categories, items["price"].tolist()):
            if price is not None and np.isfinite(price) and price > 0:
                rows.append((category, PRICE_FEATURE, float(price), False))
    if "attributes" in items:
        for category, attributes in zip(categories, items["attributes"].tolist()):
            for key, value in numeric_attributes(attributes).items():
                rows.append((category, ATTRIBUTE_PREFIX + key, float(value), isinstance(value, int)))
    return pd.DataFrame(rows, columns=["category", "feature", "value", "integral"]).astype(
        {"value": "float64", "integral": "bool"})


def fit_feature_stats(items: pd.DataFrame) -> dict[tuple[Any, str], FeatureStat]:
    """Per-(category, feature) statistics of a catalog (the Spark stage computes the same thing)."""
    values = feature_values(items)
    stats = {}
    for (category, feature), group in values.groupby(["category", "feature"], dropna=False, sort=True):
        category = None if isinstance(category, float) and math.isnan(category) else category
        stats[category, feature] = FeatureStat.from_values(group["value"], bool(group["integral"].all()))
    return stats


# --------------------------------------------------------------------------------------------
# The augmenter contract


@dataclass(frozen=True)
class ItemState:
    """Fitted state shared by the item operators of a run (small: shipped with the tasks)."""

    lexicon: Lexicon | None = None
    stats: FeatureStats = field(default_factory=dict)
    generators: Mapping[str, Any] = field(default_factory=dict)  # artifact name -> ArtifactRef (recaug fit)

    def require_lexicon(self, operator: str) -> Lexicon:
        if self.lexicon is None:
            raise AugmenterError(f"item augmenter {operator!r} needs a fitted lexicon (ItemState.lexicon)")
        return self.lexicon

    def require_generator(self, operator: str, artifact: str):
        if artifact not in self.generators:
            raise AugmenterError(f"item augmenter {operator!r} needs the generator {artifact!r} (run `recaug fit`)")
        return self.generators[artifact]


class ItemAugmenter(Operator):
    """An item augmenter: ``apply`` maps a frame of items to its augmented copy. Its state is the
    run's shared :class:`ItemState` (fitted once by the stage), so it has no fit of its own."""

    kind: ClassVar[Literal["text", "noise", "generator"]]
    artifact: ClassVar[str | None] = None  # generator operators: the model's name in the models folder

    @abstractmethod
    def apply(self, items: pd.DataFrame, draws: Draws, state: ItemState) -> pd.DataFrame:
        """The augmented copy of ``items`` (same rows, same columns)."""


def apply_chain(items: pd.DataFrame, operators: Sequence[ItemAugmenter], state: ItemState, *, seed: int,
                branch: int, copy: int) -> pd.DataFrame:
    """One augmented copy of ``items`` through a chain of operators (keys hashed from item ids)."""
    keys = rng.key_strings(items["item_id"].tolist())
    current = items
    for position, op in enumerate(operators):
        draws = Draws(seed, f"items/{branch}:{position}:{op.name}", keys, copy)
        current = op.apply(current, draws, state)
    return current


# --------------------------------------------------------------------------------------------
# Text operators (EDA)


class _TextParams(Params):
    alpha: float = Field(0.1, gt=0, le=1, description="share of each text's words changed (at least one)")
    fields: tuple[Literal["title", "description"], ...] = Field(
        TEXT_FIELDS, min_length=1, description="text columns augmented, each with its own draws")
    protect_attributes: tuple[str, ...] = Field(
        ("brand", "size", "model"), description="attribute keys whose values' words are protected")


class _SynonymParams(_TextParams):
    senses: int = Field(1, ge=1, le=MAX_SENSES, description="WordNet senses used, most frequent first")


class _TextAugmenter(ItemAugmenter):
    kind = "text"
    Params = _TextParams

    def apply(self, items: pd.DataFrame, draws: Draws, state: ItemState) -> pd.DataFrame:
        lexicon = state.require_lexicon(self.name)
        attributes = items["attributes"].tolist() if "attributes" in items else [None] * len(items)
        extras = [attribute_words(a, self.params.protect_attributes) for a in attributes]
        memo: dict = {}
        senses = getattr(self.params, "senses", MAX_SENSES)
        synonyms = _SynonymCache(lexicon, senses)
        out = items.copy()
        for name in self.params.fields:
            texts = items[name].tolist()
            edited = []
            for start in range(0, len(texts), _CHUNK):  # bounds the (items × longest text) draw matrices
                docs = [tokenize(t) if isinstance(t, str) else None for t in texts[start:start + _CHUNK]]
                width = max((len(d) for d in docs if d), default=0) + 1
                rows = slice(start, start + len(docs))
                uniforms = {tag: draws.uniform(f"{name}/{tag}", width, rows) for tag in self.tags}
                for k, tokens in enumerate(docs):
                    result = None
                    if tokens:
                        protected = protected_mask(tokens, lexicon, extras[start + k], memo)
                        result = self.edit(tokens, protected, {t: u[k] for t, u in uniforms.items()}, synonyms)
                    edited.append(texts[start + k] if result is None else render(result))
            out[name] = pd.Series(edited, index=items.index, dtype=object)
        return out

    tags: ClassVar[tuple[str, ...]]

    def count(self, tokens: Sequence[Token]) -> int:
        """EDA's number of changes: ``max(1, floor(alpha · words))``."""
        return max(1, int(self.params.alpha * len(tokens)))

    @abstractmethod
    def edit(self, tokens: list[Token], protected: list[bool], u: dict[str, np.ndarray],
             synonyms: _SynonymCache) -> list[Token] | None:
        """The edited tokens of one text, or None when nothing changes."""


class _SynonymCache(dict):
    """A word's synonyms (lower-case lookups, the operator's senses) and whether it may seed a change."""

    def __init__(self, lexicon: Lexicon, senses: int):
        super().__init__()
        self.lexicon, self.senses = lexicon, senses

    def __missing__(self, core: str) -> tuple[str, ...]:
        low = core.lower()
        value = () if low in STOPWORDS else self.lexicon.synonyms_of(low, self.senses)
        self[core] = value
        return value


_CHUNK = 256  # items whose draws are generated together


@register_item
class SynonymReplace(_TextAugmenter):
    """Replace ``max(1, floor(alpha · words))`` random words by a WordNet synonym (EDA "SR").

    Only unprotected, non-stop words with a synonym are candidates; fewer candidates, fewer
    changes. When it helps: cold and long-tail items whose text is the main signal; teaches text
    encoders that "jacket" and "coat" describe the same thing.
    """

    name = "synonym_replace"
    Params = _SynonymParams
    tags = ("order", "pick")

    def edit(self, tokens, protected, u, synonyms):
        candidates = [i for i, (t, p) in enumerate(zip(tokens, protected)) if not p and synonyms[t[1]]]
        if not candidates:
            return None
        chosen = sorted(candidates, key=lambda i: (u["order"][i], i))[: self.count(tokens)]
        out = list(tokens)
        for i in chosen:
            prefix, core, suffix = tokens[i]
            options = synonyms[core]
            out[i] = (prefix, _match_case(options[pick(u["pick"][i], len(options))], core), suffix)
        return out


@register_item
class RandomInsert(_TextAugmenter):
    """Insert ``max(1, floor(alpha · words))`` synonyms of the text's own words at random places (EDA "RI").

    Never between two adjacent protected tokens. When it helps: short titles; adds plausible
    vocabulary without losing any original word.
    """

    name = "random_insert"
    Params = _SynonymParams
    tags = ("word", "synonym", "place")

    def edit(self, tokens, protected, u, synonyms):
        seeds = [t[1] for t, p in zip(tokens, protected) if not p and synonyms[t[1]]]
        if not seeds:
            return None
        out, fixed = list(tokens), list(protected)
        for j in range(self.count(tokens)):
            options = synonyms[seeds[pick(u["word"][j], len(seeds))]]
            word = options[pick(u["synonym"][j], len(options))]
            gaps = [g for g in range(len(out) + 1) if not (0 < g < len(out) and fixed[g - 1] and fixed[g])]
            gap = gaps[pick(u["place"][j], len(gaps))]
            out.insert(gap, ("", word, ""))
            fixed.insert(gap, False)
        return out


@register_item
class RandomSwap(_TextAugmenter):
    """Swap two random unprotected words, ``max(1, floor(alpha · words))`` times (EDA "RS").

    Punctuation stays in place; protected tokens keep their positions. When it helps: robustness
    to the arbitrary word order of marketplace titles ("shoes running men's").
    """

    name = "random_swap"
    tags = ("first", "second")

    def edit(self, tokens, protected, u, synonyms):
        movable = [i for i, p in enumerate(protected) if not p]
        if len(movable) < 2:
            return None
        cores = [t[1] for t in tokens]
        for j in range(self.count(tokens)):
            a = pick(u["first"][j], len(movable))
            b = pick(u["second"][j], len(movable) - 1)
            b += b >= a
            cores[movable[a]], cores[movable[b]] = cores[movable[b]], cores[movable[a]]
        return [(p, c, s) for (p, _, s), c in zip(tokens, cores)]


@register_item
class RandomDelete(_TextAugmenter):
    """Delete each unprotected word with probability ``alpha`` (EDA "RD"), never the whole text.

    A deleted token goes with its punctuation. If every token would go, the one with the
    largest draw stays. When it helps: terse or truncated listings; robustness to missing words.
    """

    name = "random_delete"
    tags = ("delete",)

    def edit(self, tokens, protected, u, synonyms):
        drop = [not p and u["delete"][i] < self.params.alpha for i, p in enumerate(protected)]
        if not any(drop):
            return None
        if all(drop):
            drop[max(range(len(tokens)), key=lambda i: (u["delete"][i], -i))] = False
        return [t for t, d in zip(tokens, drop) if not d]


# --------------------------------------------------------------------------------------------
# Noise operators


class _NoiseParams(Params):
    rel_sigma: float = Field(0.1, gt=0, le=5, description="σ of the noise as a multiple of the feature's spread")
    spread: Literal["iqr", "std"] = Field("iqr", description="spread within the category: IQR/1.349 or std")


def _noisy(values: np.ndarray, categories: list, feature: str, z: np.ndarray, stats: FeatureStats,
           params: _NoiseParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Noised values, the mask of rows changed (a value and fitted statistics), and their bounds."""
    out = values.astype(np.float64).copy()
    lo, hi, sigma = np.full(len(values), np.nan), np.full(len(values), np.nan), np.zeros(len(values))
    for i, category in enumerate(categories):
        stat = stats.get((category, feature))
        if stat is not None:
            lo[i], hi[i], sigma[i] = stat.lo, stat.hi, params.rel_sigma * stat.spread(params.spread)
    active = np.isfinite(values) & np.isfinite(lo)
    out[active] = values[active] + sigma[active] * z[active]
    return out, active, lo, hi


@register_item
class PriceNoise(ItemAugmenter):
    """Gaussian noise on the price: σ = ``rel_sigma`` × the price spread in the item's category.

    Clipped to the category's [min, max] valid price (so > 0) and rounded to ``decimals``. Items
    without a price are unchanged. When it helps: price-aware models that over-fit exact prices
    of rarely seen items; simulates promotions and marketplace price dispersion.
    """

    name = "price_noise"
    kind = "noise"

    class Params(_NoiseParams):
        decimals: int | None = Field(2, ge=0, le=6, description="rounding of the noised price; None keeps all digits")

    def apply(self, items, draws, state):
        price = pd.to_numeric(items["price"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        price = np.where(price > 0, price, np.nan)
        new, active, lo, hi = _noisy(price, items["category"].tolist(), PRICE_FEATURE, draws.normal("price"),
                                     state.stats, self.params)
        if self.params.decimals is not None:
            new[active] = np.round(new[active], self.params.decimals)
        new[active] = np.clip(new[active], lo[active], hi[active])
        out = items.copy()
        out["price"] = np.where(active, new, items["price"].to_numpy(dtype=np.float64, na_value=np.nan))
        return out


@register_item
class FeatureNoise(ItemAugmenter):
    """Gaussian noise on numeric attributes (JSON numbers), σ = ``rel_sigma`` × their category spread.

    Clipped to the category's [min, max]; attributes that were integers everywhere stay integers;
    string values (``"size": "42"``) are never touched. When it helps: models using item features
    (weight, capacity, rating) that should not memorize exact values of long-tail items.
    """

    name = "feature_noise"
    kind = "noise"

    class Params(_NoiseParams):
        features: tuple[str, ...] = Field((), description="attribute keys noised; empty: every numeric one")

    def apply(self, items, draws, state):
        if "attributes" not in items:
            return items
        parsed = [numeric_attributes(a) for a in items["attributes"].tolist()]
        keys = sorted({k for p in parsed for k in p} if not self.params.features else set(self.params.features))
        categories = items["category"].tolist()
        changed: dict[int, dict[str, int | float]] = {}
        for key in keys:
            values = np.array([p.get(key, np.nan) for p in parsed], dtype=np.float64)
            feature = ATTRIBUTE_PREFIX + key
            new, active, lo, hi = _noisy(values, categories, feature, draws.normal(f"attr/{key}"), state.stats,
                                         self.params)
            for i in np.flatnonzero(active):
                stat = state.stats[categories[i], feature]
                value = float(np.clip(np.round(new[i]) if stat.integral else new[i], lo[i], hi[i]))
                changed.setdefault(int(i), {})[key] = int(value) if stat.integral else value
        if not changed:
            return items
        attributes = items["attributes"].tolist()
        for i, updates in changed.items():
            obj = json.loads(attributes[i])
            obj.update(updates)
            attributes[i] = json.dumps(obj, ensure_ascii=False)
        out = items.copy()
        out["attributes"] = pd.Series(attributes, index=items.index, dtype=object)
        return out
