"""Source adapters: raw files or tables → raw string rows with canonical column names.

Every adapter returns a :class:`RawSources` pair of DataFrames whose columns are

* the canonical fields (``RAW_EVENT_FIELDS`` for events, ``RAW_ITEM_FIELDS`` for items), all
  strings, exactly as the source wrote them (no trimming, no type conversion: that is the
  validation's job, so a bad value is quarantined instead of silently becoming null);
* ``_source``: the file name (or table) the row came from;
* ``_raw``: the record as a human can read it: the verbatim line for CSV and line formats (and
  for any line that could not be parsed), else a JSON object of the source row (source column
  names) for JSON, Parquet, Delta and warehouse tables;
* ``_unparsable``: true for a record that could not be split into fields (a CSV line with the
  wrong number of fields or an unterminated quote, a JSON line that is not JSON, a 5-core line
  without a user and an item). Such a row is never dropped: validation quarantines it with reason
  ``unparsable_line``.

Adapters read lazily and never write; the building blocks that turn an already-read frame into
canonical rows (:func:`map_columns`, :func:`online_retail_rows`, :func:`amazon_5core_rows`,
:func:`diginetica_rows`, :func:`derive_items`) are pure DataFrame → DataFrame functions, so they
are testable on hand-made rows.

Formats (``ingest.format``):

``generated``
    the warehouse tables ``generated_events`` / ``generated_items`` (strings already).
``csv`` / ``parquet`` / ``json`` / ``delta``
    ``ingest.events`` (and optionally ``ingest.items``): a file, folder or glob (a table path
    for ``delta``); ``ingest.events_columns`` / ``ingest.items_columns`` map canonical names to
    source columns, a canonical name that the source already uses maps to itself, anything else
    is null. Typed source columns are rendered as strings (timestamps as ISO-8601 UTC, or with
    ``ingest.timestamp_format`` when set; structs, arrays and maps as JSON). Without
    ``ingest.items`` the items are derived from the event rows (see :func:`derive_items`).
``online-retail``
    the UCI "Online Retail" CSV files (see :func:`online_retail_rows`).
``amazon-5core``
    lines ``user_id item_id item_id ...`` (see :func:`amazon_5core_rows`).
``diginetica``
    CIKM Cup 2016 ``session_id;user_id;item_id;timeframe;eventdate`` (see :func:`diginetica_rows`).

Example::

    sources = read_sources(spark, cfg.ingest, warehouse)
    sources.events.select("user_id", "item_id", "ts", "_source", "_raw").show()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recaug_spark.config import IngestConfig
from recaug_spark.schemas import RAW_EVENT_FIELDS, RAW_ITEM_FIELDS

SOURCE = "_source"
RAW = "_raw"
UNPARSABLE = "_unparsable"
MARKER_COLUMNS = (SOURCE, RAW, UNPARSABLE)
ADAPTER_EVENT_COLUMNS = RAW_EVENT_FIELDS + MARKER_COLUMNS
ADAPTER_ITEM_COLUMNS = RAW_ITEM_FIELDS + MARKER_COLUMNS

GENERIC_FORMATS = ("csv", "parquet", "json", "delta")
GENERATED_EVENTS_TABLE = "generated_events"
GENERATED_ITEMS_TABLE = "generated_items"

# Columns a source must provide (directly or through the mapping); every other canonical column
# may be absent (null). Without these every row would be quarantined, so a missing one is a
# configuration error reported before Spark reads anything.
REQUIRED_EVENT_FIELDS = ("user_id", "item_id", "ts")
REQUIRED_ITEM_FIELDS = ("item_id",)

ISO_PATTERN = "yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'"
EPOCH_FORMATS = ("epoch_seconds", "epoch_millis")
_CORRUPT = "_corrupt_record"
_OVERFLOW = "_line_overflow"
_NO_SEPARATOR = "\x01"  # reading a CSV file with this separator and no quoting yields whole lines

ONLINE_RETAIL_COLUMNS = (
    "InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country",
)
DIGINETICA_COLUMNS = ("session_id", "user_id", "item_id", "timeframe", "eventdate")
# The 5-core files carry no timestamps: the item at position p (0 = oldest) of a user's line gets
# 2000-01-01T00:00:00Z + p seconds, which keeps each user's order and nothing else.
AMAZON_5CORE_EPOCH = 946_684_800  # 2000-01-01T00:00:00Z in Unix seconds
ANONYMOUS_SESSION_PREFIX = "session:"
_MAX_SESSION_MILLIS = 10**11  # ~3 years: a larger DIGINETICA timeframe is a bad timestamp


class SourceError(ValueError):
    """A source that cannot be read as configured; the message names the key to change."""


@dataclass(frozen=True)
class RawSources:
    """What an adapter returns.

    ``items_derived`` is true when the items were derived from the event rows (no independent
    catalog): then every event's item is in the items by construction, and the ``unknown_item``
    check is meaningless.
    """

    events: DataFrame
    items: DataFrame
    items_derived: bool


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------

def read_sources(
    spark: SparkSession,
    cfg: IngestConfig,
    warehouse=None,
    *,
    generated: tuple[str, str] = (GENERATED_EVENTS_TABLE, GENERATED_ITEMS_TABLE),
) -> RawSources:
    """Read the events and items named by ``cfg`` (lazily) as canonical raw string rows.

    ``warehouse`` (a :class:`recaug_spark.delta.Warehouse`) is needed for ``generated`` and
    ``delta``; ``generated`` names the generator's (events, items) tables (names or paths).
    """
    fmt = cfg.format
    if fmt == "generated":
        if warehouse is None:
            raise SourceError("ingest.format 'generated' reads the warehouse tables: pass a warehouse")
        return generated_sources(warehouse, *generated)
    if not cfg.events:
        raise SourceError(f"ingest.events is required when ingest.format is '{fmt}'")
    if cfg.items and fmt not in GENERIC_FORMATS:
        raise SourceError(f"ingest.items is not used by ingest.format '{fmt}' (its items come from the events "
                          f"file); unset it, or use format csv/parquet/json/delta with a column mapping")
    if fmt in GENERIC_FORMATS:
        return tabular_sources(spark, cfg, warehouse)
    if fmt == "online-retail":
        return online_retail_rows(read_csv(spark, cfg.events, header=True, columns=ONLINE_RETAIL_COLUMNS))
    if fmt == "amazon-5core":
        lines = spark.read.text(cfg.events).select(F.col("value"), F.col("_metadata.file_name").alias(SOURCE))
        return amazon_5core_rows(lines, event_type=cfg.default_event_type)
    if fmt == "diginetica":
        return diginetica_rows(read_csv(spark, cfg.events, sep=";", header=True, columns=DIGINETICA_COLUMNS))
    raise SourceError(f"unknown ingest.format {fmt!r}")  # unreachable: the config validates it


# --------------------------------------------------------------------------------------------
# Generated (warehouse) and generic tabular formats
# --------------------------------------------------------------------------------------------

def generated_sources(
    warehouse, events_table: str = GENERATED_EVENTS_TABLE, items_table: str = GENERATED_ITEMS_TABLE,
) -> RawSources:
    """The generator's ``generated_events`` / ``generated_items`` tables (string columns)."""
    from recaug_spark.delta import TableNotFoundError

    frames = []
    for table, fields in ((events_table, RAW_EVENT_FIELDS), (items_table, RAW_ITEM_FIELDS)):
        try:
            df = warehouse.read(table)
        except TableNotFoundError as error:
            raise SourceError(
                f"ingest.format is 'generated' but the warehouse has no table '{table}': run the generate "
                f"stage first (`recaug generate`) or set ingest.format to your source's format ({error})"
            ) from None
        frames.append(map_columns(df, {}, fields, source=F.lit(table), what=f"table {table}"))
    return RawSources(frames[0], frames[1], items_derived=False)


