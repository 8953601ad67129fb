"""The synthetic shop's event simulator: numpy only, one dict of equal-length arrays per chunk of users.

:func:`simulate_user_events` turns a chunk of user indices into their whole histories (sessions,
items, timestamps, planted mess). Every draw is keyed (:mod:`recaug_spark.synthetic.draws`): users
by their index, sessions by (user, session index), events by (user, event index), so a chunk of
users gives the same rows whatever else is in it.

Model, per organic user ``u``:

* events ``n_u`` ~ Pareto(``user_activity_alpha``) scaled so that the total hits the organic
  target, capped at ``max_events_per_user`` (stochastic rounding);
* a country (with its UTC offset), a preferred device, a primary and a secondary category;
* a sequence of item interactions, each one a view, a view → cart, or a view → cart → purchase
  (``view_to_cart_rate``, ``cart_to_purchase_rate``); interactions are cut into sessions of
  ``session_items_mean`` interactions on average;
* a session picks a category (primary 60%, secondary 25%, any 15%); each interaction stays in it
  with probability ``session_category_stickiness``; the item is drawn from the category with Zipf
  popularity (``zipf_exponent``);
* a session starts on a uniform day at a local hour with an evening peak, converted to UTC by the
  country's offset; sessions of one user never overlap and are at least 35 minutes apart, events
  inside a session are 20 s to 20 min apart, so re-sessionizing with a 30 minute gap recovers the
  source sessions;
* prices: each category has a lognormal list-price distribution; an event shows the item's list
  price, sometimes discounted; purchases share one order id per session; a purchase is returned
  (a ``return`` event with the same order id, 1-30 days later) with probability ``return_rate``.

Planted mess (:class:`recaug_spark.config.MessConfig`), counted exactly by
:func:`recaug_spark.stages.generate.run_generate` under ``counts['planted.*']`` and, with
``with_labels=True``, named row by row in a ``planted`` column:

* ``duplicate``: an exact copy of an organic row;
* ``near_duplicate``: a copy 1-5 seconds later (same user, item, event type, session, order);
* ``bot``: bot users viewing the catalog in id order at ``bot_events_per_minute``;
* one of :data:`~recaug_spark.synthetic.vocabulary.BAD_KINDS` (the row keeps every other field
  valid): ``ts_unparsable``, ``ts_future`` (year 2096), ``ts_too_old`` (year 1972),
  ``user_id_missing``, ``item_id_missing``, ``item_id_unknown`` (not in the catalog),
  ``price_not_positive``, ``price_not_numeric``, ``quantity_negative``, ``quantity_not_numeric``;
* items: ``missing_price`` (null catalog price: events still carry prices, so it can be imputed)
  and ``messy_text`` (upper-cased or padded title, HTML in the description).

Organic rows never look like mess: no two organic rows share user, item and event type within
10 seconds, and no organic row is invalid. Returns and source sessions with a null
``session_id`` (``missing_session_id_rate``) are legitimate and not labelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recaug_spark.synthetic.draws import bits, cdf, entity_keys, integers, normal, pick, uniform
from recaug_spark.synthetic.plan import EventPlan, category_cdf, item_list_prices, pareto_weights, zipf_items
from recaug_spark.synthetic.vocabulary import (
    BAD_KINDS,
    BOT_DEVICE,
    COUNTRIES,
    DEVICES,
    HOUR_WEIGHTS,
    PLANTED_BAD0,
    PLANTED_BOT,
    PLANTED_DUPLICATE,
    PLANTED_NEAR_DUPLICATE,
)

# The arrays of one chunk of events: internal codes, numbers, and the (key, draw) of each event.
EVENT_ARRAYS = ("user", "item", "etype", "ts", "quantity", "price", "session", "session_null", "order",
                "order_null", "country", "device", "planted", "key", "draw")

_MIN_EVENT_GAP_S = 20  # > clean.near_duplicate_seconds, so organic rows never look like near-duplicates
_MAX_EVENT_GAP_S = 1200  # < clean.session_gap_minutes
_MIN_SESSION_GAP_S = 35 * 60  # > clean.session_gap_minutes
_PRIMARY_SHARE, _SECONDARY_SHARE = 0.60, 0.25
_DEVICE_LOYALTY = 0.7
_DISCOUNT_RATE = 0.15

_COUNTRY_CDF = cdf([c[1] for c in COUNTRIES])
_COUNTRY_OFFSET_S = np.array([int(c[2] * 3600) for c in COUNTRIES], dtype=np.int64)
_DEVICE_CDF = cdf([d[1] for d in DEVICES])
_HOUR_CDF = cdf(HOUR_WEIGHTS)


def simulate_user_events(users: np.ndarray, plan: EventPlan) -> dict[str, np.ndarray]:
    """Numeric event arrays (internal codes) of the given user indices: organic users then bots.

    Pure numpy, no Spark: the unit of work of :func:`recaug_spark.stages.generate.generate_events`.
    Items are public indices (``-1`` = missing), ``ts`` is seconds after the window start,
    ``quantity`` 0 means null.
    """
    users = np.asarray(users, dtype=np.int64)
    organic = users[users < plan.n_users]
    bots = users[users >= plan.n_users]
    parts = []
    if len(organic):
        parts.append(_simulate_organic(organic, plan))
    if len(bots):
        parts.append(_simulate_bots(bots, plan))
    if not parts:
        return {name: np.zeros(0, dtype=np.uint64 if name in ("session", "order", "key", "draw") else np.int64)
                for name in EVENT_ARRAYS}
    return _concat(parts)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts]) for name in EVENT_ARRAYS}


# --------------------------------------------------------------------------------------------
# Organic users: profiles → interaction slots → sessions → items → funnel events → mess


def _simulate_organic(users: np.ndarray, plan: EventPlan) -> dict[str, np.ndarray]:
    """Every event of a chunk of organic users (see the module docstring for the model)."""
    people = _draw_users(users, plan)
    slots = _interaction_slots(people, plan)
    sessions = _draw_sessions(people, slots, plan)
    item, quantity, price = _slot_items(slots, sessions, plan)
    funnel = _expand_funnel(people, slots, sessions)
    ts = _event_times(funnel, sessions, plan)
    step, slot, session = funnel.step, funnel.slot, funnel.session
    events = {
        "user": users[funnel.user], "item": item[slot], "etype": step, "ts": ts,
        "quantity": np.where(step == 0, 0, quantity[slot]), "price": price[slot],
        "session": sessions.id_hash[session], "session_null": sessions.id_null[session],
        "order": sessions.order_hash[session], "order_null": step < 2, "country": people.country[funnel.user],
        "device": sessions.device[session], "planted": np.zeros(len(step), dtype=np.int64),
        "key": funnel.key, "draw": funnel.j.astype(np.uint64),
    }
    in_window = ts < plan.window_seconds
    return _plant_event_mess({name: values[in_window] for name, values in events.items()}, plan)


@dataclass(frozen=True)
class _Users:
    """One chunk of organic users: rng keys, event budgets and profiles (one entry per user)."""

    keys: np.ndarray
    events: np.ndarray  # n_u
    country: np.ndarray
    primary: np.ndarray  # category
    secondary: np.ndarray  # category
    device: np.ndarray  # favourite


def _draw_users(users: np.ndarray, plan: EventPlan) -> _Users:
    """Each user's event budget (scaled Pareto, stochastic rounding), country, categories, device."""
    seed = plan.seed
    keys = entity_keys(users)
    lam = np.minimum(plan.activity_scale * pareto_weights(seed, users, plan.alpha), plan.max_events_per_user)
    n = (np.floor(lam) + (uniform(seed, "user.rounding", keys) < lam - np.floor(lam))).astype(np.int64)
    categories = category_cdf(plan.catalog)
    return _Users(
        keys=keys, events=n, country=pick(_COUNTRY_CDF, uniform(seed, "user.country", keys)),
        primary=pick(categories, uniform(seed, "user.primary", keys)),
        secondary=pick(categories, uniform(seed, "user.secondary", keys)),
        device=pick(_DEVICE_CDF, uniform(seed, "user.device", keys)),
    )


