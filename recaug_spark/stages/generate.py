"""The embedded default shop: a realistic, messy clickstream and catalog generated inside Spark.

Why: every later stage needs data with the shape of a real shop (popular and long-tail items,
heavy and light users, coherent sessions, a view → cart → purchase funnel, returns) and with the
mess real sources carry (duplicates, bots, unparsable values), in known quantities, at any size
from 10^4 to 10^8 events, without downloading anything.

How it scales: nothing is generated on the driver. ``spark.range`` lays out user ids (or item
ids) over ``cfg.partitions`` partitions and ``mapInArrow`` turns each batch of ids into rows with
vectorized numpy: one user's whole history (sessions, items, timestamps, planted mess) is built in
the batch holding that user. The driver only computes one scalar (the activity scale that makes
the event count land on ``cfg.events``) and the small per-category Zipf tables.

Determinism: every draw comes from :mod:`recaug_spark.rng`, keyed by (seed, stream, entity id,
draw index): users by their index, sessions by (user, session index), events by (user, event
index), items by item index. No draw depends on a partition or batch, so the same seed gives the
same rows whatever ``cfg.partitions`` or Arrow batch size.

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

Planted mess (:class:`recaug_spark.config.MessConfig`), reported exactly by :func:`run_generate`
under ``counts['planted.*']`` and, with ``with_labels=True``, row by row in a ``planted`` column:

* ``duplicate``: an exact copy of an organic row;
* ``near_duplicate``: a copy 1-5 seconds later (same user, item, event type, session, order);
* ``bot``: bot users viewing the catalog in id order at ``bot_events_per_minute``;
* one of :data:`BAD_KINDS` (the row keeps every other field valid): ``ts_unparsable``,
  ``ts_future`` (year 2096), ``ts_too_old`` (year 1972), ``user_id_missing``, ``item_id_missing``,
  ``item_id_unknown`` (not in the catalog), ``price_not_positive``, ``price_not_numeric``,
  ``quantity_negative``, ``quantity_not_numeric``;
* items: ``missing_price`` (null catalog price: events still carry prices, so it can be imputed)
  and ``messy_text`` (upper-cased or padded title, HTML in the description).

Organic rows never look like mess: no two organic rows share user, item and event type within
10 seconds, and no organic row is invalid. Returns and source sessions with a null
``session_id`` (``missing_session_id_rate``) are legitimate and not labelled.

Example::

    cfg = load_config(overrides=["generate.events=20000"])
    events = generate_events(spark, cfg.generate, seed=cfg.run.seed)
    items = generate_items(spark, cfg.generate, seed=cfg.run.seed)
    result = run_generate(RunContext.create(spark, cfg))  # writes generated_events, generated_items
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import uuid
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recaug_spark import rng
from recaug_spark.config import ConfigError, GenerateConfig
from recaug_spark.runs import RunContext, StageResult
from recaug_spark.schemas import EVENT_TYPES, RAW_EVENT_FIELDS, RAW_ITEM_FIELDS

EVENTS_TABLE = "generated_events"
ITEMS_TABLE = "generated_items"

# --------------------------------------------------------------------------------------------
# Hand-made vocabularies: one entry per category, in the order `GenerateConfig.categories` takes
# them. `weight` is the category's share of attention, prices are lognormal(ln median, sigma).


@dataclass(frozen=True)
class Category:
    name: str
    weight: float
    price_median: float
    price_sigma: float
    brands: tuple[str, ...]
    adjectives: tuple[str, ...]
    materials: tuple[str, ...]
    nouns: tuple[str, ...]
    sizes: tuple[str, ...]
    uses: tuple[str, ...]
    features: tuple[str, ...]


CATEGORIES: tuple[Category, ...] = (
    Category(
        "running", 1.3, 60.0, 0.55,
        ("Stridewell", "Pacefield", "Veloxa", "Roadrun", "Tempo Labs", "Kinetra"),
        ("lightweight", "cushioned", "breathable", "reflective", "responsive", "trail-ready", "seamless", "waterproof"),
        ("mesh", "merino", "recycled polyester", "nylon", "EVA foam"),
        ("running shoes", "racing flats", "trail shoes", "running socks", "running shorts", "running jacket",
         "hydration vest", "compression tights", "running cap"),
        ("XS", "S", "M", "L", "XL", "40", "42", "44"),
        ("road running", "marathon training", "trail runs", "interval sessions"),
        ("Breathable upper keeps you cool on long runs.", "Reflective details for early mornings.",
         "Flat seams prevent chafing.", "Grippy outsole for wet roads."),
    ),
    Category(
        "camping", 1.0, 80.0, 0.8,
        ("Trailpeak", "Northcairn", "Campfield", "Ridgeway", "Embercrest", "Alpenhut"),
        ("waterproof", "ultralight", "insulated", "packable", "windproof", "four-season", "compact", "rugged"),
        ("ripstop nylon", "canvas", "aluminium", "goose down", "polyester"),
        ("tent", "sleeping bag", "camping stove", "headlamp", "sleeping pad", "camp chair", "lantern",
         "trekking backpack", "hiking boots"),
        ("1-person", "2-person", "3-person", "35 L", "50 L", "42", "one size"),
        ("weekend camping", "alpine treks", "festival trips", "bikepacking"),
        ("Packs down to the size of a water bottle.", "Taped seams keep the rain out.",
         "Sets up in under five minutes.", "Rated for nights below freezing."),
    ),
    Category(
        "kitchen", 1.4, 30.0, 0.7,
        ("Cucina Nova", "Hearthware", "Panfield", "Saltbridge", "Copperleaf", "Kitchly"),
        ("non-stick", "dishwasher-safe", "stackable", "heavy-duty", "ergonomic", "induction-ready", "classic"),
        ("stainless steel", "cast iron", "ceramic", "bamboo", "borosilicate glass"),
        ("frying pan", "saucepan", "chef's knife", "cutting board", "mixing bowl set", "coffee grinder",
         "french press", "baking tray", "spice rack"),
        ("20 cm", "24 cm", "28 cm", "1 L", "2 L", "set of 3"),
        ("everyday cooking", "weekend baking", "meal prep", "small kitchens"),
        ("Heats evenly on every hob.", "Comfortable handle stays cool.", "Easy to clean by hand or machine.",
         "Made to last for years."),
    ),
    Category(
        "garden", 0.9, 25.0, 0.8,
        ("Greenhollow", "Bloomwick", "Terrafirm", "Sowright", "Fernside"),
        ("weatherproof", "foldable", "self-watering", "frost-resistant", "heavy-duty", "compact", "solar"),
        ("galvanised steel", "terracotta", "teak", "recycled plastic", "jute"),
        ("garden hose", "pruning shears", "planter", "raised bed", "watering can", "garden kneeler", "seed tray",
         "compost bin", "string lights"),
        ("small", "medium", "large", "15 m", "30 m", "10 L"),
        ("balcony gardens", "vegetable patches", "patio planting", "allotments"),
        ("Survives a winter outdoors.", "Sharp blades for clean cuts.", "UV-stable colour that will not fade.",
         "Drains freely to protect roots."),
    ),
    Category(
        "home", 1.2, 40.0, 0.75,
        ("Lumenhaus", "Nordly", "Casa Verde", "Woolhaven", "Ambra"),
        ("minimalist", "handwoven", "dimmable", "scented", "velvet", "rustic", "modern"),
        ("oak", "linen", "cotton", "wool", "brass", "glass"),
        ("throw blanket", "table lamp", "cushion cover", "scented candle", "wall mirror", "photo frame", "rug",
         "vase", "storage basket"),
        ("40x40 cm", "60x90 cm", "120x170 cm", "small", "large"),
        ("living rooms", "cosy bedrooms", "gift giving", "rented flats"),
        ("Adds warmth to any room.", "Soft to the touch.", "Pairs with neutral interiors.",
         "Made in a family workshop."),
    ),
    Category(
        "fitness", 1.1, 35.0, 0.8,
        ("Ironpulse", "Flexcore", "Gymora", "Liftwell", "Zenflow"),
        ("adjustable", "non-slip", "anti-burst", "padded", "portable", "eco-friendly", "extra-thick"),
        ("natural rubber", "TPE", "neoprene", "steel", "cork"),
        ("yoga mat", "kettlebell", "resistance bands", "dumbbell set", "foam roller", "jump rope", "pull-up bar",
         "gym gloves", "exercise ball"),
        ("4 kg", "8 kg", "12 kg", "6 mm", "10 mm", "S", "M", "L"),
        ("home workouts", "yoga practice", "strength training", "physio routines"),
        ("Grippy surface even when sweaty.", "Fits in a small flat.", "Colour-coded by weight.",
         "Built for daily use."),
    ),
    Category(
        "cycling", 0.8, 50.0, 0.9,
        ("Velocita", "Chainline", "Spokeworks", "Cadenza", "Ridgewheel"),
        ("aerodynamic", "rechargeable", "puncture-resistant", "lightweight", "high-visibility", "tubeless-ready"),
        ("carbon", "aluminium", "Lycra", "silicone", "TPU"),
        ("bike helmet", "bike light set", "cycling jersey", "bike lock", "saddle bag", "floor pump",
         "cycling gloves", "inner tube", "bottle cage"),
        ("S", "M", "L", "700x25c", "29 inch", "one size"),
        ("commuting", "gravel rides", "road racing", "family rides"),
        ("Bright enough to be seen in daylight.", "Charges over USB-C.", "Fits most frames.",
         "Vents keep your head cool on climbs."),
    ),
    Category(
        "audio", 1.0, 70.0, 0.9,
        ("Sonique", "Bassline", "Auralis", "Echofield", "Tonewood"),
        ("wireless", "noise-cancelling", "water-resistant", "portable", "studio-grade", "foldable"),
        ("aluminium", "memory foam", "walnut", "fabric", "ABS plastic"),
        ("headphones", "earbuds", "bluetooth speaker", "soundbar", "turntable", "microphone", "DAC amplifier",
         "smart speaker"),
        ("black edition", "white edition", "mini", "standard", "pro"),
        ("commuting", "home listening", "podcast recording", "parties"),
        ("Up to 30 hours of battery.", "Pairs with two devices at once.", "Rich bass at any volume.",
         "Rated IPX5 against splashes."),
    ),
    Category(
        "books", 0.9, 15.0, 0.5,
        ("Penfold Press", "Lanternhouse", "Greyquill", "Marrow & Finch", "Octavo"),
        ("illustrated", "bestselling", "annotated", "award-winning", "pocket", "collector's"),
        ("paperback", "hardcover", "cloth-bound", "recycled paper"),
        ("novel", "cookbook", "travel guide", "field guide", "poetry collection", "biography", "atlas",
         "graphic novel", "workbook"),
        ("paperback", "hardcover", "large print", "boxed set"),
        ("long train rides", "curious kids", "rainy weekends", "book clubs"),
        ("A modern classic.", "With over 200 colour photographs.", "Translated for the first time.",
         "Includes a reading guide."),
    ),
    Category(
        "toys", 0.8, 25.0, 0.7,
        ("Playmoor", "Tinkertown", "Brickly", "Wonderkin", "Jollyjack"),
        ("educational", "wooden", "remote-control", "glow-in-the-dark", "magnetic", "plush", "stackable"),
        ("beech wood", "recycled plastic", "organic cotton", "felt", "cardboard"),
        ("building blocks", "puzzle", "board game", "stuffed bear", "toy car", "dollhouse", "kite",
         "marble run", "science kit"),
        ("3+ years", "6+ years", "8+ years", "100 pieces", "500 pieces", "family size"),
        ("rainy afternoons", "birthday gifts", "family game nights", "curious builders"),
        ("Sanded smooth and painted with safe colours.", "Hours of screen-free fun.",
         "Encourages problem solving.", "Grows with your child."),
    ),
    Category(
        "beauty", 1.1, 22.0, 0.6,
        ("Aurelle", "Maison Lys", "Dewdrop", "Vervain", "Solenne"),
        ("hydrating", "fragrance-free", "vegan", "mattifying", "nourishing", "brightening", "gentle"),
        ("shea butter", "hyaluronic acid", "argan oil", "aloe vera", "vitamin C"),
        ("face cream", "serum", "shampoo", "conditioner", "lip balm", "body lotion", "cleanser", "hair oil",
         "sunscreen"),
        ("30 ml", "50 ml", "100 ml", "250 ml", "travel size"),
        ("sensitive skin", "daily routines", "dry hair", "sunny holidays"),
        ("Absorbs quickly without residue.", "Dermatologist tested.", "No parabens or sulphates.",
         "A little goes a long way."),
    ),
    Category(
        "pets", 0.7, 20.0, 0.7,
        ("Pawsome", "Tailwind", "Furrow & Co", "Barkley", "Whiskerly"),
        ("chew-proof", "orthopedic", "washable", "reflective", "grain-free", "interactive"),
        ("nylon", "memory foam", "natural rubber", "fleece", "stainless steel"),
        ("dog bed", "cat tree", "dog leash", "food bowl", "scratching post", "dog harness", "cat toy",
         "grooming brush", "pet carrier"),
        ("XS", "S", "M", "L", "XL"),
        ("playful puppies", "older dogs", "indoor cats", "long walks"),
        ("Easy to wipe clean.", "Tested by our office dogs.", "Non-toxic materials only.",
         "Keeps pets busy for hours."),
    ),
    Category(
        "office", 0.6, 30.0, 0.9,
        ("Deskcraft", "Papermint", "Inkwell", "Ledgerline", "Focusly"),
        ("ergonomic", "refillable", "dot-grid", "adjustable", "cable-free", "recycled"),
        ("bamboo", "recycled paper", "aluminium", "felt", "leather"),
        ("notebook", "desk organiser", "fountain pen", "monitor stand", "desk lamp", "planner", "laptop sleeve",
         "whiteboard", "ergonomic mouse"),
        ("A5", "A4", "13 inch", "15 inch", "pack of 10"),
        ("home offices", "students", "focused work", "note takers"),
        ("Keeps your desk tidy.", "Lies flat when open.", "Raises your screen to eye level.",
         "A gift any colleague will use."),
    ),
    Category(
        "tools", 0.7, 45.0, 0.9,
        ("Forgemark", "Torquex", "Handyman Pro", "Steelbridge", "Boltwise"),
        ("cordless", "magnetic", "heavy-duty", "precision", "compact", "insulated"),
        ("chrome vanadium", "hardened steel", "fibreglass", "rubberised grip", "titanium-coated"),
        ("drill driver", "screwdriver set", "hammer", "tape measure", "spirit level", "socket set", "utility knife",
         "tool box", "work light"),
        ("12 V", "18 V", "5 m", "8 m", "32-piece", "60-piece"),
        ("DIY projects", "flat-pack furniture", "workshop use", "quick repairs"),
        ("Battery lasts a full working day.", "Lifetime guarantee.", "Comfortable grip reduces fatigue.",
         "Fits in any kitchen drawer."),
    ),
    Category(
        "swimming", 0.5, 28.0, 0.6,
        ("Aquarelle", "Finwave", "Poolside", "Tidemark", "Laneline"),
        ("chlorine-resistant", "anti-fog", "quick-dry", "streamlined", "UV-protective", "adjustable"),
        ("silicone", "polyester", "neoprene", "microfibre", "polycarbonate"),
        ("swimsuit", "swim goggles", "swim cap", "swim towel", "kickboard", "swim fins", "wetsuit",
         "pull buoy", "swim shorts"),
        ("XS", "S", "M", "L", "XL", "one size"),
        ("lap swimming", "open water", "swim lessons", "beach holidays"),
        ("Will not fade in chlorine.", "Leak-free seal.", "Dries in minutes.", "Designed with club swimmers."),
    ),
    Category(
        "baby", 0.5, 35.0, 0.8,
        ("Little Oak", "Cradlewell", "Snugglebee", "Tiny Steps", "Nestling"),
        ("organic", "hypoallergenic", "foldable", "machine-washable", "BPA-free", "soft-touch"),
        ("organic cotton", "bamboo viscose", "silicone", "beech wood", "muslin"),
        ("baby blanket", "sleep suit", "teether", "baby carrier", "bottle set", "changing mat", "bib set",
         "play gym", "night light"),
        ("newborn", "0-3 months", "3-6 months", "6-12 months", "one size"),
        ("newborns", "baby showers", "night feeds", "first adventures"),
        ("Gentle on delicate skin.", "Tested to EU safety standards.", "Gets softer with every wash.",
         "Loved by tired parents."),
    ),
)

COLORS = ("black", "white", "navy", "graphite", "red", "forest green", "sand", "sky blue", "orange", "grey",
          "olive", "burgundy")

# (ISO code, share of users, UTC offset in hours; one offset per country, no daylight saving)
COUNTRIES = (
    ("US", 0.28, -6.0), ("DE", 0.12, 1.0), ("GB", 0.10, 0.0), ("FR", 0.08, 1.0), ("ES", 0.05, 1.0),
    ("IT", 0.05, 1.0), ("CA", 0.05, -5.0), ("JP", 0.05, 9.0), ("NL", 0.04, 1.0), ("PL", 0.04, 1.0),
    ("AU", 0.04, 10.0), ("BR", 0.04, -3.0), ("SE", 0.03, 1.0), ("IN", 0.03, 5.5),
)
DEVICES = (("mobile", 0.55), ("desktop", 0.35), ("tablet", 0.10))
BOT_DEVICE = 1  # desktop
# Relative activity by local hour: quiet nights, a lunch bump, an evening peak around 20:00.
HOUR_WEIGHTS = (2.0, 1.2, 0.7, 0.5, 0.4, 0.5, 1.0, 2.0, 3.0, 3.5, 3.8, 4.0, 4.3, 4.0, 3.8, 3.8, 4.0, 4.5, 5.5,
                6.8, 7.5, 7.0, 5.5, 3.5)

BAD_KINDS = (
    "ts_unparsable", "ts_future", "ts_too_old", "user_id_missing", "item_id_missing", "item_id_unknown",
    "price_not_positive", "price_not_numeric", "quantity_negative", "quantity_not_numeric",
)
_UNPARSABLE_TS = ("2024-13-45T99:99:99Z", "yesterday", "N/A", "31/02/2024 25:61", "0000-00-00 00:00:00")
_NOT_NUMERIC_QUANTITY = ("abc", "two", "1 pc", "N/A")
_NOT_NUMERIC_PRICE = ("abc", "N/A", "free", "call us")

# Labels of the `planted` column (code → name); code 0 (organic, returns) is null.
_DUPLICATE, _NEAR_DUPLICATE, _BOT, _BAD0 = 1, 2, 3, 10
EVENT_LABELS = ("duplicate", "near_duplicate", "bot", *BAD_KINDS)
ITEM_LABELS = ("missing_price", "messy_text")

_MIN_EVENT_GAP_S = 20  # > clean.near_duplicate_seconds, so organic rows never look like near-duplicates
_MAX_EVENT_GAP_S = 1200  # < clean.session_gap_minutes
_MIN_SESSION_GAP_S = 35 * 60  # > clean.session_gap_minutes
_EVENTS_PER_CHUNK = 250_000  # bounds worker memory whatever the Arrow batch size
_PRIMARY_SHARE, _SECONDARY_SHARE = 0.60, 0.25
_DEVICE_LOYALTY = 0.7
_DISCOUNT_RATE = 0.15
_KEY_SALT = np.uint64(0x5851F42D4C957F2D)


def _check_vocabulary() -> None:
    for category in CATEGORIES:
        for field_name in ("brands", "adjectives", "materials", "nouns", "sizes", "uses", "features"):
            words = getattr(category, field_name)
            if not words or any('"' in w or "\\" in w for w in words):
                raise ValueError(f"vocabulary {category.name}.{field_name} is empty or holds a quote/backslash")


_check_vocabulary()


# --------------------------------------------------------------------------------------------
# The plan: everything a worker needs, computed once on the driver (small, picklable).


@dataclass(frozen=True)
class _Permutation:
    """An affine bijection of [0, size): hides the popularity rank in the public ids."""

    size: int
    a: int
    b: int
    a_inverse: int

    @classmethod
    def create(cls, seed: int, stream: str, size: int) -> "_Permutation":
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
    item_ids: _Permutation
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
    user_ids: _Permutation
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
        item_ids=_Permutation.create(seed, "generate/item.ids", cfg.items), id_width=len(str(cfg.items)) + 1,
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
    weights = _pareto_weights(seed, np.arange(n_users, dtype=np.int64), cfg.user_activity_alpha)
    scale = _activity_scale(weights, organic_target, cfg.max_events_per_user)
    start = dt.datetime.combine(dt.date.fromisoformat(cfg.start_date), dt.time(), tzinfo=dt.timezone.utc)
    total_users = n_users + n_bots
    return EventPlan(
        catalog=plan_catalog(cfg, seed), seed=seed, n_users=n_users, n_bots=n_bots, bot_events=bot_events,
        bot_events_per_minute=mess.bot_events_per_minute,
        user_ids=_Permutation.create(seed, "generate/user.ids", total_users), user_id_width=len(str(total_users)),
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
# Keyed draws


def entity_keys(ids: np.ndarray) -> np.ndarray:
    """The rng key of each entity index: its splitmix64 hash, not the index itself.

    ``rng.random_bits`` adds ``mix64(key ^ base)`` and ``mix64(draw + base)``. With small integer
    keys and draws, ``key ^ base`` often equals ``d + base`` for some small ``d``, so different
    (key, draw) pairs share numbers: (user a, session b) and (user b, session a) got the same
    session id. Hashed keys are spread over 64 bits and never meet a small draw index.
    """
    return rng.mix64(np.asarray(ids, dtype=np.int64).astype(np.uint64) ^ _KEY_SALT)


def _uniform(seed: int, stream: str, keys: np.ndarray, draw: np.ndarray | int = 0) -> np.ndarray:
    return rng.uniform(seed, f"generate/{stream}", keys, draw)


def _integers(seed: int, stream: str, keys: np.ndarray, high, draw: np.ndarray | int = 0) -> np.ndarray:
    return rng.integers(seed, f"generate/{stream}", keys, high, draw)


def _normal(seed: int, stream: str, keys: np.ndarray, draw: np.ndarray | int = 0) -> np.ndarray:
    """Standard normal draws (Box-Muller on two keyed uniforms)."""
    u1 = 1.0 - _uniform(seed, f"{stream}/a", keys, draw)  # (0, 1]: log is finite
    u2 = _uniform(seed, f"{stream}/b", keys, draw)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _pick(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Categorical draw: the index whose cumulative share first exceeds ``u``."""
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def _cdf(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return np.cumsum(w) / w.sum()


_COUNTRY_CDF = _cdf([c[1] for c in COUNTRIES])
_COUNTRY_OFFSET_S = np.array([int(c[2] * 3600) for c in COUNTRIES], dtype=np.int64)
_DEVICE_CDF = _cdf([d[1] for d in DEVICES])
_HOUR_CDF = _cdf(HOUR_WEIGHTS)


def _pareto_weights(seed: int, users: np.ndarray, alpha: float) -> np.ndarray:
    """Pareto(alpha, x_min=1) activity weight of each user (inverse CDF of a keyed uniform)."""
    u = _uniform(seed, "user.activity", entity_keys(users))
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


def _zipf_items(catalog: CatalogPlan, category: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Item index drawn with Zipf popularity inside each row's category."""
    cdf, items, ends = _zipf_table(catalog.n_items, catalog.n_categories, catalog.zipf_exponent)
    position = np.searchsorted(cdf, category + u, side="right")
    return items[np.minimum(position, ends[category] - 1)]


def _category_cdf(catalog: CatalogPlan) -> np.ndarray:
    return _cdf([c.weight for c in catalog.categories])


def item_list_prices(catalog: CatalogPlan, items: np.ndarray) -> np.ndarray:
    """The catalog price of each item index: lognormal per category, shop-style rounding.

    A pure function of (seed, item index), so events and the catalog agree without a join.
    """
    items = np.asarray(items, dtype=np.int64)
    category = items % catalog.n_categories
    median = np.array([c.price_median for c in catalog.categories])[category]
    sigma = np.array([c.price_sigma for c in catalog.categories])[category]
    z = np.clip(_normal(catalog.seed, "item.price", entity_keys(items)), -3.5, 3.5)
    raw = median * np.exp(sigma * z)
    return np.where(raw >= 10.0, np.ceil(raw) - 0.01, np.maximum(np.round(raw, 1) - 0.01, 0.49)).round(2)


# --------------------------------------------------------------------------------------------
# Event simulation (numpy only: one dict of equal-length arrays per chunk of users)

_EVENT_ARRAYS = ("user", "item", "etype", "ts", "quantity", "price", "session", "session_null", "order",
                 "order_null", "country", "device", "planted", "key", "draw")


def _simulate_organic(users: np.ndarray, plan: EventPlan) -> dict[str, np.ndarray]:
    """Every event of a chunk of organic users (see the module docstring for the model)."""
    seed, catalog = plan.seed, plan.catalog
    keys = entity_keys(users)
    k = len(users)
    lam = np.minimum(plan.activity_scale * _pareto_weights(seed, users, plan.alpha), plan.max_events_per_user)
    n = (np.floor(lam) + (_uniform(seed, "user.rounding", keys) < lam - np.floor(lam))).astype(np.int64)
    country = _pick(_COUNTRY_CDF, _uniform(seed, "user.country", keys))
    category_cdf = _category_cdf(catalog)
    primary = _pick(category_cdf, _uniform(seed, "user.primary", keys))
    secondary = _pick(category_cdf, _uniform(seed, "user.secondary", keys))
    favourite_device = _pick(_DEVICE_CDF, _uniform(seed, "user.device", keys))

    # Interaction slots: up to n_u per user (each is 1-3 events), cut where the user's events reach n_u.
    first_slot = np.cumsum(n) - n
    slot_user = np.repeat(np.arange(k), n)
    slot_j = np.arange(len(slot_user), dtype=np.int64) - first_slot[slot_user]
    sk = keys[slot_user]
    carted = _uniform(seed, "slot.cart", sk, slot_j) < plan.view_to_cart
    bought = carted & (_uniform(seed, "slot.purchase", sk, slot_j) < plan.cart_to_purchase)
    depth = 1 + carted.astype(np.int64) + bought
    ends = np.cumsum(depth)
    event_start = ends - depth - (ends - depth)[first_slot[slot_user]]
    keep = event_start < n[slot_user]
    slot_user, slot_j, sk, event_start = slot_user[keep], slot_j[keep], sk[keep], event_start[keep]
    depth = np.minimum(depth[keep], n[slot_user] - event_start)

    # Sessions: a new one at a user's first interaction, then with probability 1/session_items_mean.
    new_session = (slot_j == 0) | (_uniform(seed, "slot.session", sk, slot_j) < plan.session_break_rate)
    slot_session = np.cumsum(new_session) - 1
    n_sessions = int(new_session.sum())
    session_user = slot_user[new_session]
    opens_user = np.r_[True, session_user[1:] != session_user[:-1]] if n_sessions else np.zeros(0, bool)
    positions = np.arange(n_sessions, dtype=np.int64)
    session_j = positions - np.maximum.accumulate(np.where(opens_user, positions, 0))
    sek = keys[session_user]
    u = _uniform(seed, "session.category", sek, session_j)
    any_category = _pick(category_cdf, _uniform(seed, "session.category.any", sek, session_j))
    session_category = np.where(u < _PRIMARY_SHARE, primary[session_user],
                                np.where(u < _PRIMARY_SHARE + _SECONDARY_SHARE, secondary[session_user], any_category))
    session_device = np.where(_uniform(seed, "session.device.loyal", sek, session_j) < _DEVICE_LOYALTY,
                              favourite_device[session_user],
                              _pick(_DEVICE_CDF, _uniform(seed, "session.device", sek, session_j)))
    day = _integers(seed, "session.day", sek, plan.window_seconds // 86_400, session_j)
    hour = _pick(_HOUR_CDF, _uniform(seed, "session.hour", sek, session_j))
    second = _integers(seed, "session.second", sek, 3600, session_j)
    local = day * 86_400 + hour * 3600 + second
    session_start = (local - _COUNTRY_OFFSET_S[country[session_user]]) % plan.window_seconds
    session_hash = rng.random_bits(seed, "generate/session.id", sek, session_j)
    session_null = _uniform(seed, "session.id.missing", sek, session_j) < plan.missing_session_id_rate
    order_hash = rng.random_bits(seed, "generate/session.order", sek, session_j)

    # Interactions: category (sticky to the session's), Zipf item, quantity, discount.
    stray = _uniform(seed, "slot.stray", sk, slot_j) >= plan.stickiness
    category = np.where(stray, _pick(category_cdf, _uniform(seed, "slot.category", sk, slot_j)),
                        session_category[slot_session])
    item = _zipf_items(catalog, category, _uniform(seed, "slot.item", sk, slot_j))
    uq = _uniform(seed, "slot.quantity", sk, slot_j)
    quantity = 1 + (uq > 0.8).astype(np.int64) + (uq > 0.95)
    discounted = _uniform(seed, "slot.discount", sk, slot_j) < _DISCOUNT_RATE
    factor = np.where(discounted, 1.0 - (0.1 + 0.3 * _uniform(seed, "slot.discount.size", sk, slot_j)), 1.0)
    price = np.round(item_list_prices(catalog, item) * factor, 2)

    # Events: each interaction expands into view (→ cart (→ purchase)).
    n_events = int(depth.sum())
    event_slot = np.repeat(np.arange(len(depth)), depth)
    step = np.arange(n_events, dtype=np.int64) - np.repeat(np.cumsum(depth) - depth, depth)
    event_user = slot_user[event_slot]
    event_j = event_start[event_slot] + step
    ek = keys[event_user]
    event_session = slot_session[event_slot]
    opens_session = (step == 0) & new_session[event_slot]
    gap = _MIN_EVENT_GAP_S + np.exp(np.log(40.0) + 0.9 * _normal(seed, "event.gap", ek, event_j))
    gap = np.where(opens_session, 0, np.minimum(gap, _MAX_EVENT_GAP_S).astype(np.int64))
    elapsed = np.cumsum(gap)
    session_first_event = np.flatnonzero(opens_session)
    offset = elapsed - elapsed[session_first_event][event_session]
    session_last_event = np.append(session_first_event[1:], n_events) - 1
    duration = offset[session_last_event]
    start = _separate_sessions(session_user, session_start, duration)
    ts = start[event_session] + offset
    in_window = ts < plan.window_seconds
    events = {
        "user": users[event_user], "item": item[event_slot], "etype": step, "ts": ts,
        "quantity": np.where(step == 0, 0, quantity[event_slot]), "price": price[event_slot],
        "session": session_hash[event_session], "session_null": session_null[event_session],
        "order": order_hash[event_session], "order_null": step < 2, "country": country[event_user],
        "device": session_device[event_session], "planted": np.zeros(n_events, dtype=np.int64),
        "key": ek, "draw": event_j.astype(np.uint64),
    }
    events = {name: values[in_window] for name, values in events.items()}
    return _plant_event_mess(events, plan)


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


def _plant_event_mess(events: dict[str, np.ndarray], plan: EventPlan) -> dict[str, np.ndarray]:
    """Returns, duplicates, near-duplicates and bad rows for one chunk of organic events."""
    seed, catalog = plan.seed, plan.catalog
    key, draw = events["key"], events["draw"]
    m = _uniform(seed, "event.mess", key, draw)
    duplicate = m < plan.duplicate_rate
    near = (m >= plan.duplicate_rate) & (m < plan.duplicate_rate + plan.near_duplicate_rate)
    bad = (m >= plan.duplicate_rate + plan.near_duplicate_rate) & (
        m < plan.duplicate_rate + plan.near_duplicate_rate + plan.bad_row_rate)
    kind = _integers(seed, "event.mess.kind", key, len(BAD_KINDS), draw)

    returned = (events["etype"] == 2) & ~bad & (_uniform(seed, "event.return", key, draw) < plan.return_rate)
    returned_ts = events["ts"] + 86_400 + _integers(seed, "event.return.delay", key, 29 * 86_400, draw)
    returned &= returned_ts < plan.window_seconds
    returns = {name: values[returned] for name, values in events.items()}
    returns["etype"] = np.full(len(returns["etype"]), 3, dtype=np.int64)
    returns["ts"] = returned_ts[returned]
    returns["session_null"] = np.ones(len(returns["ts"]), dtype=bool)

    events["planted"] = np.where(bad, _BAD0 + kind, 0)
    events["user"] = np.where(bad & (kind == BAD_KINDS.index("user_id_missing")), -1, events["user"])
    item = catalog.item_ids.forward(events["item"])
    unknown = catalog.n_items + _integers(seed, "event.item.unknown", key, 10 ** catalog.id_width - catalog.n_items,
                                          draw)
    item = np.where(bad & (kind == BAD_KINDS.index("item_id_unknown")), unknown, item)
    events["item"] = np.where(bad & (kind == BAD_KINDS.index("item_id_missing")), -1, item)
    returns["item"] = catalog.item_ids.forward(returns["item"])
    negative = _uniform(seed, "event.price.negative", key, draw) < 0.5
    events["price"] = np.where(bad & (kind == BAD_KINDS.index("price_not_positive")),
                               np.where(negative, -events["price"], 0.0), events["price"])
    events["quantity"] = np.where(bad & (kind == BAD_KINDS.index("quantity_negative")),
                                  -1 - _integers(seed, "event.quantity.negative", key, 3, draw), events["quantity"])

    copies = {name: values[duplicate] for name, values in events.items()}
    copies["planted"] = np.full(len(copies["planted"]), _DUPLICATE, dtype=np.int64)
    nears = {name: values[near] for name, values in events.items()}
    nears["ts"] = nears["ts"] + 1 + _integers(seed, "event.near.delay", nears["key"], 5, nears["draw"])
    nears["planted"] = np.full(len(nears["planted"]), _NEAR_DUPLICATE, dtype=np.int64)
    return _concat([events, copies, nears, returns])


def _simulate_bots(bots: np.ndarray, plan: EventPlan) -> dict[str, np.ndarray]:
    """Bots: one long burst each, viewing the catalog in public-id order at a machine rate."""
    seed, catalog = plan.seed, plan.catalog
    keys = entity_keys(bots)
    count = plan.bot_events
    interval = 60.0 / plan.bot_events_per_minute
    span = int(count * interval) + 2
    start = _integers(seed, "bot.start", keys, max(plan.window_seconds - span, 1))
    first_item = _integers(seed, "bot.first_item", keys, catalog.n_items)
    bot = np.repeat(np.arange(len(bots)), count)
    j = np.tile(np.arange(count, dtype=np.int64), len(bots))
    jitter = _uniform(seed, "bot.jitter", keys[bot], j)
    ts = start[bot] + np.floor((j + jitter) * interval).astype(np.int64)
    public_item = (first_item[bot] + j) % catalog.n_items
    item = catalog.item_ids.inverse(public_item)
    size = len(j)
    return {
        "user": bots[bot], "item": public_item, "etype": np.zeros(size, dtype=np.int64), "ts": ts,
        "quantity": np.zeros(size, dtype=np.int64), "price": item_list_prices(catalog, item),
        "session": rng.random_bits(seed, "generate/bot.session", keys)[bot], "session_null": np.zeros(size, bool),
        "order": np.zeros(size, dtype=np.uint64), "order_null": np.ones(size, bool),
        "country": _pick(_COUNTRY_CDF, _uniform(seed, "bot.country", keys))[bot],
        "device": np.full(size, BOT_DEVICE, dtype=np.int64), "planted": np.full(size, _BOT, dtype=np.int64),
        "key": keys[bot], "draw": j.astype(np.uint64),
    }


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts]) for name in _EVENT_ARRAYS}