def tabular_sources(spark: SparkSession, cfg: IngestConfig, warehouse=None) -> RawSources:
    """``csv`` / ``parquet`` / ``json`` / ``delta`` sources with the configured column mapping."""
    events_frame, events_source = read_tabular(spark, cfg, cfg.events, warehouse)
    events = map_columns(
        events_frame, cfg.events_columns, RAW_EVENT_FIELDS, source=events_source,
        timestamp_format=cfg.timestamp_format, what="ingest.events_columns",
    )
    if cfg.items:
        items_frame, items_source = read_tabular(spark, cfg, cfg.items, warehouse)
        items = map_columns(items_frame, cfg.items_columns, RAW_ITEM_FIELDS, source=items_source,
                            what="ingest.items_columns")
        return RawSources(events, items, items_derived=False)
    # No catalog: the items are what the event rows say about them. The item id comes through the
    # events mapping; other item fields only where ingest.items_columns names an events column.
    item_mapping = {"item_id": cfg.events_columns.get("item_id", "item_id"), **cfg.items_columns}
    item_rows = map_columns(events_frame, item_mapping, RAW_ITEM_FIELDS, source=events_source,
                            what="ingest.items_columns (items derived from the events source)",
                            identity=False)
    return RawSources(events, derive_items(item_rows), items_derived=True)