@dataclass(frozen=True)
class _Slots:
    """Interaction slots of a chunk of users, in (user, slot) order; each slot is 1-3 funnel events."""

    user: np.ndarray  # position of the slot's user in the chunk
    j: np.ndarray  # slot index within its user
    key: np.ndarray  # the user's rng key
    event_start: np.ndarray  # index of the slot's first event within its user
    depth: np.ndarray  # 1 view, 2 view → cart, 3 view → cart → purchase


def _interaction_slots(people: _Users, plan: EventPlan) -> _Slots:
    """Up to n_u slots per user, each a view, view → cart or view → cart → purchase, cut where the
    user's events reach n_u (the last slot's funnel may be cut short)."""
    seed, n = plan.seed, people.events
    first_slot = np.cumsum(n) - n
    slot_user = np.repeat(np.arange(len(n)), n)
    slot_j = np.arange(len(slot_user), dtype=np.int64) - first_slot[slot_user]
    sk = people.keys[slot_user]
    carted = uniform(seed, "slot.cart", sk, slot_j) < plan.view_to_cart
    bought = carted & (uniform(seed, "slot.purchase", sk, slot_j) < plan.cart_to_purchase)
    depth = 1 + carted.astype(np.int64) + bought
    ends = np.cumsum(depth)
    event_start = ends - depth - (ends - depth)[first_slot[slot_user]]
    keep = event_start < n[slot_user]
    slot_user, event_start = slot_user[keep], event_start[keep]
    return _Slots(user=slot_user, j=slot_j[keep], key=sk[keep], event_start=event_start,
                  depth=np.minimum(depth[keep], n[slot_user] - event_start))


