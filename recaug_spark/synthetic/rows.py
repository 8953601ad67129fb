"""Rows of the synthetic shop: numeric event arrays and item indices → Arrow record batches of strings.

Everything a source file would hold as text is rendered here, vectorized with pyarrow compute (no
per-row Python): ids, ISO timestamps, numbers, titles, descriptions and JSON attributes, and the
planted values that are bad as text (an unparsable timestamp, a price that is not a number).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recaug_spark.schemas import EVENT_TYPES, RAW_EVENT_FIELDS, RAW_ITEM_FIELDS
from recaug_spark.synthetic.draws import entity_keys, integers, uniform
from recaug_spark.synthetic.plan import CatalogPlan, EventPlan, item_list_prices
from recaug_spark.synthetic.vocabulary import (
    BAD_KINDS,
    COLORS,
    COUNTRIES,
    DEVICES,
    EVENT_LABELS,
    ITEM_LABELS,
    NOT_NUMERIC_PRICE,
    NOT_NUMERIC_QUANTITY,
    PLANTED_BAD0,
    PLANTED_BOT,
    PLANTED_DUPLICATE,
    PLANTED_NEAR_DUPLICATE,
    UNPARSABLE_TS,
)

# --------------------------------------------------------------------------------------------
# Columns: numbers → text

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


def _record_batch(columns: dict[str, pa.Array], fields: tuple[str, ...], labels: pa.Array | None) -> pa.RecordBatch:
    """The ``fields`` of ``columns`` in order, then ``planted`` when there are labels."""
    arrays = [columns[name] for name in fields]
    names = list(fields)
    if labels is not None:
        arrays.append(labels)
        names.append("planted")
    return pa.RecordBatch.from_arrays(arrays, names=names)


# --------------------------------------------------------------------------------------------
# Events


def events_to_arrow(events: dict[str, np.ndarray], plan: EventPlan, with_labels: bool = False) -> pa.RecordBatch:
    """Numeric event arrays → a record batch of :data:`RAW_EVENT_FIELDS` strings (bad values planted)."""
    seed, catalog, planted = plan.seed, plan.catalog, events["planted"]
    quantity = pc.cast(pa.array(events["quantity"], type=pa.int64(), mask=events["quantity"] == 0), pa.string())
    price = pc.cast(pa.array(events["price"], type=pa.float64()), pa.string())
    user = np.where(events["user"] < 0, -1, plan.user_ids.forward(np.maximum(events["user"], 0)))
    columns = {
        "user_id": _padded_ids("U", user, plan.user_id_width),
        "item_id": _padded_ids("I", events["item"], catalog.id_width),
        "event_type": _choose(EVENT_TYPES, events["etype"]),
        "ts": _event_ts(events, plan),
        "quantity": _plant_text(quantity, events, "quantity_not_numeric", NOT_NUMERIC_QUANTITY, seed,
                                "event.quantity.text"),
        "price": _plant_text(price, events, "price_not_numeric", NOT_NUMERIC_PRICE, seed, "event.price.text"),
        "session_id": _hex_ids("s", events["session"], events["session_null"]),
        "order_id": _hex_ids("o", events["order"], events["order_null"]),
        "country": _choose(tuple(c[0] for c in COUNTRIES), events["country"]),
        "device": _choose(tuple(d[0] for d in DEVICES), events["device"]),
    }
    labels = None
    if with_labels:
        codes = np.select([planted == PLANTED_DUPLICATE, planted == PLANTED_NEAR_DUPLICATE, planted == PLANTED_BOT,
                           planted >= PLANTED_BAD0], [0, 1, 2, planted - PLANTED_BAD0 + 3], -1)
        labels = pa.array(EVENT_LABELS, type=pa.string()).take(pa.array(codes, mask=codes < 0))
    return _record_batch(columns, RAW_EVENT_FIELDS, labels)


def _bad(events: dict[str, np.ndarray], kind: str) -> np.ndarray:
    """The rows planted as bad of ``kind`` (one of :data:`BAD_KINDS`)."""
    return events["planted"] == PLANTED_BAD0 + BAD_KINDS.index(kind)


def _plant_text(column: pa.Array, events: dict[str, np.ndarray], kind: str, options: tuple[str, ...], seed: int,
                stream: str) -> pa.Array:
    """``column`` with each row planted as ``kind`` replaced by one of ``options`` (a keyed draw)."""
    mask = _bad(events, kind)
    index = integers(seed, stream, events["key"][mask], len(options), events["draw"][mask])
    return _replace(column, mask, _choose(options, index))


def _event_ts(events: dict[str, np.ndarray], plan: EventPlan) -> pa.Array:
    """ISO timestamps; unparsable ones, and years moved to 2096 or 1972, where planted."""
    ts = _iso_utc(plan.window_start + events["ts"])
    ts = _plant_text(ts, events, "ts_unparsable", UNPARSABLE_TS, plan.seed, "event.ts.text")
    for kind, year in (("ts_future", "2096"), ("ts_too_old", "1972")):  # leap years: 29 Feb stays a date
        mask = _bad(events, kind)
        if mask.any():
            ts = _replace(ts, mask, pc.utf8_replace_slice(ts.filter(pa.array(mask)), start=0, stop=4, replacement=year))
    return ts


# --------------------------------------------------------------------------------------------
# Items


def items_to_arrow(items: np.ndarray, catalog: CatalogPlan, with_labels: bool = False) -> pa.RecordBatch:
    """Catalog rows (:data:`RAW_ITEM_FIELDS`, strings) of the given internal item indices."""
    seed = catalog.seed
    items = np.asarray(items, dtype=np.int64)
    keys = entity_keys(items)
    category = items % catalog.n_categories
    title, description, attributes = _item_text(catalog, keys, category)
    m = uniform(seed, "item.mess", keys)
    missing_price = m < catalog.missing_price_rate
    messy = (m >= catalog.missing_price_rate) & (m < catalog.missing_price_rate + catalog.messy_text_rate)
    title, description = _mess_up_text(title, description, messy, integers(seed, "item.mess.kind", keys, 3))
    columns = {
        "item_id": _padded_ids("I", catalog.item_ids.forward(items), catalog.id_width),
        "title": title, "description": description,
        "category": _choose(tuple(c.name for c in catalog.categories), category),
        "price": pc.cast(pa.array(item_list_prices(catalog, items), mask=missing_price), pa.string()),
        "attributes": attributes,
    }
    labels = None
    if with_labels:
        codes = np.where(missing_price, 0, np.where(messy, 1, -1))
        labels = pa.array(ITEM_LABELS, type=pa.string()).take(pa.array(codes, mask=codes < 0))
    return _record_batch(columns, RAW_ITEM_FIELDS, labels)


def _vocabulary_column(catalog: CatalogPlan, field_name: str) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """All categories' words of one vocabulary field, flattened: (words, offsets, lengths)."""
    lists = [getattr(c, field_name) for c in catalog.categories]
    lengths = np.array([len(x) for x in lists], dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return pa.array([w for x in lists for w in x], type=pa.string()), offsets, lengths


def _item_text(catalog: CatalogPlan, keys: np.ndarray, category: np.ndarray) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(title, description, JSON attributes) from keyed picks of the category's words."""
    seed = catalog.seed

    def word(field_name: str, stream: str) -> pa.Array:
        words, offsets, lengths = _vocabulary_column(catalog, field_name)
        index = offsets[category] + integers(seed, f"item.{stream}", keys, lengths[category])
        return words.take(pa.array(index))

    brand, adjective, material = word("brands", "brand"), word("adjectives", "adjective"), word("materials", "material")
    noun, size = word("nouns", "noun"), word("sizes", "size")
    use, feature = word("uses", "use"), word("features", "feature")
    color = _choose(COLORS, integers(seed, "item.color", keys, len(COLORS)))
    with_material = pa.array(uniform(seed, "item.title.material", keys) < 0.4)
    material_word = pc.if_else(with_material, pc.binary_join_element_wise(material, " ", ""), "")
    title = pc.binary_join_element_wise(brand, " ", adjective, " ", material_word, noun, ", ", size, "")
    description = pc.binary_join_element_wise(
        brand, " ", noun, " in ", color, ", made of ", material, ". ", pc.utf8_capitalize(adjective), " and built for ",
        use, ". ", feature, "")
    attributes = pc.binary_join_element_wise(
        '{"brand": "', brand, '", "color": "', color, '", "material": "', material, '", "size": "', size, '"}', "")
    return title, description, attributes


def _mess_up_text(title: pa.Array, description: pa.Array, messy: np.ndarray,
                  how: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """Messy items get an upper-cased title (``how`` 0), a padded title (1) or HTML in the description (2)."""
    title = pc.if_else(pa.array(messy & (how == 0)), pc.utf8_upper(title), title)
    padded = pc.binary_join_element_wise("  ", pc.replace_substring(title, " ", "  ", max_replacements=1), " ", "")
    title = pc.if_else(pa.array(messy & (how == 1)), padded, title)
    html = pc.binary_join_element_wise("<p>", pc.replace_substring(description, " and ", " &amp; "), "</p><br/>", "")
    description = pc.if_else(pa.array(messy & (how == 2)), html, description)
    return title, description