def simulate_user_events(users: np.ndarray, plan: EventPlan) -> dict[str, np.ndarray]:
    """Numeric event arrays (internal codes) of the given user indices: organic users then bots.

    Pure numpy, no Spark: the unit of work of :func:`generate_events`. Items are public indices
    (``-1`` = missing), ``ts`` is seconds after the window start, ``quantity`` 0 means null.
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
                for name in _EVENT_ARRAYS}
    return _concat(parts)


# --------------------------------------------------------------------------------------------
# Numeric arrays → Arrow strings

_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_NIBBLE_SHIFTS = np.arange(60, -4, -4, dtype=np.uint64)


def _hex_ids(prefix: str, values: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    """``prefix`` + 16 lowercase hex digits of each uint64, vectorized (no per-row Python)."""
    nibbles = ((values.astype(np.uint64)[:, None] >> _NIBBLE_SHIFTS) & np.uint64(15)).astype(np.uint8)
    raw = np.ascontiguousarray(_HEX_DIGITS[nibbles]).view("S16").ravel()
    text = pc.cast(pa.array(raw, type=pa.binary(16)), pa.string())
    if null is not None:
        text = pc.if_else(pa.array(null), pa.scalar(None, pa.string()), text)
    return pc.binary_join_element_wise(prefix, text, "")


def _padded_ids(prefix: str, values: np.ndarray, width: int) -> pa.Array:
    """``prefix`` + zero-padded decimal; negative values become null."""
    numbers = pa.array(values, type=pa.int64(), mask=values < 0)
    digits = pc.utf8_lpad(pc.cast(numbers, pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _iso_utc(epoch_seconds: np.ndarray) -> pa.Array:
    """ISO-8601 UTC text ("2024-01-05T13:22:10Z"); a cast is ~30x faster than ``pc.strftime``."""
    text = pc.cast(pa.array(epoch_seconds, type=pa.timestamp("s")), pa.string())  # "2024-01-05 13:22:10"
    return pc.binary_join_element_wise(pc.replace_substring(text, " ", "T", max_replacements=1), "Z", "")


def _choose(options: tuple[str, ...], index: np.ndarray) -> pa.Array:
    return pa.array(options, type=pa.string()).take(pa.array(index, type=pa.int64()))


def _replace(column: pa.Array, mask: np.ndarray, values) -> pa.Array:
    """``column`` with the rows under ``mask`` replaced by ``values`` (one per masked row)."""
    if not mask.any():
        return column
    return pc.replace_with_mask(column, pa.array(mask), values)


def events_to_arrow(events: dict[str, np.ndarray], plan: EventPlan, with_labels: bool = False) -> pa.RecordBatch:
    """Numeric event arrays → a record batch of :data:`RAW_EVENT_FIELDS` strings (bad values planted)."""
    seed, catalog = plan.seed, plan.catalog
    key, draw, planted = events["key"], events["draw"], events["planted"]

    def bad(kind: str) -> np.ndarray:
        return planted == _BAD0 + BAD_KINDS.index(kind)

    ts = _iso_utc(plan.window_start + events["ts"])
    mask = bad("ts_unparsable")
    ts = _replace(ts, mask, _choose(_UNPARSABLE_TS, _integers(seed, "event.ts.text", key[mask], len(_UNPARSABLE_TS),
                                                                draw[mask])))
    for kind, year in (("ts_future", "2096"), ("ts_too_old", "1972")):  # leap years: 29 Feb stays a date
        mask = bad(kind)
        if mask.any():
            ts = _replace(ts, mask, pc.utf8_replace_slice(ts.filter(pa.array(mask)), start=0, stop=4, replacement=year))
    quantity = pc.cast(pa.array(events["quantity"], type=pa.int64(), mask=events["quantity"] == 0), pa.string())
    mask = bad("quantity_not_numeric")
    quantity = _replace(quantity, mask, _choose(_NOT_NUMERIC_QUANTITY, _integers(
        seed, "event.quantity.text", key[mask], len(_NOT_NUMERIC_QUANTITY), draw[mask])))
    price = pc.cast(pa.array(events["price"], type=pa.float64()), pa.string())
    mask = bad("price_not_numeric")
    price = _replace(price, mask, _choose(_NOT_NUMERIC_PRICE, _integers(
        seed, "event.price.text", key[mask], len(_NOT_NUMERIC_PRICE), draw[mask])))
    user = np.where(events["user"] < 0, -1, plan.user_ids.forward(np.maximum(events["user"], 0)))
    columns = {
        "user_id": _padded_ids("U", user, plan.user_id_width),
        "item_id": _padded_ids("I", events["item"], catalog.id_width),
        "event_type": _choose(EVENT_TYPES, events["etype"]),
        "ts": ts,
        "quantity": quantity,
        "price": price,
        "session_id": _hex_ids("s", events["session"], events["session_null"]),
        "order_id": _hex_ids("o", events["order"], events["order_null"]),
        "country": _choose(tuple(c[0] for c in COUNTRIES), events["country"]),
        "device": _choose(tuple(d[0] for d in DEVICES), events["device"]),
    }
    arrays = [columns[name] for name in RAW_EVENT_FIELDS]
    names = list(RAW_EVENT_FIELDS)
    if with_labels:
        codes = np.select([planted == _DUPLICATE, planted == _NEAR_DUPLICATE, planted == _BOT, planted >= _BAD0],
                          [0, 1, 2, planted - _BAD0 + 3], -1)
        arrays.append(pa.array(EVENT_LABELS, type=pa.string()).take(pa.array(codes, mask=codes < 0)))
        names.append("planted")
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _event_batches(batches: Iterator[pa.RecordBatch], plan: EventPlan, with_labels: bool) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: user ids in, their events out, in chunks of ~_EVENTS_PER_CHUNK rows."""
    per_user = max(plan.organic_target / max(plan.n_users, 1), 1.0)
    chunk = max(1, int(_EVENTS_PER_CHUNK / per_user))
    for batch in batches:
        ids = batch.column(0).to_numpy(zero_copy_only=False).astype(np.int64)
        for begin in range(0, len(ids), chunk):
            events = simulate_user_events(ids[begin:begin + chunk], plan)
            if len(events["ts"]):
                yield events_to_arrow(events, plan, with_labels)