@dataclass(frozen=True)
class _Sessions:
    """The sessions of a chunk of users, in (user, session) order, and which session each slot is in."""

    opens: np.ndarray  # per slot: the slot opens a new session
    of_slot: np.ndarray  # per slot: its session's position
    user: np.ndarray  # position of the session's user in the chunk
    category: np.ndarray
    device: np.ndarray
    start: np.ndarray  # seconds after the window start (before separating one user's sessions)
    id_hash: np.ndarray
    id_null: np.ndarray
    order_hash: np.ndarray


def _draw_sessions(people: _Users, slots: _Slots, plan: EventPlan) -> _Sessions:
    """A new session at a user's first slot, then with probability 1/session_items_mean per slot."""
    seed = plan.seed
    opens = (slots.j == 0) | (uniform(seed, "slot.session", slots.key, slots.j) < plan.session_break_rate)
    user = slots.user[opens]
    j = _index_within_user(user)
    keys = people.keys[user]
    category, device = _session_context(people, user, keys, j, plan)
    return _Sessions(
        opens=opens, of_slot=np.cumsum(opens) - 1, user=user, category=category, device=device,
        start=_session_starts(people.country[user], keys, j, plan),
        id_hash=bits(seed, "session.id", keys, j),
        id_null=uniform(seed, "session.id.missing", keys, j) < plan.missing_session_id_rate,
        order_hash=bits(seed, "session.order", keys, j),
    )


def _index_within_user(user: np.ndarray) -> np.ndarray:
    """Each row's index among its user's rows (``user`` is grouped: one user's rows are adjacent)."""
    opens_user = np.r_[True, user[1:] != user[:-1]] if len(user) else np.zeros(0, bool)
    positions = np.arange(len(user), dtype=np.int64)
    return positions - np.maximum.accumulate(np.where(opens_user, positions, 0))


