"""The synthetic shop's vocabulary: categories, words, countries, devices, hours and planted mess.

Pure data, no logic beyond a check at import. One :class:`Category` per category, in the order
``GenerateConfig.categories`` takes them: ``weight`` is its share of attention, its list prices
are lognormal(ln ``price_median``, ``price_sigma``), and its word lists make titles, descriptions
and attributes (:func:`recaug_spark.synthetic.rows.items_to_arrow`). Changing any value here
changes the generated rows for every seed.
"""

from __future__ import annotations

from dataclasses import dataclass


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


# The built-in categories (at most this many: `generate.categories` takes the first N).
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

# Planted bad rows: one invalid field per row (every other field stays valid).
BAD_KINDS = (
    "ts_unparsable", "ts_future", "ts_too_old", "user_id_missing", "item_id_missing", "item_id_unknown",
    "price_not_positive", "price_not_numeric", "quantity_negative", "quantity_not_numeric",
)
# The invalid text a bad row carries for the kinds whose value is not a number or timestamp.
UNPARSABLE_TS = ("2024-13-45T99:99:99Z", "yesterday", "N/A", "31/02/2024 25:61", "0000-00-00 00:00:00")
NOT_NUMERIC_QUANTITY = ("abc", "two", "1 pc", "N/A")
NOT_NUMERIC_PRICE = ("abc", "N/A", "free", "call us")

# Labels of the `planted` column (code → name); code 0 (organic, returns) is null.
PLANTED_DUPLICATE, PLANTED_NEAR_DUPLICATE, PLANTED_BOT, PLANTED_BAD0 = 1, 2, 3, 10
EVENT_LABELS = ("duplicate", "near_duplicate", "bot", *BAD_KINDS)
ITEM_LABELS = ("missing_price", "messy_text")


def _check_vocabulary() -> None:
    """Every word list is non-empty and free of quotes and backslashes (attributes are JSON by concatenation)."""
    for category in CATEGORIES:
        for field_name in ("brands", "adjectives", "materials", "nouns", "sizes", "uses", "features"):
            words = getattr(category, field_name)
            if not words or any('"' in w or "\\" in w for w in words):
                raise ValueError(f"vocabulary {category.name}.{field_name} is empty or holds a quote/backslash")


_check_vocabulary()
