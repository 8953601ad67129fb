"""The plan of a synthetic shop: everything a worker needs, computed once on the driver.

A plan is small and picklable: the catalog's shape (:class:`CatalogPlan`), the user population
and its activity scale, the calendar, the funnel and the mess rates (:class:`EventPlan`). Beside
it live the pure functions of an item index that events and the catalog both use (Zipf
popularity, list prices), so the two agree without a join.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import dataclass

import numpy as np

from recaug_spark import rng
from recaug_spark.config import ConfigError, GenerateConfig
from recaug_spark.synthetic.draws import cdf, entity_keys, normal, uniform
from recaug_spark.synthetic.vocabulary import CATEGORIES, Category


@dataclass(frozen=True)
class Permutation:
    """An affine bijection of [0, size): hides the popularity rank in the public ids."""

    size: int
    a: int
    b: int
    a_inverse: int

    @classmethod
    def create(cls, seed: int, stream: str, size: int) -> "Permutation":
        if size <= 1:
            return cls(max(size, 1), 1, 0, 1)
        bits = rng.random_bits(seed, stream, np.arange(2, dtype=np.uint64))
        a = int(bits[0] % np.uint64(size))
        while math.gcd(a, size) != 1:
            a = (a + 1) % size
        return cls(size, a, int(bits[1] % np.uint64(size)), pow(a, -1, size))

    def forward(self, index: np.ndarray) -> np.ndarray:
        return (np.asarray(index, dtype=np.int64) * self.a + self.b) % self.size

    def inverse(self, value: np.ndarray) -> np.ndarray:
        return ((np.asarray(value, dtype=np.int64) - self.b) % self.size * self.a_inverse) % self.size


@dataclass(frozen=True)
class CatalogPlan:
    """The catalog's shape: items, categories, id layout, popularity and price parameters.

    Item ``i`` (internal index) belongs to category ``i % n_categories`` with popularity rank
    ``i // n_categories`` in it; its public id is ``"I"`` + the zero-padded permuted index, so ids
    say nothing about popularity. Ids in ``[n_items, 10**id_width)`` are valid-looking unknown ids.
    """

    seed: int
    n_items: int
    n_categories: int
    zipf_exponent: float
    item_ids: Permutation
    id_width: int
    missing_price_rate: float
    messy_text_rate: float

    @property
    def categories(self) -> tuple[Category, ...]:
        return CATEGORIES[: self.n_categories]


@dataclass(frozen=True)
class EventPlan:
    """Everything the event generator needs: catalog, user population, calendar, funnel, mess."""

    catalog: CatalogPlan
    seed: int
    n_users: int  # organic users: internal ids [0, n_users)
    n_bots: int  # bots: internal ids [n_users, n_users + n_bots)
    bot_events: int  # per bot
    bot_events_per_minute: int
    user_ids: Permutation
    user_id_width: int
    alpha: float
    activity_scale: float
    max_events_per_user: int
    organic_target: float
    window_start: int  # epoch seconds
    window_seconds: int
    session_break_rate: float
    stickiness: float
    view_to_cart: float
    cart_to_purchase: float
    duplicate_rate: float
    near_duplicate_rate: float
    bad_row_rate: float
    return_rate: float
    missing_session_id_rate: float


def plan_catalog(cfg: GenerateConfig, seed: int) -> CatalogPlan:
    """The catalog plan of ``cfg`` under ``seed`` (cheap: no per-item work)."""
    if cfg.categories > len(CATEGORIES):
        raise ConfigError(f"generate.categories is {cfg.categories}; at most {len(CATEGORIES)} are built in")
    if cfg.items < cfg.categories:
        raise ConfigError(f"generate.items ({cfg.items}) must be at least generate.categories ({cfg.categories})")
    return CatalogPlan(
        seed=seed, n_items=cfg.items, n_categories=cfg.categories, zipf_exponent=cfg.zipf_exponent,
        item_ids=Permutation.create(seed, "generate/item.ids", cfg.items), id_width=len(str(cfg.items)) + 1,
        missing_price_rate=cfg.mess.missing_item_price_rate, messy_text_rate=cfg.mess.messy_item_text_rate,
    )


def plan_events(cfg: GenerateConfig, seed: int) -> EventPlan:
    """The event plan of ``cfg`` under ``seed``.

    Budget: ``cfg.events`` = organic + bot + duplicate + near-duplicate + return rows. Bots get
    ``bot_events_per_user`` each but together at most ``bot_max_event_share`` of the total; the rest
    is divided by the expected extra rows per organic event. The activity scale is solved exactly
    on the driver against the users' own Pareto draws (one float per user), so the realised count
    lands within a fraction of a percent of the target instead of the ±15% a heavy tail gives.
    """
    mess = cfg.mess
    n_users = cfg.users or max(1, cfg.events // 20)
    n_bots = mess.bot_users
    bot_budget = int(cfg.events * mess.bot_max_event_share)
    bot_events = min(mess.bot_events_per_user, bot_budget // n_bots) if n_bots else 0
    if n_bots and bot_events < 1:
        n_bots = 0
    purchase_share = _purchase_share(cfg.view_to_cart_rate, cfg.cart_to_purchase_rate)
    extra_per_event = mess.duplicate_rate + mess.near_duplicate_rate + mess.return_rate * purchase_share * 0.8
    organic_target = (cfg.events - n_bots * bot_events) / (1.0 + extra_per_event)
    if n_users * cfg.max_events_per_user < organic_target:
        raise ConfigError(
            f"generate.users ({n_users}) x generate.max_events_per_user ({cfg.max_events_per_user}) is below the "
            f"~{organic_target:,.0f} organic events needed for generate.events={cfg.events}; raise either"
        )
    weights = pareto_weights(seed, np.arange(n_users, dtype=np.int64), cfg.user_activity_alpha)
    scale = _activity_scale(weights, organic_target, cfg.max_events_per_user)
    start = dt.datetime.combine(dt.date.fromisoformat(cfg.start_date), dt.time(), tzinfo=dt.timezone.utc)
    total_users = n_users + n_bots
    return EventPlan(
        catalog=plan_catalog(cfg, seed), seed=seed, n_users=n_users, n_bots=n_bots, bot_events=bot_events,
        bot_events_per_minute=mess.bot_events_per_minute,
        user_ids=Permutation.create(seed, "generate/user.ids", total_users), user_id_width=len(str(total_users)),
        alpha=cfg.user_activity_alpha, activity_scale=scale, max_events_per_user=cfg.max_events_per_user,
        organic_target=organic_target, window_start=int(start.timestamp()), window_seconds=cfg.days * 86_400,
        session_break_rate=1.0 / cfg.session_items_mean, stickiness=cfg.session_category_stickiness,
        view_to_cart=cfg.view_to_cart_rate, cart_to_purchase=cfg.cart_to_purchase_rate,
        duplicate_rate=mess.duplicate_rate, near_duplicate_rate=mess.near_duplicate_rate,
        bad_row_rate=mess.bad_row_rate, return_rate=mess.return_rate,
        missing_session_id_rate=mess.missing_session_id_rate,
    )


def _purchase_share(view_to_cart: float, cart_to_purchase: float) -> float:
    """Expected share of purchase events among funnel events (an interaction is 1-3 events)."""
    carts = view_to_cart
    purchases = view_to_cart * cart_to_purchase
    return purchases / (1.0 + carts + purchases)


def _activity_scale(weights: np.ndarray, target: float, cap: int) -> float:
    """The ``s`` with ``sum(min(s * w, cap)) == target`` (bisection; the sum is monotone in s)."""
    low, high = 0.0, target / max(weights.sum(), 1e-300)
    while np.minimum(high * weights, cap).sum() < target:
        low, high = high, high * 2.0
    for _ in range(80):
        middle = 0.5 * (low + high)
        if np.minimum(middle * weights, cap).sum() < target:
            low = middle
        else:
            high = middle
    return high


# --------------------------------------------------------------------------------------------
# Pure functions of the plan, shared by events and items


def pareto_weights(seed: int, users: np.ndarray, alpha: float) -> np.ndarray:
    """Pareto(alpha, x_min=1) activity weight of each user (inverse CDF of a keyed uniform)."""
    u = uniform(seed, "user.activity", entity_keys(users))
    return (1.0 - u) ** (-1.0 / alpha)


@functools.lru_cache(maxsize=8)
def _zipf_table(n_items: int, n_categories: int, exponent: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-category Zipf CDFs, concatenated: category ``c`` spans the values ``(c, c + 1]``.

    Returns (cdf, item index at each position, end position of each category). Cached per worker
    process: it depends only on the catalog's shape.
    """
    cdfs, items, ends = [], [], []
    for c in range(n_categories):
        ranks = np.arange(c, n_items, n_categories) // n_categories
        w = 1.0 / (ranks + 1.0) ** exponent
        cdfs.append(c + np.cumsum(w) / w.sum())
        items.append(ranks * n_categories + c)
        ends.append(sum(len(x) for x in items))
    return np.concatenate(cdfs), np.concatenate(items).astype(np.int64), np.array(ends, dtype=np.int64)