def _session_context(people: _Users, user: np.ndarray, keys: np.ndarray, j: np.ndarray,
                     plan: EventPlan) -> tuple[np.ndarray, np.ndarray]:
    """Each session's category (primary, secondary or any) and device (mostly the favourite)."""
    seed = plan.seed
    u = uniform(seed, "session.category", keys, j)
    any_category = pick(category_cdf(plan.catalog), uniform(seed, "session.category.any", keys, j))
    category = np.where(u < _PRIMARY_SHARE, people.primary[user],
                        np.where(u < _PRIMARY_SHARE + _SECONDARY_SHARE, people.secondary[user], any_category))
    device = np.where(uniform(seed, "session.device.loyal", keys, j) < _DEVICE_LOYALTY, people.device[user],
                      pick(_DEVICE_CDF, uniform(seed, "session.device", keys, j)))
    return category, device


def _session_starts(country: np.ndarray, keys: np.ndarray, j: np.ndarray, plan: EventPlan) -> np.ndarray:
    """A uniform day and a local hour with an evening peak, converted to UTC by the country's offset."""
    seed = plan.seed
    day = integers(seed, "session.day", keys, plan.window_seconds // 86_400, j)
    hour = pick(_HOUR_CDF, uniform(seed, "session.hour", keys, j))
    second = integers(seed, "session.second", keys, 3600, j)
    local = day * 86_400 + hour * 3600 + second
    return (local - _COUNTRY_OFFSET_S[country]) % plan.window_seconds


def _slot_items(slots: _Slots, sessions: _Sessions, plan: EventPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each slot's item (Zipf in a category sticky to the session's), quantity and shown price."""
    seed, catalog, sk, j = plan.seed, plan.catalog, slots.key, slots.j
    stray = uniform(seed, "slot.stray", sk, j) >= plan.stickiness
    category = np.where(stray, pick(category_cdf(catalog), uniform(seed, "slot.category", sk, j)),
                        sessions.category[sessions.of_slot])
    item = zipf_items(catalog, category, uniform(seed, "slot.item", sk, j))
    uq = uniform(seed, "slot.quantity", sk, j)
    quantity = 1 + (uq > 0.8).astype(np.int64) + (uq > 0.95)
    discounted = uniform(seed, "slot.discount", sk, j) < _DISCOUNT_RATE
    factor = np.where(discounted, 1.0 - (0.1 + 0.3 * uniform(seed, "slot.discount.size", sk, j)), 1.0)
    return item, quantity, np.round(item_list_prices(catalog, item) * factor, 2)


@dataclass(frozen=True)
class _Funnel:
    """The events of the slots, in (user, event) order: each slot expands into view (→ cart (→ purchase))."""

    slot: np.ndarray
    step: np.ndarray  # 0 view, 1 cart, 2 purchase: the event type code
    user: np.ndarray  # position of the event's user in the chunk
    j: np.ndarray  # event index within its user (the draw index of its event-level draws)
    key: np.ndarray  # the user's rng key
    session: np.ndarray  # position of the event's session
    opens_session: np.ndarray


def _expand_funnel(people: _Users, slots: _Slots, sessions: _Sessions) -> _Funnel:
    """One event per funnel step of each slot, in slot order."""
    depth = slots.depth
    slot = np.repeat(np.arange(len(depth)), depth)
    step = np.arange(int(depth.sum()), dtype=np.int64) - np.repeat(np.cumsum(depth) - depth, depth)
    user = slots.user[slot]
    return _Funnel(slot=slot, step=step, user=user, j=slots.event_start[slot] + step, key=people.keys[user],
                   session=sessions.of_slot[slot], opens_session=(step == 0) & sessions.opens[slot])


def _event_times(funnel: _Funnel, sessions: _Sessions, plan: EventPlan) -> np.ndarray:
    """Seconds after the window start: 20 s to 20 min between a session's events, and one user's
    sessions moved apart so that they never overlap (:func:`_separate_sessions`)."""
    gap = _MIN_EVENT_GAP_S + np.exp(np.log(40.0) + 0.9 * normal(plan.seed, "event.gap", funnel.key, funnel.j))
    gap = np.where(funnel.opens_session, 0, np.minimum(gap, _MAX_EVENT_GAP_S).astype(np.int64))
    elapsed = np.cumsum(gap)
    first_event = np.flatnonzero(funnel.opens_session)
    offset = elapsed - elapsed[first_event][funnel.session]
    last_event = np.append(first_event[1:], len(gap)) - 1
    start = _separate_sessions(sessions.user, sessions.start, offset[last_event])
    return start[funnel.session] + offset


def _separate_sessions(session_user: np.ndarray, start: np.ndarray, duration: np.ndarray) -> np.ndarray:
    """Session starts, pushed later where needed so one user's sessions never overlap.

    In time order, start'_k = max(start_k, end'_{k-1} + gap). With D_k the sum of (duration + gap)
    of the user's earlier sessions this is start'_k = D_k + max_{j<=k}(start_j - D_j): a running
    maximum, vectorized by offsetting each user's values far above the previous user's.
    """
    if len(start) == 0:
        return start
    order = np.lexsort((start, session_user))
    users, begin, span = session_user[order], start[order], duration[order] + _MIN_SESSION_GAP_S
    is_first = np.r_[True, users[1:] != users[:-1]]
    first = np.maximum.accumulate(np.where(is_first, np.arange(len(users)), 0))
    before = np.cumsum(span) - span
    earlier = before - before[first]
    lift = (np.cumsum(is_first) - 1) * np.int64(1 << 40)  # 35,000 years: > any start or span
    shifted = np.maximum.accumulate(begin - earlier + lift) - lift + earlier
    result = np.empty_like(start)
    result[order] = shifted
    return result


# --------------------------------------------------------------------------------------------
# Planted mess and bots


def _plant_event_mess(events: dict[str, np.ndarray], plan: EventPlan) -> dict[str, np.ndarray]:
    """Returns, duplicates, near-duplicates and bad rows for one chunk of organic events."""
    seed = plan.seed
    key, draw = events["key"], events["draw"]
    m = uniform(seed, "event.mess", key, draw)
    duplicate = m < plan.duplicate_rate
    near = (m >= plan.duplicate_rate) & (m < plan.duplicate_rate + plan.near_duplicate_rate)
    bad = (m >= plan.duplicate_rate + plan.near_duplicate_rate) & (
        m < plan.duplicate_rate + plan.near_duplicate_rate + plan.bad_row_rate)
    returns = _returns(events, bad, plan)  # of the rows as they were: a bad row is never returned
    events = _spoil(events, bad, integers(seed, "event.mess.kind", key, len(BAD_KINDS), draw), plan)
    copies = _rows(events, duplicate, PLANTED_DUPLICATE)
    nears = _rows(events, near, PLANTED_NEAR_DUPLICATE)
    nears["ts"] = nears["ts"] + 1 + integers(seed, "event.near.delay", nears["key"], 5, nears["draw"])
    return _concat([events, copies, nears, returns])


def _rows(events: dict[str, np.ndarray], mask: np.ndarray, planted: int) -> dict[str, np.ndarray]:
    """Copies of the rows under ``mask``, labelled ``planted``."""
    rows = {name: values[mask] for name, values in events.items()}
    rows["planted"] = np.full(len(rows["planted"]), planted, dtype=np.int64)
    return rows


def _returns(events: dict[str, np.ndarray], bad: np.ndarray, plan: EventPlan) -> dict[str, np.ndarray]:
    """A ``return`` event 1-30 days after some purchases (same order id, no session id)."""
    seed, key, draw = plan.seed, events["key"], events["draw"]
    returned = (events["etype"] == 2) & ~bad & (uniform(seed, "event.return", key, draw) < plan.return_rate)
    returned_ts = events["ts"] + 86_400 + integers(seed, "event.return.delay", key, 29 * 86_400, draw)
    returned &= returned_ts < plan.window_seconds
    returns = {name: values[returned] for name, values in events.items()}
    returns["etype"] = np.full(len(returns["etype"]), 3, dtype=np.int64)
    returns["ts"] = returned_ts[returned]
    returns["session_null"] = np.ones(len(returns["ts"]), dtype=bool)
    returns["item"] = plan.catalog.item_ids.forward(returns["item"])
    return returns


def _spoil(events: dict[str, np.ndarray], bad: np.ndarray, kind: np.ndarray, plan: EventPlan) -> dict[str, np.ndarray]:
    """The events with public item indices, and the numeric bad kinds planted in the ``bad`` rows (the
    text ones, such as an unparsable timestamp, are written by :func:`recaug_spark.synthetic.rows.events_to_arrow`)."""
    seed, catalog, key, draw = plan.seed, plan.catalog, events["key"], events["draw"]

    def planted(name: str) -> np.ndarray:
        return bad & (kind == BAD_KINDS.index(name))

    item = catalog.item_ids.forward(events["item"])
    unknown = catalog.n_items + integers(seed, "event.item.unknown", key, 10 ** catalog.id_width - catalog.n_items,
                                         draw)
    item = np.where(planted("item_id_unknown"), unknown, item)
    negative = uniform(seed, "event.price.negative", key, draw) < 0.5
    return events | {
        "planted": np.where(bad, PLANTED_BAD0 + kind, 0),
        "user": np.where(planted("user_id_missing"), -1, events["user"]),
        "item": np.where(planted("item_id_missing"), -1, item),
        "price": np.where(planted("price_not_positive"), np.where(negative, -events["price"], 0.0), events["price"]),
        "quantity": np.where(planted("quantity_negative"),
                             -1 - integers(seed, "event.quantity.negative", key, 3, draw), events["quantity"]),
    }


def _simulate_bots(bots: np.ndarray, plan: EventPlan) -> dict[str, np.ndarray]:
    """Bots: one long burst each, viewing the catalog in public-id order at a machine rate."""
    seed, catalog = plan.seed, plan.catalog
    keys = entity_keys(bots)
    count = plan.bot_events
    interval = 60.0 / plan.bot_events_per_minute
    span = int(count * interval) + 2
    start = integers(seed, "bot.start", keys, max(plan.window_seconds - span, 1))
    first_item = integers(seed, "bot.first_item", keys, catalog.n_items)
    bot = np.repeat(np.arange(len(bots)), count)
    j = np.tile(np.arange(count, dtype=np.int64), len(bots))
    jitter = uniform(seed, "bot.jitter", keys[bot], j)
    ts = start[bot] + np.floor((j + jitter) * interval).astype(np.int64)
    public_item = (first_item[bot] + j) % catalog.n_items
    item = catalog.item_ids.inverse(public_item)
    size = len(j)
    return {
        "user": bots[bot], "item": public_item, "etype": np.zeros(size, dtype=np.int64), "ts": ts,
        "quantity": np.zeros(size, dtype=np.int64), "price": item_list_prices(catalog, item),
        "session": bits(seed, "bot.session", keys)[bot], "session_null": np.zeros(size, bool),
        "order": np.zeros(size, dtype=np.uint64), "order_null": np.ones(size, bool),
        "country": pick(_COUNTRY_CDF, uniform(seed, "bot.country", keys))[bot],
        "device": np.full(size, BOT_DEVICE, dtype=np.int64), "planted": np.full(size, PLANTED_BOT, dtype=np.int64),
        "key": keys[bot], "draw": j.astype(np.uint64),
    }
