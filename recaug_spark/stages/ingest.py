"""Ingest: source adapters → validated, pseudonymized bronze tables, with every rejected record kept.

The stage reads the configured source (:mod:`recaug_spark.sources`), checks every record in one
pass, pseudonymizes user ids, and writes

* ``events_raw`` (``EVENTS_RAW``, overwritten; not partitioned: clean reads it whole, and a
  partitioned write costs half again as much — per-file ``dt`` statistics still skip files),
* ``items_raw`` (``ITEMS_RAW``, overwritten),
* ``quarantine`` (``QUARANTINE``, appended): one row per rejected record with its source, raw
  text and the reason,

then reconciles: for events and for items, records in = accepted + quarantined, and the rows
written (counted from the files' footers) match; a mismatch raises :class:`ReconciliationError`.

**Input records.** An input record is one row of the source: a CSV/JSON line, a Parquet/Delta row,
one derived item row. For the ``amazon-5core`` line format an event record is one (user, item)
pair of a parsed line, or one whole line that could not be parsed.

**Checks, in this order; a record gets the first that fails** (``EVENT_REASONS``):

1. ``unparsable_line``: the adapter could not split the record into fields;
2. ``missing_user``: user_id null or blank;
3. ``missing_item``: item_id null or blank;
4. ``bad_timestamp``: ts missing, not parsable (ISO-8601, or ``ingest.timestamp_format``), or
   before ``ingest.min_timestamp``;
5. ``future_timestamp``: ts later than the run's start + ``ingest.max_future_seconds``;
6. ``wrong_type``: quantity present but not an integer, or price present but not a finite number;
7. ``negative_quantity``: quantity < 0 (a missing quantity counts as 1);
8. ``nonpositive_price``: price <= 0 (price < 0 with ``ingest.allow_zero_price``); a missing price
   is fine (the clean stage imputes it);
9. ``unknown_event_type``: event_type (lower-cased; missing → ``ingest.default_event_type``) not
   in ``EVENT_TYPES``;
10. ``unknown_item``: the item id is not in the items source, checked only when the items come
    from an independent catalog (``ingest.items``, or ``generated_items``) and
    ``ingest.require_known_items``.

Items (``ITEM_REASONS``): ``unparsable_line``, ``missing_item``, ``wrong_type`` (price not a
finite number, or attributes not a JSON object), ``nonpositive_price`` (same rule as events).

Values are trimmed and a blank value counts as missing before checking. Zone-less timestamps are
read as UTC (the session time zone must be UTC).

**Pseudonymization.** Unless the ids are synthetic (``generated``) or declared anonymous
(``ingest.pseudonymize.ids_already_anonymous``), every user id, and every session id (a session
id identifies a visitor as much as a user id does), is replaced by
``HMAC-SHA256(subkey, id)`` in hex, truncated to 32 characters (128 bits), where the subkey is
``HMAC-SHA256(key, "recaug-spark/pseudonym/<user_id|session_id>")``. :func:`pseudonym` computes
the same value outside Spark. The secret key never enters a Spark plan, a log or a table: the
hash runs in a pandas UDF whose closure holds only the derived subkey. In the quarantine's raw
text, tokens equal to the record's user or session id are replaced by their pseudonyms; lines that
could not be parsed (so their user id cannot be located) are redacted to their length unless
``ingest.pseudonymize.redact_unparsable`` is false.

Example::

    ctx = RunContext.create(spark, load_config(["conf/local.yaml"]))
    result = run_ingest(ctx)
    print(result.progress_line(), result.counts)
"""

from __future__ import annotations

import datetime as dt
import hmac
import math
import os
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recaug_spark.config import ConfigError, IngestConfig
from recaug_spark.runs import RunContext, StageResult
from recaug_spark.schemas import EVENT_TYPES, EVENTS_RAW, ITEMS_RAW
from recaug_spark.sources import (
    ANONYMOUS_SESSION_PREFIX,
    EPOCH_FORMATS,
    LINE_START,
    OFFSET,
    ORDER_ONLY_FORMATS,
    ORDER_ONLY_KEY,
    RAW,
    REASON,
    ROW,
    SOURCE,
    UNPARSABLE,
    RawSources,
    read_sources,
    source_errors,
    timestamp_formats,
)

STAGE = "ingest"
EVENT_REASONS = (
    "encoding", "unparsable_line", "duplicate_key", "missing_user", "missing_item", "bad_id", "overflow",
    "bad_timestamp", "future_timestamp", "missing_quantity", "missing_price", "wrong_type",
    "negative_quantity", "nonpositive_price", "unknown_event_type", "unknown_item",
)
ITEM_REASONS = ("encoding", "unparsable_line", "duplicate_key", "missing_item", "wrong_type", "nonpositive_price")
# Formats whose ids are integers: such an id must be ASCII digits within int64 (bad_id, overflow).
INTEGER_ID_FIELDS = {
    "amazon-5core": ("user_id", "item_id"),
    "diginetica": ("user_id", "item_id", "session_id"),
    "online-retail": ("user_id",),
}
# Formats whose numbers are required: an empty one is missing_<field>, never a default.
REQUIRED_NUMBERS = {"online-retail": ("quantity", "price")}
_INT64_MAX_DIGITS = str(2**63 - 1)
_READING_REASONS = ("encoding", "unparsable_line", "duplicate_key")