def zipf_items(catalog: CatalogPlan, category: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Item index drawn with Zipf popularity inside each row's category."""
    cumulative, items, ends = _zipf_table(catalog.n_items, catalog.n_categories, catalog.zipf_exponent)
    position = np.searchsorted(cumulative, category + u, side="right")
    return items[np.minimum(position, ends[category] - 1)]


def category_cdf(catalog: CatalogPlan) -> np.ndarray:
    """Cumulative shares of attention of the catalog's categories."""
    return cdf([c.weight for c in catalog.categories])


def item_list_prices(catalog: CatalogPlan, items: np.ndarray) -> np.ndarray:
    """The catalog price of each item index: lognormal per category, shop-style rounding.

    A pure function of (seed, item index), so events and the catalog agree without a join.
    """
    items = np.asarray(items, dtype=np.int64)
    category = items % catalog.n_categories
    median = np.array([c.price_median for c in catalog.categories])[category]
    sigma = np.array([c.price_sigma for c in catalog.categories])[category]
    z = np.clip(normal(catalog.seed, "item.price", entity_keys(items)), -3.5, 3.5)
    raw = median * np.exp(sigma * z)
    return np.where(raw >= 10.0, np.ceil(raw) - 0.01, np.maximum(np.round(raw, 1) - 0.01, 0.49)).round(2)