def _string_schema(fields, extra: tuple[str, ...] = ()) -> T.StructType:
    return T.StructType([T.StructField(name, T.StringType(), True) for name in (*fields, *extra)])


def generate_events(spark: SparkSession, cfg: GenerateConfig, seed: int, *, with_labels: bool = False) -> DataFrame:
    """The shop's clickstream as a lazy DataFrame of :data:`RAW_EVENT_FIELDS`, all strings.

    ``with_labels=True`` adds a ``planted`` column naming each row's planted mess (one of
    :data:`EVENT_LABELS`, null for organic rows and returns): ground truth for testing ingest and
    clean. Rows are identical for the same ``cfg`` (less ``partitions``) and ``seed``.

    Example::

        events = generate_events(spark, GenerateConfig(events=10_000), seed=7)
        events.groupBy("event_type").count().show()
    """
    plan = plan_events(cfg, seed)
    schema = _string_schema(RAW_EVENT_FIELDS, ("planted",) if with_labels else ())
    users = spark.range(0, plan.n_users + plan.n_bots, numPartitions=cfg.partitions)
    return users.mapInArrow(functools.partial(_event_batches, plan=plan, with_labels=with_labels), schema)


# --------------------------------------------------------------------------------------------
# Items


def _vocabulary_column(catalog: CatalogPlan, field_name: str) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """All categories' words of one vocabulary field, flattened: (words, offsets, lengths)."""
    lists = [getattr(c, field_name) for c in catalog.categories]
    lengths = np.array([len(x) for x in lists], dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return pa.array([w for x in lists for w in x], type=pa.string()), offsets, lengths


def items_to_arrow(items: np.ndarray, catalog: CatalogPlan, with_labels: bool = False) -> pa.RecordBatch:
    """Catalog rows (:data:`RAW_ITEM_FIELDS`, strings) of the given internal item indices."""
    seed = catalog.seed
    items = np.asarray(items, dtype=np.int64)
    keys = entity_keys(items)
    category = items % catalog.n_categories

    def word(field_name: str, stream: str) -> pa.Array:
        words, offsets, lengths = _vocabulary_column(catalog, field_name)
        index = offsets[category] + _integers(seed, f"item.{stream}", keys, lengths[category])
        return words.take(pa.array(index))

    brand, adjective, material = word("brands", "brand"), word("adjectives", "adjective"), word("materials", "material")
    noun, size = word("nouns", "noun"), word("sizes", "size")
    use, feature = word("uses", "use"), word("features", "feature")
    color = _choose(COLORS, _integers(seed, "item.color", keys, len(COLORS)))
    with_material = pa.array(_uniform(seed, "item.title.material", keys) < 0.4)
    material_word = pc.if_else(with_material, pc.binary_join_element_wise(material, " ", ""), "")
    title = pc.binary_join_element_wise(brand, " ", adjective, " ", material_word, noun, ", ", size, "")
    description = pc.binary_join_element_wise(
        brand, " ", noun, " in ", color, ", made of ", material, ". ", pc.utf8_capitalize(adjective), " and built for ",
        use, ". ", feature, "")
    attributes = pc.binary_join_element_wise(
        '{"brand": "', brand, '", "color": "', color, '", "material": "', material, '", "size": "', size, '"}', "")
    prices = item_list_prices(catalog, items)
    m = _uniform(seed, "item.mess", keys)
    missing_price = m < catalog.missing_price_rate
    messy = (m >= catalog.missing_price_rate) & (m < catalog.missing_price_rate + catalog.messy_text_rate)
    price = pc.cast(pa.array(prices, mask=missing_price), pa.string())
    how = _integers(seed, "item.mess.kind", keys, 3)
    title = pc.if_else(pa.array(messy & (how == 0)), pc.utf8_upper(title), title)
    padded = pc.binary_join_element_wise("  ", pc.replace_substring(title, " ", "  ", max_replacements=1), " ", "")
    title = pc.if_else(pa.array(messy & (how == 1)), padded, title)
    html = pc.binary_join_element_wise("<p>", pc.replace_substring(description, " and ", " &amp; "), "</p><br/>", "")
    description = pc.if_else(pa.array(messy & (how == 2)), html, description)
    category_name = _choose(tuple(c.name for c in catalog.categories), category)
    columns = {
        "item_id": _padded_ids("I", catalog.item_ids.forward(items), catalog.id_width),
        "title": title, "description": description, "category": category_name, "price": price,
        "attributes": attributes,
    }
    arrays = [columns[name] for name in RAW_ITEM_FIELDS]
    names = list(RAW_ITEM_FIELDS)
    if with_labels:
        codes = np.where(missing_price, 0, np.where(messy, 1, -1))
        arrays.append(pa.array(ITEM_LABELS, type=pa.string()).take(pa.array(codes, mask=codes < 0)))
        names.append("planted")
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _item_batches(batches: Iterator[pa.RecordBatch], catalog: CatalogPlan,
                  with_labels: bool) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        yield items_to_arrow(batch.column(0).to_numpy(zero_copy_only=False), catalog, with_labels)


def generate_items(spark: SparkSession, cfg: GenerateConfig, seed: int, *, with_labels: bool = False) -> DataFrame:
    """The shop's catalog as a lazy DataFrame of :data:`RAW_ITEM_FIELDS`, all strings.

    ``with_labels=True`` adds ``planted`` (``missing_price``, ``messy_text`` or null).

    Example::

        items = generate_items(spark, GenerateConfig(items=500), seed=7)
        items.select("title", "category", "price").show(3, truncate=False)
    """
    catalog = plan_catalog(cfg, seed)
    partitions = max(1, min(cfg.partitions, -(-cfg.items // 200_000)))
    schema = _string_schema(RAW_ITEM_FIELDS, ("planted",) if with_labels else ())
    ids = spark.range(0, cfg.items, numPartitions=partitions)
    return ids.mapInArrow(functools.partial(_item_batches, catalog=catalog, with_labels=with_labels), schema)


# --------------------------------------------------------------------------------------------
# The stage


def generated_tables(cfg: GenerateConfig) -> tuple[str, str]:
    """Where the generator writes (events, items): warehouse table names, or folders under ``output``."""
    if cfg.output:
        root = cfg.output.rstrip("/")
        return f"{root}/{EVENTS_TABLE}", f"{root}/{ITEMS_TABLE}"
    return EVENTS_TABLE, ITEMS_TABLE


def _label_counts(prefix: str, labels: tuple[str, ...]) -> list:
    return [F.sum(F.when(F.col("planted") == label, 1).otherwise(0)).alias(f"{prefix}{label}") for label in labels]


def run_generate(ctx: RunContext) -> StageResult:
    """Write ``generated_events`` and ``generated_items`` (Delta, overwrite, idempotent per run id).

    The counts are observed while the tables are written (one pass, exact for the rows written):
    ``events``, ``items``, ``events.<type>``, ``events.session_id_null``, ``users``, ``bot_users``
    and the planted mess: ``planted.duplicate``, ``planted.near_duplicate``, ``planted.bot``,
    ``planted.bad_rows`` with ``planted.bad.<kind>`` for each of :data:`BAD_KINDS`, and
    ``planted.items_missing_price``, ``planted.items_messy_text``. A re-run with the same run id
    writes nothing and returns ``skipped=True`` with no counts.
    """
    from pyspark.sql import Observation

    cfg, seed = ctx.cfg.generate, ctx.cfg.run.seed
    events_name, items_name = generated_tables(cfg)
    plan = plan_events(cfg, seed)
    tag = uuid.uuid4().hex[:8]

    event_obs = Observation(f"generate_events_{tag}")
    events = generate_events(ctx.spark, cfg, seed, with_labels=True).observe(
        event_obs, F.count(F.lit(1)).alias("events"),
        *[F.sum(F.when(F.col("event_type") == t, 1).otherwise(0)).alias(f"events.{t}") for t in EVENT_TYPES],
        F.sum(F.when(F.col("session_id").isNull(), 1).otherwise(0)).alias("events.session_id_null"),
        *_label_counts("planted.", ("duplicate", "near_duplicate", "bot")),
        *_label_counts("planted.bad.", BAD_KINDS),
    ).select(*RAW_EVENT_FIELDS)
    item_obs = Observation(f"generate_items_{tag}")
    items = generate_items(ctx.spark, cfg, seed, with_labels=True).observe(
        item_obs, F.count(F.lit(1)).alias("items"),
        *_label_counts("planted.items_", ITEM_LABELS),
    ).select(*RAW_ITEM_FIELDS)

    txn = ctx.txn("generate")
    written_events = ctx.warehouse.write(events_name, events, mode="overwrite", txn=txn)
    written_items = ctx.warehouse.write(items_name, items, mode="overwrite", txn=txn)
    tables = {EVENTS_TABLE: written_events.version, ITEMS_TABLE: written_items.version}
    counts: dict[str, int] = {}
    if not written_events.skipped:
        counts |= {name: int(value or 0) for name, value in event_obs.get.items()}
        counts["planted.bad_rows"] = sum(counts[f"planted.bad.{kind}"] for kind in BAD_KINDS)
        counts["users"] = plan.n_users
        counts["bot_users"] = plan.n_bots
    if not written_items.skipped:
        counts |= {name: int(value or 0) for name, value in item_obs.get.items()}
    return StageResult(
        stage="generate", rows_in=0, rows_out=counts.get("events", 0) + counts.get("items", 0), counts=counts,
        tables=tables, skipped=written_events.skipped and written_items.skipped,
    )