OUTPUT_TABLES = ("events_raw", "items_raw", "quarantine")
CATALOG_TABLES = ("items_raw", "quarantine")  # a catalog-only ingest leaves events_raw as it is
UNITS = ("lines", "events", "items")  # what is counted; lines only for a line format (amazon-5core)
_LINE_REASONS = ("encoding", "unparsable_line")  # a 5-core line quarantined whole (one row, not an event)
MIN_KEY_BYTES = 16
PSEUDONYM_HEX_CHARS = 32
_SUBKEY_LABEL = b"recaug-spark/pseudonym/"
_ROWS_PER_FILE = 2_000_000
_UTC_ZONES = ("UTC", "Etc/UTC", "GMT", "Etc/GMT", "Z", "+00:00", "UCT", "Etc/UCT", "Universal", "Zulu")


class PseudonymKeyError(ConfigError):
    """No usable pseudonymization key: the message says how to provide one (never the key)."""


class ReconciliationError(RuntimeError):
    """Records in ≠ accepted + quarantined, or the rows written differ from the rows counted."""


# --------------------------------------------------------------------------------------------
# Pseudonymization key and hashing
# --------------------------------------------------------------------------------------------

def resolve_pseudonym_key(cfg: IngestConfig) -> bytes | None:
    """The secret key for pseudonymizing ids, or None when none is needed.

    None for ``format: generated`` (synthetic ids), for a catalog-only ingest (no user ids) and when
    ``ingest.pseudonymize.ids_already_anonymous`` is true. Otherwise the key is read from
    ``ingest.pseudonymize.key_file`` when set (trailing newline stripped), else from the environment
    variable ``ingest.pseudonymize.key_env``; it must hold at least 16 bytes. Raises
    :class:`PseudonymKeyError` (a :class:`ConfigError`) saying how to set one; call it before
    starting Spark to fail fast.

    Example::

        os.environ["RECAUG_PSEUDONYM_KEY"] = secrets.token_hex(32)
        key = resolve_pseudonym_key(cfg.ingest)
    """
    settings = cfg.pseudonymize
    if cfg.format == "generated" or settings.ids_already_anonymous or cfg.catalog_only:
        return None  # synthetic ids, declared anonymous, or a catalog (no user or session ids)
    if settings.key_file:
        path = Path(settings.key_file).expanduser()
        try:
            key = path.read_bytes().rstrip(b"\r\n")
        except OSError as error:
            raise PseudonymKeyError(
                f"ingest.pseudonymize.key_file is {settings.key_file!r} but it cannot be read "
                f"({error.strerror or type(error).__name__}); point it at a readable file holding the secret key"
            ) from None
        origin = f"the file {settings.key_file!r} (ingest.pseudonymize.key_file)"
    else:
        value = os.environ.get(settings.key_env, "")
        if not value.strip():
            raise PseudonymKeyError(
                f"ingest.format is '{cfg.format}': its user ids are real and must be pseudonymized with a secret "
                f"key, but the environment variable {settings.key_env} is not set. Set it, e.g.\n"
                f"  export {settings.key_env}=$(python -c 'import secrets; print(secrets.token_hex(32))')\n"
                f"(keep the same key across runs to keep the same pseudonyms), or point "
                f"ingest.pseudonymize.key_file at a file holding the key, or, only if the ids are already "
                f"anonymous, set ingest.pseudonymize.ids_already_anonymous=true."
            )
        key = value.encode("utf-8")
        origin = f"the environment variable {settings.key_env}"
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(
            f"the pseudonymization key in {origin} is shorter than {MIN_KEY_BYTES} bytes; use a longer random "
            f"secret, e.g. the output of: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return key


def pseudonym_subkey(key: bytes, kind: str) -> bytes:
    """The key that pseudonymizes one kind of id ("user_id" / "session_id"), derived from the secret key."""
    return hmac.digest(key, _SUBKEY_LABEL + kind.encode("ascii"), "sha256")


def _digest(subkey: bytes, value: str) -> str:
    return hmac.digest(subkey, value.encode("utf-8"), "sha256").hex()[:PSEUDONYM_HEX_CHARS]


def pseudonym(value: str, key: bytes, kind: str = "user_id") -> str:
    """The pseudonym that ingest gives the id ``value`` (``kind`` "user_id" or "session_id").

    Lets an operator holding the key find a person's rows (e.g. for an erasure request) without
    Spark. ``value`` is the id as the adapter produced it, trimmed (online-retail: ``"17850"``).

    Example::

        pseudonym("17850", key)  # -> 32 hex characters
    """
    return _digest(pseudonym_subkey(key, kind), value)


def _hash_udf(subkey: bytes):
    """A pandas UDF hashing one id column; ``subkey`` lives only in its closure."""

    def pseudonym_of(values: pd.Series) -> pd.Series:
        # Hash each distinct id of the batch once (users repeat across their events).
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        hashed = np.array([_digest(subkey, v) for v in uniques] + [None], dtype=object)
        return pd.Series(hashed[codes], index=values.index, dtype=object)  # code -1 → the trailing None

    return F.pandas_udf(pseudonym_of, T.StringType())


def _scrub_udf(user_subkey: bytes, session_subkey: bytes):
    """A pandas UDF replacing the record's user / session id tokens in its raw text by pseudonyms."""

    def scrub_ids(raw: pd.Series, users: pd.Series, sessions: pd.Series) -> pd.Series:
        out = []
        for text, user, session in zip(raw, users, sessions):
            if isinstance(text, str):
                for value, subkey in ((user, user_subkey), (session, session_subkey)):
                    if isinstance(value, str) and value:
                        text = _replace_token(text, value, _digest(subkey, value))
            out.append(text)
        return pd.Series(out, index=raw.index, dtype=object)

    return F.pandas_udf(scrub_ids, T.StringType())


def _replace_token(text: str, value: str, replacement: str) -> str:
    """Replace whole-token occurrences of ``value`` (also written as ``value.0``) in ``text``."""
    import re

    pattern = r"(?<![\w])" + re.escape(value) + r"(?:\.0+)?(?![\w])"
    return re.sub(pattern, replacement, text)


def pseudonymize_checked(checked: DataFrame, key: bytes, *, redact_unparsable: bool = True) -> DataFrame:
    """Replace user_id and session_id of a checked frame by keyed pseudonyms; scrub its raw text.

    ``checked`` is the output of :func:`check_events`. The quarantine text (``raw``, only set on
    rejected rows) gets the record's user / session id tokens replaced by their pseudonyms; an
    unparsable line is reduced to its length when ``redact_unparsable``.
    """
    user_subkey, session_subkey = pseudonym_subkey(key, "user_id"), pseudonym_subkey(key, "session_id")
    hash_user, hash_session = _hash_udf(user_subkey), _hash_udf(session_subkey)
    scrub = _scrub_udf(user_subkey, session_subkey)
    scrubbed = scrub(F.col("raw"), F.col("user_id"), F.col("session_id"))
    redacted = F.format_string(
        "<redacted: unreadable record of %d characters; ingest.pseudonymize.redact_unparsable=false keeps it>",
        F.length("raw"),
    )
    reason = F.col("reason")
    # Only a record whose ids could not be located at all is redacted (a line that could not be
    # split, a JSON line that is not JSON); one read field by field keeps its text, ids replaced.
    unlocated = reason.isin(*_READING_REASONS) & F.col("user_id").isNull() & F.col("session_id").isNull()
    raw = F.when(reason.isNull(), F.lit(None).cast("string"))
    raw = raw.when(unlocated, redacted if redact_unparsable else scrubbed).otherwise(scrubbed)
    replaced = {"user_id": hash_user(F.col("user_id")), "session_id": hash_session(F.col("session_id")), "raw": raw}
    return checked.select(*[replaced[c].alias(c) if c in replaced else F.col(c) for c in checked.columns])


# --------------------------------------------------------------------------------------------
# Validation (pure: DataFrame in, DataFrame out)
# --------------------------------------------------------------------------------------------

_WHITESPACE = " \t\r\n\f\v"


def _text(name: str) -> Column:
    """The value of a raw string column without surrounding whitespace; blank → null."""
    return F.nullif(F.btrim(F.col(name), F.lit(_WHITESPACE)), F.lit(""))


def _blank_to_null(name: str) -> Column:
    """Free text kept as written, except that a blank value becomes null."""
    return F.when(F.btrim(F.col(name), F.lit(_WHITESPACE)) != "", F.col(name))


def _micros(moment: dt.datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _timestamp_literal(moment: dt.datetime) -> Column:
    return F.timestamp_micros(F.lit(_micros(moment)))


def _parse_instant(value: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def effective_timestamp_formats(cfg: IngestConfig) -> tuple[str | None, ...]:
    """The spellings the ts column is parsed with (None = ISO-8601): the configured ones and the
    format's native ones (:func:`recaug_spark.sources.timestamp_formats`); DIGINETICA's adapter
    already renders ISO."""
    return (None,) if cfg.format in ("diginetica", "generated", "amazon-5core") else timestamp_formats(cfg)


def parse_timestamp(text: Column, timestamp_format: str | Sequence[str | None] | None = None) -> Column:
    """A string column → timestamp (null when it does not parse; never an error).

    ``None``: ISO-8601 (``2024-01-05T13:22:10Z``, ``2024-01-05 13:22:10``, ``2024-01-05``; no zone
    means UTC); ``epoch_seconds`` / ``epoch_millis``: Unix time (fractions allowed); anything else
    is a Spark datetime pattern such as ``dd/MM/yyyy HH:mm``. A list: the first that parses.
    """
    if timestamp_format is not None and not isinstance(timestamp_format, str):
        parsed = [parse_timestamp(text, f) for f in timestamp_format]
        return parsed[0] if len(parsed) == 1 else F.coalesce(*parsed)
    if timestamp_format is None:
        return F.try_to_timestamp(text)
    if timestamp_format in EPOCH_FORMATS:
        number = text.try_cast("double")
        scale, limit = (1_000_000, 1e11) if timestamp_format == "epoch_seconds" else (1_000, 1e14)
        micros = (number * scale).try_cast("long")
        return F.when(number.between(-limit, limit) & ~F.isnan(number), F.timestamp_micros(micros))
    return F.try_to_timestamp(text, F.lit(timestamp_format))


def integer_id_check(value: Column) -> Column:
    """``bad_id`` / ``overflow`` / null for a trimmed id that must be an integer (ASCII digits within
    int64; a regex over one id token, anchored, without alternatives: linear)."""
    digits = F.regexp_replace(value, "^0+(?=[0-9])", "")
    too_big = (F.length(digits) > len(_INT64_MAX_DIGITS)) | (
        (F.length(digits) == len(_INT64_MAX_DIGITS)) & (digits > F.lit(_INT64_MAX_DIGITS)))
    return (F.when(value.isNull(), F.lit(None)).when(~value.rlike("^[0-9]+$"), F.lit("bad_id"))
            .when(too_big, F.lit("overflow")))


def _id_reason(cfg: IngestConfig) -> Column:
    """The first integer-id failure among the format's integer id fields (null: none)."""
    checks = []
    for name in INTEGER_ID_FIELDS.get(cfg.format, ()):
        value = F.col(name)
        if name == "user_id" and cfg.format == "diginetica":  # an anonymous session's user: session:<id>
            value = F.when(value.startswith(ANONYMOUS_SESSION_PREFIX),
                           F.substring(value, len(ANONYMOUS_SESSION_PREFIX) + 1, 1 << 30)).otherwise(value)
        checks.append(integer_id_check(value))
    return F.coalesce(*checks) if checks else F.lit(None).cast("string")


def _valid_text(column: Column) -> Column:
    """A string as is when it is valid UTF-8, else ``0x<hex>`` (so no invalid byte reaches Arrow)."""
    return F.when(F.is_valid_utf8(column) | column.isNull(), column).otherwise(F.concat(F.lit("0x"), F.hex(column)))


def _price_checks(price_text: Column, price: Column, allow_zero_price: bool) -> tuple[Column, Column]:
    """(wrong type, nonpositive) conditions for an optional price."""
    wrong = price_text.isNotNull() & (price.isNull() | F.isnan(price) | (F.abs(price) == float("inf")))
    nonpositive = (price < 0) if allow_zero_price else (price <= 0)
    return wrong, price.isNotNull() & nonpositive


def known_item_ids(items: DataFrame) -> DataFrame:
    """The distinct (trimmed) item ids of an items source, as one column ``_known_item``."""
    return items.select(_text("item_id").alias("_known_item")).where(F.col("_known_item").isNotNull()).distinct()


def check_events(
    raw: DataFrame,
    cfg: IngestConfig,
    *,
    now: dt.datetime,
    known_items: DataFrame | None = None,
) -> DataFrame:
    """Adapter event rows → typed rows with a ``reason`` (null = accepted), in one projection.

    Output columns: the ``EVENTS_RAW`` fields (typed; ``source`` from ``_source``; ``dt`` =
    to_date(ts)), ``raw`` (the raw text, kept only on rejected rows) and ``reason`` (the first
    failing check of ``EVENT_REASONS``). ``now`` anchors the future check (the run's start).
    ``known_items`` (from :func:`known_item_ids`) enables ``unknown_item``.

    Example::

        checked = check_events(sources.events, cfg.ingest, now=datetime.now(timezone.utc))
        checked.groupBy("reason").count().show()
    """
    ts_format = effective_timestamp_formats(cfg)
    quantity_text, price_text = _text("quantity"), _text("price")
    line_start = [F.col(LINE_START)] if LINE_START in raw.columns else []  # line formats: kept for the count
    normalized = raw.select(
        _valid_text(_text("user_id")).alias("user_id"),
        _text("item_id").alias("item_id"),
        F.coalesce(F.lower(_text("event_type")), F.lit(cfg.default_event_type)).alias("event_type"),
        parse_timestamp(_text("ts"), ts_format).alias("ts"),
        quantity_text.alias("_quantity_text"),
        quantity_text.try_cast("double").alias("_quantity_number"),
        price_text.alias("_price_text"),
        price_text.try_cast("double").alias("price"),
        _valid_text(_text("session_id")).alias("session_id"),
        _text("order_id").alias("order_id"),
        _text("country").alias("country"),
        _text("device").alias("device"),
        *_marker_columns(raw), *line_start,
    )
    known = F.lit(True)
    if known_items is not None:
        normalized = normalized.join(
            known_items.select(F.col("_known_item")), F.col("item_id") == F.col("_known_item"), "left",
        )
        known = F.col("_known_item").isNotNull()

    ts = F.col("ts")
    q_text, q_number, price = F.col("_quantity_text"), F.col("_quantity_number"), F.col("price")
    quantity_ok = q_text.isNull() | (
        q_number.isNotNull() & ~F.isnan(q_number) & (q_number == F.floor(q_number))
        & q_number.between(-(2**31), 2**31 - 1)
    )
    quantity = F.when(q_text.isNull(), F.lit(1)).otherwise(q_number.try_cast("int"))
    price_wrong, price_nonpositive = _price_checks(F.col("_price_text"), price, cfg.allow_zero_price)
    earliest = _timestamp_literal(_parse_instant(cfg.min_timestamp))
    latest = _timestamp_literal(now + dt.timedelta(seconds=cfg.max_future_seconds))
    required = REQUIRED_NUMBERS.get(cfg.format, ())
    id_reason = _id_reason(cfg)
    reason = (
        F.when(F.col("_read_reason").isNotNull(), F.col("_read_reason"))
        .when(F.col("_unparsable"), F.lit("unparsable_line"))
        .when(F.col("user_id").isNull(), F.lit("missing_user"))
        .when(F.col("item_id").isNull(), F.lit("missing_item"))
        .when(id_reason.isNotNull(), id_reason)
        .when(ts.isNull() | (ts < earliest), F.lit("bad_timestamp"))
        .when(ts > latest, F.lit("future_timestamp"))
        .when(F.lit("quantity" in required) & q_text.isNull(), F.lit("missing_quantity"))
        .when(F.lit("price" in required) & F.col("_price_text").isNull(), F.lit("missing_price"))
        .when(~quantity_ok | price_wrong, F.lit("wrong_type"))
        .when(quantity < 0, F.lit("negative_quantity"))
        .when(price_nonpositive, F.lit("nonpositive_price"))
        .when(~F.col("event_type").isin(*EVENT_TYPES), F.lit("unknown_event_type"))
        .when(~known, F.lit("unknown_item"))
    )
    checked = normalized.select(
        "user_id", "item_id", "event_type", "ts",
        F.when(quantity_ok, quantity).cast("int").alias("quantity"),
        F.when(~price_wrong, price).alias("price"),
        "session_id", "order_id", "country", "device", "source",
        F.to_date(ts).alias("dt"), "_raw", "_row", "_offset", *line_start, reason.alias("reason"),
    )
    return _keep_raw_of_rejected(checked)


def _marker_columns(raw: DataFrame) -> list[Column]:
    """source, _raw, _unparsable, _read_reason, _row, _offset of an adapter frame (older frames
    without the reading reason or position get nulls)."""
    def optional(name: str, kind: str) -> Column:
        return (F.col(name) if name in raw.columns else F.lit(None)).cast(kind)

    return [
        F.col(SOURCE).cast("string").alias("source"), F.col(RAW).alias("_raw"),
        F.coalesce(F.col(UNPARSABLE), F.lit(False)).alias("_unparsable"),
        optional(REASON, "string").alias("_read_reason"), optional(ROW, "long").alias("_row"),
        optional(OFFSET, "long").alias("_offset"),
    ]


def _keep_raw_of_rejected(checked: DataFrame) -> DataFrame:
    """``_raw`` → ``raw``, kept on rejected rows only (a separate projection: reason is computed once)."""
    columns = [c for c in checked.columns if c not in ("_raw", "_row", "_offset", "reason")]
    rejected = F.col("reason").isNotNull()
    return checked.select(*columns, F.when(rejected, F.col("_raw")).alias("raw"),
                          F.when(rejected, F.col("_row")).alias("row_number"),
                          F.when(rejected, F.col("_offset")).alias("byte_offset"), "reason")


def check_items(raw: DataFrame, cfg: IngestConfig) -> DataFrame:
    """Adapter item rows → typed ``ITEMS_RAW`` rows plus ``raw`` and ``reason`` (``ITEM_REASONS``)."""
    price_text = _text("price")
    attributes = _blank_to_null("attributes")
    normalized = raw.select(
        _text("item_id").alias("item_id"),
        _blank_to_null("title").alias("title"),
        _blank_to_null("description").alias("description"),
        _blank_to_null("category").alias("category"),
        price_text.alias("_price_text"),
        price_text.try_cast("double").alias("price"),
        attributes.alias("attributes"),
        *_marker_columns(raw),
    )
    price_wrong, price_nonpositive = _price_checks(F.col("_price_text"), F.col("price"), cfg.allow_zero_price)
    attrs = F.col("attributes")
    attributes_wrong = attrs.isNotNull() & (
        ~F.ltrim(attrs).startswith("{") | F.get_json_object(attrs, "$").isNull()
    )
    reason = (
        F.when(F.col("_read_reason").isNotNull(), F.col("_read_reason"))
        .when(F.col("_unparsable"), F.lit("unparsable_line"))
        .when(F.col("item_id").isNull(), F.lit("missing_item"))
        .when(price_wrong | attributes_wrong, F.lit("wrong_type"))
        .when(price_nonpositive, F.lit("nonpositive_price"))
    )
    checked = normalized.select(
        "item_id", "title", "description", "category",
        F.when(~price_wrong, F.col("price")).alias("price"),
        "attributes", "source", "_raw", "_row", "_offset", reason.alias("reason"),
    )
    return _keep_raw_of_rejected(checked)


def without_event_failures(items: DataFrame, cfg: IngestConfig, *, price: bool) -> DataFrame:
    """Items derived from the events, without the rows whose value the event check rejects: an item
    id that is not an integer where the format's ids are (``bad_id``, ``overflow``), and, when
    ``price`` (the items take the events' price column), a price that is ``wrong_type`` or
    ``nonpositive_price``.

    Every event record holding such a value is quarantined already (for it or an earlier reason);
    checking the derived item row too would quarantine the same source record twice, and accepting
    it would put an id that is no id into ``items_raw``. Other item failures (attributes that are
    not JSON) are the item's own and stay.
    """
    keep = F.lit(True)
    if "item_id" in INTEGER_ID_FIELDS.get(cfg.format, ()):
        keep = integer_id_check(_text("item_id")).isNull()
    if price:
        price_text = _text("price")
        wrong, nonpositive = _price_checks(price_text, price_text.try_cast("double"), cfg.allow_zero_price)
        keep = keep & ~(wrong | nonpositive)
    return items.where(keep)


def accepted_rows(checked: DataFrame, schema: T.StructType) -> DataFrame:
    """The accepted rows of a checked frame, cast to ``schema`` (``EVENTS_RAW`` or ``ITEMS_RAW``)."""
    return checked.where(F.col("reason").isNull()).select(
        *[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields]
    )


def quarantine_rows(checked: DataFrame, *, run_id: str, table: str) -> DataFrame:
    """The rejected rows of a checked frame as ``QUARANTINE`` rows (stage ``ingest``)."""
    return checked.where(F.col("reason").isNotNull()).select(
        F.lit(run_id).alias("run_id"), F.lit(STAGE).alias("stage"), F.lit(table).alias("table"),
        F.col("source").cast("string").alias("source"), F.col("raw").cast("string").alias("raw"),
        F.col("reason").cast("string").alias("reason"),
        F.col("row_number").cast("long").alias("row_number"), F.col("byte_offset").cast("long").alias("byte_offset"),
    )


def _reason_count_columns(reasons: Sequence[str]) -> list[Column]:
    """Aggregates for ``DataFrame.observe``: all rows, and the rows of each reason."""
    return [F.count(F.lit(1)).alias("rows"), *[F.count_if(F.col("reason") == r).alias(r) for r in reasons]]


def reason_counts(checked: DataFrame) -> dict[str | None, int]:
    """Rows per reason (None = accepted) of a checked frame: one small aggregation job."""
    return {row["reason"]: int(row["count"]) for row in checked.groupBy("reason").count().collect()}


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------

def check_session(spark: SparkSession, cfg: IngestConfig) -> None:
    """Fail early on a session or pattern that would silently give wrong timestamps."""
    zone = spark.conf.get("spark.sql.session.timeZone")
    if zone not in _UTC_ZONES:
        raise ConfigError(
            f"ingest reads zone-less timestamps as UTC and derives dt in UTC, but spark.sql.session.timeZone is "
            f"{zone!r}: set spark.conf.spark.sql.session.timeZone=UTC (recaug's session factory does)"
        )
    if cfg.format == "amazon-5core" and cfg.timestamp_format:
        raise ConfigError("ingest.timestamp_format is set but amazon-5core files carry no timestamps (only the "
                          "order of each user's items): unset it")
    patterns = [p for p in timestamp_formats(cfg) if p is not None and p not in EPOCH_FORMATS]
    for pattern in patterns:
        try:
            spark.range(1).select(F.try_to_timestamp(F.lit("2000-01-01"), F.lit(pattern))).collect()
        except Exception as error:  # Spark raises IllegalArgumentException / AnalysisException
            raise ConfigError(
                f"ingest.timestamp_format {pattern!r} is not a valid Spark datetime pattern "
                f"(e.g. 'yyyy-MM-dd HH:mm:ss', 'dd/MM/yyyy HH:mm', or 'epoch_seconds'): {str(error).splitlines()[0]}"
            ) from None


def _files_for(rows: int) -> int:
    return max(1, math.ceil(rows / _ROWS_PER_FILE))


def run_ingest(ctx: RunContext) -> StageResult:
    """Read, check, pseudonymize and write ``events_raw``, ``items_raw`` and ``quarantine``.

    Counts: ``events_in``, ``events_accepted``, ``events_quarantined``, the same for items,
    ``quarantine.<reason>`` (all units together) and ``events.quarantine.<reason>`` /
    ``items.quarantine.<reason>``; a line format (amazon-5core) also counts ``lines_*`` and
    ``lines.quarantine.<reason>`` (a line that could not be read is one quarantine row, counted as
    a line, not as an event). ``rows_in`` = rows_out + rows_quarantined, in records (one quarantine
    row per record). A catalog-only ingest (``ingest.items`` without ``ingest.events``) writes
    only ``items_raw`` and ``quarantine`` and counts only items. Each write carries the run's
    ingest transaction, so re-running the same run id writes nothing twice; when all its tables
    already hold it, the stage returns at once (``skipped``, zero rows, the current versions).
    """
    cfg = ctx.cfg.ingest
    key = resolve_pseudonym_key(cfg)  # before any Spark work: a missing key fails fast
    txn = ctx.txn(STAGE)
    done = _already_committed(ctx, txn, output_tables(cfg))
    if done is not None:
        return StageResult(stage=STAGE, rows_in=0, rows_out=0, tables=done, skipped=True)
    check_session(ctx.spark, cfg)
    now = dt.datetime.now(dt.timezone.utc)
    from recaug_spark.stages.generate import generated_tables

    with source_errors():
        sources: RawSources = read_sources(ctx.spark, cfg, ctx.warehouse,
                                           generated=generated_tables(ctx.cfg.generate))
    events = None
    if sources.events is not None:
        known = known_item_ids(sources.items) if cfg.require_known_items and not sources.items_derived else None
        events = check_events(sources.events, cfg, now=now, known_items=known)
        if key is not None:
            events = pseudonymize_checked(events, key, redact_unparsable=cfg.pseudonymize.redact_unparsable)
    item_rows = sources.items
    if sources.items_derived:  # one quarantine row per source record: the event's
        item_rows = without_event_failures(item_rows, cfg, price=sources.item_price_from_events)
    items = check_items(item_rows, cfg)

    written, tally, item_counts = _write_bronze(ctx, cfg, events, items, txn)
    counts = _stage_counts(tally, item_counts)
    reconcile(counts, written)
    rows_out = counts.get("events_accepted", 0) + counts["items_accepted"]
    rows_quarantined = sum(counts[f"{unit}_quarantined"] for unit in UNITS if f"{unit}_in" in counts)
    return StageResult(
        stage=STAGE, rows_in=rows_out + rows_quarantined, rows_out=rows_out, rows_quarantined=rows_quarantined,
        counts=counts, tables={table: result.version for table, result in written.items()},
        skipped=all(result.skipped for result in written.values()),
        units="; ".join(line.strip() for line in reconciliation_lines(counts)),
    )


def output_tables(cfg: IngestConfig) -> tuple[str, ...]:
    """The tables an ingest of ``cfg`` writes: a catalog-only ingest leaves ``events_raw`` as it is."""
    return CATALOG_TABLES if cfg.catalog_only else OUTPUT_TABLES


class EventTally(NamedTuple):
    """Event rows per reason (None = accepted); for a line format, the lines seen and accepted."""

    by_reason: dict
    lines_in: int | None = None
    lines_accepted: int | None = None


def _write_bronze(ctx: RunContext, cfg, events: DataFrame | None, items: DataFrame, txn) -> tuple:
    """Write ``events_raw`` (unless catalog-only), ``items_raw`` and ``quarantine`` under the run's
    ingest transaction; ``(write results by table, EventTally or None, item rows per reason)``."""
    items = items.persist(StorageLevel.MEMORY_AND_DISK)  # the catalog: small, read twice
    try:
        with source_errors():
            item_counts = reason_counts(items)  # reads an independent catalog before anything is committed
            written, tally = {}, None
            if events is not None:
                written["events_raw"], tally = _write_events(ctx, cfg, events, txn)
            accepted_items = accepted_rows(items, ITEMS_RAW).coalesce(_files_for(item_counts.get(None, 0)))
            written["items_raw"] = ctx.warehouse.write("items_raw", accepted_items, mode="overwrite", txn=txn)
            rejected = quarantine_rows(items, run_id=ctx.run_id, table="items")
            quarantined = sum(n for r, n in item_counts.items() if r is not None)
            rejected_events = sum(n for r, n in tally.by_reason.items() if r is not None) if tally else 0
            if rejected_events:  # the write's tally says whether the source needs a second pass at all
                rejected = quarantine_rows(events, run_id=ctx.run_id, table="events").unionByName(rejected)
                quarantined += rejected_events
            rejected = quarantine_in_files(rejected, _files_for(quarantined))
            written["quarantine"] = ctx.warehouse.write("quarantine", rejected, mode="append", txn=txn)
    finally:
        items.unpersist()
    return written, tally, item_counts


def quarantine_in_files(rejected: DataFrame, files: int) -> DataFrame:
    """The quarantine rows in ``files`` partitions, placed by a hash of their content and sorted (the
    same files whatever the source's partitioning). A shuffle of the few rejected rows, not
    ``coalesce``: coalescing to one partition would run the whole second pass over the source in a
    single task (measured in docs/benchmarks.md)."""
    order = ("table", "source", "row_number", "byte_offset", "reason", "raw")
    return rejected.repartition(files, *order).sortWithinPartitions(*order)


def _write_events(ctx: RunContext, cfg, events: DataFrame, txn) -> tuple:
    """Write ``events_raw``; ``(write result, EventTally)``. No cache of the whole source: the write
    observes the rows of every reason (and the line starts) on its way, one pass."""
    lines = LINE_START in events.columns
    observation = Observation("ingest_events")
    observed = events.observe(observation, *_tally_columns(lines))
    written = ctx.warehouse.write(
        "events_raw", accepted_rows(observed, EVENTS_RAW), mode="overwrite", txn=txn,
        metadata={ORDER_ONLY_KEY: str(cfg.format in ORDER_ONLY_FORMATS).lower()},
    )
    # A write skipped as already committed (a retry) ran no job: its observation never fires.
    metrics = events.agg(*_tally_columns(lines)).first().asDict() if written.skipped else observation.get
    by_reason = {r: int(metrics[r]) for r in EVENT_REASONS if metrics[r]}
    by_reason[None] = int(metrics["rows"]) - sum(by_reason.values())
    if not lines:
        return written, EventTally(by_reason)
    return written, EventTally(by_reason, int(metrics["line_starts"]), int(metrics["lines_accepted"]))


def _tally_columns(lines: bool) -> list[Column]:
    """Aggregates over checked events: all rows, the rows of each reason, and (``lines``) the line
    starts and the line starts of lines that were read (not quarantined whole)."""
    columns = _reason_count_columns(EVENT_REASONS)
    if lines:
        start = F.coalesce(F.col(LINE_START), F.lit(False))
        whole_line = F.coalesce(F.col("reason").isin(*_LINE_REASONS), F.lit(False))
        columns += [F.count_if(start).alias("line_starts"), F.count_if(start & ~whole_line).alias("lines_accepted")]
    return columns


def _stage_counts(tally: EventTally | None, item_counts: Mapping) -> dict[str, int]:
    """The stage's counts (in / accepted / quarantined per unit, and per reason).

    Units: ``lines`` (line formats: a line read, or quarantined whole), ``events`` (rows of read
    lines for a line format), ``items``. ``lines_in`` is counted on its own (line starts), so
    :func:`reconcile` checks it; the other ``*_in`` are accepted + quarantined.
    """
    units = []
    if tally is not None:
        by_reason = dict(tally.by_reason)
        if tally.lines_in is not None:
            line_counts = {r: by_reason.pop(r) for r in _LINE_REASONS if r in by_reason}
            units.append(("lines", {**line_counts, None: tally.lines_accepted}, tally.lines_in))
        units.append(("events", by_reason, None))
    units.append(("items", item_counts, None))
    counts: dict[str, int] = {}
    for unit, unit_counts, seen in units:
        accepted = unit_counts.get(None, 0)
        quarantined = sum(n for r, n in unit_counts.items() if r is not None)
        counts |= {f"{unit}_in": accepted + quarantined if seen is None else seen, f"{unit}_accepted": accepted,
                   f"{unit}_quarantined": quarantined}
        for reason, n in unit_counts.items():
            if reason is not None:
                counts[f"{unit}.quarantine.{reason}"] = n
                counts[f"quarantine.{reason}"] = counts.get(f"quarantine.{reason}", 0) + n
    return counts


def reconciliation_lines(counts: Mapping[str, int]) -> list[str]:
    """The stage's reconciliation in words, one line per unit, for the run summary, e.g.
    ``lines: 3 in = 2 accepted + 1 quarantined``."""
    label = {"lines": "lines", "events": "events of read lines" if "lines_in" in counts else "events",
             "items": "items"}
    return [f"  {label[unit]}: {counts[f'{unit}_in']:,} in = {counts[f'{unit}_accepted']:,} accepted + "
            f"{counts[f'{unit}_quarantined']:,} quarantined" for unit in UNITS if f"{unit}_in" in counts]


def _already_committed(ctx: RunContext, txn: tuple[str, int], tables: Sequence[str]) -> dict[str, int] | None:
    """The output tables' versions when this run id already committed all of them, else None."""
    if not all(ctx.warehouse.committed(table, txn) for table in tables):
        return None
    return {table: ctx.warehouse.committed_version(table, txn) for table in tables}


def reconcile(counts: Mapping[str, int], written: Mapping[str, object]) -> None:
    """Raise :class:`ReconciliationError` unless in = accepted + quarantined for every unit counted
    (lines, events, items) and the rows written (from the files' footers, when the backend reports
    them) match the counts."""
    problems = []
    units = [unit for unit in UNITS if f"{unit}_in" in counts]
    for unit in units:
        by_reason = sum(n for k, n in counts.items() if k.startswith(f"{unit}.quarantine."))
        if counts[f"{unit}_in"] != counts[f"{unit}_accepted"] + counts[f"{unit}_quarantined"]:
            problems.append(f"{unit}: in {counts[f'{unit}_in']} != accepted {counts[f'{unit}_accepted']} "
                            f"+ quarantined {counts[f'{unit}_quarantined']}")
        if by_reason != counts[f"{unit}_quarantined"]:
            problems.append(f"{unit}: quarantined {counts[f'{unit}_quarantined']} != sum by reason {by_reason}")
    expected = {"items_raw": counts["items_accepted"],
                "quarantine": sum(counts[f"{unit}_quarantined"] for unit in units)}
    if "events_in" in counts:
        expected["events_raw"] = counts["events_accepted"]
    for table, rows in expected.items():
        result = written.get(table)
        if not getattr(result, "skipped", False) and getattr(result, "rows", -1) >= 0 and result.rows != rows:
            problems.append(f"{table}: wrote {result.rows} rows but counted {rows}")
    if problems:
        raise ReconciliationError("ingest does not reconcile: " + "; ".join(problems))