def read_tabular(spark: SparkSession, cfg: IngestConfig, path: str, warehouse=None) -> tuple[DataFrame, Column]:
    """Read one generic source; returns the frame (source columns + ``_raw``/``_unparsable``)
    and the expression that names each row's source."""
    fmt = cfg.format
    if fmt == "csv":
        df = read_csv(spark, path, sep=cfg.csv_separator, header=cfg.csv_header)
        return df, F.col(SOURCE)
    if fmt == "json":
        reader = (spark.read.option("primitivesAsString", True).option("mode", "PERMISSIVE")
                  .option("columnNameOfCorruptRecord", _CORRUPT))
        df = reader.json(path)
        return _with_markers(df, F.col("_metadata.file_name")), F.col(SOURCE)
    if fmt == "parquet":
        df = spark.read.parquet(path)
        return _with_markers(df, F.col("_metadata.file_name")), F.col(SOURCE)
    if fmt == "delta":
        if warehouse is not None:
            df = warehouse.read(path)
        else:
            from recaug_spark.delta import read_table

            df = read_table(spark, path)
        return _with_markers(df, F.lit(path)), F.col(SOURCE)
    raise SourceError(f"ingest.format {fmt!r} is not a generic tabular format {GENERIC_FORMATS}")


def read_csv(
    spark: SparkSession, path: str, *, sep: str = ",", header: bool = True, columns: Sequence[str] | None = None,
) -> DataFrame:
    """Read CSV as string columns plus ``_source``, ``_raw`` (the verbatim line), ``_unparsable``.

    Nothing is dropped: a line with the wrong number of fields or a broken quote keeps its partial
    fields and gets ``_unparsable`` set. Each line is read whole first and then split with
    ``from_csv``, so that flag is exact whichever columns a later query reads (Spark's CSV reader
    only notices a short line when the query reads its missing columns). Quotes follow RFC 4180
    (``"a ""quoted"" word"``); blank lines are skipped; a record cannot span lines.

    ``columns`` fixes the expected header (a first file whose header differs raises
    :class:`SourceError`; Spark logs a warning for any other file whose header differs); by
    default the names come from the first file's header (``_c0``, ``_c1``, ... without one).
    """
    found = _csv_reader(spark, sep).option("header", header).csv(path).columns
    if columns is None:
        columns = found
    elif header and list(found) != list(columns):
        raise SourceError(f"{path}: expected the header {list(columns)} but the first file has {found}")
    whole = spark.read.option("sep", _NO_SEPARATOR).option("quote", "")
    # Name the line column after the header line, so Spark's per-file header check stays quiet
    # unless a file's header really differs.
    line_name = whole.option("header", True).csv(path).columns[0] if header else "line"
    line_schema = T.StructType([T.StructField(line_name, T.StringType()), T.StructField(_OVERFLOW, T.StringType())])
    lines = (
        whole.schema(line_schema).option("header", header).option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", _OVERFLOW).csv(path)
    )
    line = F.coalesce(F.col(_OVERFLOW), _col(line_name))  # a line holding the separator character overflows
    fields = T.StructType(
        [T.StructField(f"_c{i}", T.StringType()) for i in range(len(columns))]
        + [T.StructField(_CORRUPT, T.StringType())]
    )
    options = {"sep": sep, "quote": '"', "escape": '"', "mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT}
    # inline(array(...)) makes the parsed fields a generator's output: a later filter on them cannot
    # be pushed below the parse and made to parse every line again (as it is through a projection).
    parsed = lines.select(line.alias(RAW), F.col("_metadata.file_name").alias(SOURCE)).select(
        F.col(RAW), F.col(SOURCE), F.inline(F.array(F.from_csv(F.col(RAW), _ddl(fields), options))),
    )
    return parsed.select(
        *[F.col(f"_c{i}").alias(name) for i, name in enumerate(columns)],
        F.col(SOURCE), F.col(RAW), F.col(_CORRUPT).isNotNull().alias(UNPARSABLE),
    )


def _csv_reader(spark: SparkSession, sep: str):
    return spark.read.option("sep", sep).option("quote", '"').option("escape", '"')


def _ddl(schema: T.StructType) -> str:
    return ", ".join(f"`{f.name}` STRING" for f in schema.fields)


def _with_markers(df: DataFrame, source: Column) -> DataFrame:
    """Add ``_source``, ``_raw`` (verbatim corrupt record, else JSON of the row) and ``_unparsable``."""
    columns = [c for c in df.columns if c != _CORRUPT]
    row_json = F.to_json(F.struct(*[_col(c) for c in columns])) if columns else F.lit(None).cast("string")
    if _CORRUPT in df.columns:
        corrupt = F.col(_CORRUPT)
        raw, unparsable = F.coalesce(corrupt, row_json), corrupt.isNotNull()
    else:
        raw, unparsable = row_json, F.lit(False)
    return df.select(*[_col(c) for c in columns], source.alias(SOURCE), raw.alias(RAW), unparsable.alias(UNPARSABLE))


def map_columns(
    df: DataFrame,
    mapping: Mapping[str, str],
    fields: Sequence[str],
    *,
    source: Column | None = None,
    timestamp_format: str | None = None,
    what: str = "column mapping",
    identity: bool = True,
) -> DataFrame:
    """Select canonical ``fields`` as strings from ``df`` through ``mapping`` (canonical → source).

    A field that ``mapping`` does not name maps to the source column of the same name when there
    is one (``identity``), else it is null. Naming a column the source lacks, or leaving a required
    field (user_id, item_id, ts; item_id for items) without a column, raises :class:`SourceError`.
    ``_source`` comes from ``source`` (default: the frame's own ``_source``); ``_raw`` and
    ``_unparsable`` are carried over, or built from the row when the frame has none.

    Example::

        map_columns(df, {"user_id": "customer", "ts": "when"}, RAW_EVENT_FIELDS)
    """
    available = [c for c in df.columns if c not in MARKER_COLUMNS]
    missing = sorted(f"{what}.{k}={v!r}" for k, v in mapping.items() if v not in available)
    if missing:
        raise SourceError(f"{', '.join(missing)}: no such column in the source; its columns are {available}")
    required = REQUIRED_EVENT_FIELDS if fields == RAW_EVENT_FIELDS else REQUIRED_ITEM_FIELDS
    selected = []
    for name in fields:
        column = mapping.get(name, name if identity and name in available else None)
        if column is None:
            if name in required:
                raise SourceError(
                    f"{what}: no source column for the required field '{name}'; the source's columns are "
                    f"{available}: map one, e.g. --set {what.split(' ')[0]}.{name}=<column>"
                )
            selected.append(F.lit(None).cast("string").alias(name))
        else:
            selected.append(as_string(_col(column), df.schema[column].dataType, timestamp_format).alias(name))
    if RAW not in df.columns:
        df = _with_markers(df, source if source is not None else F.lit(None).cast("string"))
    source_column = source if source is not None else F.col(SOURCE)
    return df.select(*selected, source_column.cast("string").alias(SOURCE), F.col(RAW), F.col(UNPARSABLE))


def as_string(column: Column, data_type: T.DataType, timestamp_format: str | None = None) -> Column:
    """A typed source column as the string a text source would have held.

    Timestamps and dates render as ISO-8601 UTC (``2024-01-05T13:22:10.000000Z``) or, when
    ``timestamp_format`` is set, in that pattern (or as Unix seconds / milliseconds for
    ``epoch_seconds`` / ``epoch_millis``) so the validation parses them back with the same format.
    Structs, arrays and maps become JSON; everything else is cast.
    """
    if isinstance(data_type, T.StringType):
        return column
    if isinstance(data_type, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        instant = column.cast("timestamp")
        if timestamp_format == "epoch_seconds":
            return F.unix_seconds(instant).cast("string")
        if timestamp_format == "epoch_millis":
            return F.unix_millis(instant).cast("string")
        return F.date_format(instant, timestamp_format or ISO_PATTERN)
    if isinstance(data_type, (T.StructType, T.ArrayType, T.MapType)):
        return F.to_json(column)
    return column.cast("string")


def derive_items(item_rows: DataFrame) -> DataFrame:
    """One raw item row per distinct (item fields) among event rows that carry an item id.

    ``item_rows`` has the canonical item fields plus the marker columns, one row per event.
    Unparsable event lines and rows without an item id are left out (they are quarantined as
    events; deriving an item from them would report the same record twice). ``_source`` is the
    first source (by name) in which the row was seen; ``_raw`` is the JSON of the item fields.
    """
    fields = list(RAW_ITEM_FIELDS)
    usable = item_rows.where(~F.col(UNPARSABLE) & F.col("item_id").isNotNull() & (F.trim("item_id") != ""))
    grouped = usable.groupBy(*fields).agg(F.min(SOURCE).alias(SOURCE))
    return grouped.select(
        *fields, F.col(SOURCE), F.to_json(F.struct(*fields)).alias(RAW), F.lit(False).alias(UNPARSABLE),
    )


# --------------------------------------------------------------------------------------------
# Known public datasets
# --------------------------------------------------------------------------------------------

def online_retail_rows(df: DataFrame) -> RawSources:
    """UCI "Online Retail" rows (CSV columns as strings + markers) → canonical events and items.

    InvoiceNo → order_id, StockCode → item_id, CustomerID → user_id (``"17850.0"`` → ``"17850"``),
    Country → country, InvoiceDate → ts (``2010-12-01 08:26:00``, taken as UTC), UnitPrice → price.
    An invoice starting with ``C`` is a cancellation: event_type ``return`` with the quantity's
    leading minus removed; every other row is a ``purchase`` (its quantity as written, so a
    negative one is quarantined). Items: one row per distinct (StockCode, Description, UnitPrice)
    (title = Description); the clean stage picks one canonical text per item.
    """
    invoice = F.trim(F.col("InvoiceNo"))
    is_return = invoice.startswith("C")
    quantity = F.when(is_return, F.regexp_replace(F.trim("Quantity"), r"^-", "")).otherwise(F.col("Quantity"))
    fields = {
        "user_id": F.regexp_replace(F.col("CustomerID"), r"\.0+\s*$", ""),
        "item_id": F.col("StockCode"),
        "event_type": F.when(is_return, F.lit("return")).otherwise(F.lit("purchase")),
        "ts": F.col("InvoiceDate"),
        "quantity": quantity,
        "price": F.col("UnitPrice"),
        "order_id": F.col("InvoiceNo"),
        "country": F.col("Country"),
    }
    events = df.select(*_canonical(fields, RAW_EVENT_FIELDS), *[F.col(c) for c in MARKER_COLUMNS])
    item_rows = df.select(
        *_canonical({"item_id": F.col("StockCode"), "title": F.col("Description"), "price": F.col("UnitPrice")},
                    RAW_ITEM_FIELDS),
        *[F.col(c) for c in MARKER_COLUMNS],
    )
    return RawSources(events, derive_items(item_rows), items_derived=True)


def amazon_5core_rows(lines: DataFrame, *, event_type: str = "purchase") -> RawSources:
    """Lines ``user_id item_id item_id ...`` (oldest first; columns ``value``, ``_source``) → events.

    One event per item, with ts = 2000-01-01T00:00:00Z + (position in the line, from 0) seconds:
    the files carry no time, so only the order is real. ``event_type`` is the configured
    ``ingest.default_event_type``. A line parses when it holds at least two whitespace-separated
    tokens (a user and one item) and no comma or semicolon; any other non-blank line becomes ONE
    row with ``_unparsable`` set (so an input record is one (user, item) event of a parsed line or
    one unparsable line); blank lines carry nothing and are skipped. Items: the distinct item ids.
    """
    text = F.trim(F.col("value"))
    tokens = F.split(text, r"\s+")
    parsed = text.rlike(r"^[^\s,;]+(\s+[^\s,;]+)+$")
    # An unparsable line yields one row (a null item), so that it can be quarantined.
    item_tokens = F.when(parsed, F.slice(tokens, 2, F.size(tokens) - 1)).otherwise(F.array(F.lit(None).cast("string")))
    exploded = (
        lines.where(text != "")
        .select(
            F.col("value"), F.col(SOURCE), parsed.alias("_parsed"), tokens[0].alias("_user"),
            F.posexplode(item_tokens).alias("_pos", "_item"),
        )
    )
    ts = F.date_format(F.timestamp_seconds(F.lit(AMAZON_5CORE_EPOCH) + F.col("_pos")), "yyyy-MM-dd'T'HH:mm:ss'Z'")
    fields = {
        "user_id": F.when(F.col("_parsed"), F.col("_user")),
        "item_id": F.col("_item"),
        "event_type": F.when(F.col("_parsed"), F.lit(event_type)),
        "ts": F.when(F.col("_parsed"), ts),
    }
    raw = F.when(
        F.col("_parsed"),
        F.to_json(F.struct(
            F.col("_user").alias("user_id"), F.col("_item").alias("item_id"), F.col("_pos").alias("position"),
        )),
    ).otherwise(F.col("value"))
    events = exploded.select(
        *_canonical(fields, RAW_EVENT_FIELDS), F.col(SOURCE), raw.alias(RAW), (~F.col("_parsed")).alias(UNPARSABLE),
    )
    item_rows = events.select(*_canonical({"item_id": F.col("item_id")}, RAW_ITEM_FIELDS), *MARKER_COLUMNS)
    return RawSources(events, derive_items(item_rows), items_derived=True)


def diginetica_rows(df: DataFrame) -> RawSources:
    """DIGINETICA rows (``session_id;user_id;item_id;timeframe;eventdate`` as strings) → view events.

    ``user_id`` "NA" (or empty) is an anonymous session: the user becomes ``session:<session_id>``
    (prefixed so that a session id can never collide with a real user id). ts = eventdate
    (midnight UTC) + timeframe milliseconds, rendered ISO-8601; when either part does not parse,
    ts keeps the raw text (``<eventdate> + <timeframe>ms``) and the row is quarantined as
    ``bad_timestamp``. event_type is ``view``. Items: the distinct item ids.
    """
    user = F.trim(F.col("user_id"))
    anonymous = user.isNull() | (user == "") | (F.upper(user) == "NA")
    session = F.trim(F.col("session_id"))
    day = F.try_to_timestamp(F.trim(F.col("eventdate")), F.lit("yyyy-MM-dd"))
    millis = F.expr("try_cast(trim(timeframe) AS BIGINT)")
    computed = F.date_format(
        F.timestamp_millis(F.unix_millis(day) + millis), "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'",
    )
    in_range = millis.between(0, _MAX_SESSION_MILLIS)  # guards the addition against overflow
    ts = F.when(day.isNotNull() & in_range, computed).otherwise(
        F.concat_ws(" + ", F.col("eventdate"), F.concat(F.col("timeframe"), F.lit("ms")))
    )
    fields = {
        "user_id": F.when(anonymous & session.isNotNull() & (session != ""),
                          F.concat(F.lit(ANONYMOUS_SESSION_PREFIX), session)).when(~anonymous, F.col("user_id")),
        "item_id": F.col("item_id"),
        "event_type": F.lit("view"),
        "ts": ts,
        "session_id": F.col("session_id"),
    }
    events = df.select(*_canonical(fields, RAW_EVENT_FIELDS), *[F.col(c) for c in MARKER_COLUMNS])
    item_rows = df.select(*_canonical({"item_id": F.col("item_id")}, RAW_ITEM_FIELDS), *MARKER_COLUMNS)
    return RawSources(events, derive_items(item_rows), items_derived=True)


# --------------------------------------------------------------------------------------------

def _canonical(expressions: Mapping[str, Column], fields: Sequence[str]) -> list[Column]:
    """All ``fields`` in order, each from ``expressions`` or null, as strings."""
    return [
        (expressions[name] if name in expressions else F.lit(None)).cast("string").alias(name)
        for name in fields
    ]


def _col(name: str) -> Column:
    return F.col("`" + name.replace("`", "``") + "`")
