"""Source adapters: raw files or tables → raw string rows with canonical column names.

Every adapter returns a :class:`RawSources` pair of DataFrames whose columns are

* the canonical fields (``RAW_EVENT_FIELDS`` for events, ``RAW_ITEM_FIELDS`` for items), all
  strings, exactly as the source wrote them (no trimming, no type conversion: that is the
  validation's job, so a bad value is quarantined instead of silently becoming null);
* ``_source``: the file name (or table) the row came from;
* ``_raw``: the record as a human can read it: the verbatim record for CSV, JSON lines and line
  formats (invalid bytes as ``\\xNN``), else a JSON object of the source row (source column
  names) for Parquet, Delta and warehouse tables;
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

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Mapping, Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recaug_spark.config import IngestConfig
from recaug_spark.parsing import refusal_message
from recaug_spark.schemas import RAW_EVENT_FIELDS, RAW_ITEM_FIELDS
from recaug_spark.text_reader import TextSpec, first_record_fields, json_keys, list_files, read_text

SOURCE = "_source"
RAW = "_raw"
UNPARSABLE = "_unparsable"
REASON = "_reason"  # a reason found while reading (encoding, unparsable_line, duplicate_key, wrong_type) or null
ROW = "_row"  # logical record number in its file (header = 1), null where the source has none
OFFSET = "_offset"  # byte offset of the record in its (decompressed) file, null where not known
# Line formats only (amazon-5core): true on the one event row that starts its line (position 0, or
# the whole row of a line that could not be read), so ingest counts lines as well as events.
LINE_START = "_line_start"
MARKER_COLUMNS = (SOURCE, RAW, UNPARSABLE, REASON, ROW, OFFSET)
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
ONLINE_RETAIL_TIME_FORMATS = ("M/d/yyyy H:mm", "M/d/yyyy H:mm:ss")  # the UCI file's own spelling
EPOCH_FORMATS = ("epoch_seconds", "epoch_millis")

ONLINE_RETAIL_COLUMNS = (
    "InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country",
)
DIGINETICA_COLUMNS = ("session_id", "user_id", "item_id", "timeframe", "eventdate")
# The 5-core files carry no timestamps: the item at position p (0 = oldest) of a user's line gets
# 2000-01-01T00:00:00Z + p seconds, which keeps each user's order and nothing else.
AMAZON_5CORE_EPOCH = 946_684_800  # 2000-01-01T00:00:00Z in Unix seconds
# Sources whose timestamps carry order only (fabricated as above): ingest marks their events_raw
# commit with ORDER_ONLY_KEY = "true", and the augment stage refuses operators and targeting that
# read time on them (cold-start days, time and session operators would act on fabricated time).
ORDER_ONLY_FORMATS = frozenset({"amazon-5core"})
ORDER_ONLY_KEY = "recaug.order_only"
ANONYMOUS_SESSION_PREFIX = "session:"
_MAX_SESSION_MILLIS = 10**11  # ~3 years: a larger DIGINETICA timeframe is a bad timestamp


class SourceError(ValueError):
    """A source that cannot be read as configured; the message names the key to change."""


@contextmanager
def source_errors():
    """Turn a file refusal raised while reading (on the driver or inside a Spark task) into one
    :class:`SourceError` that names the file and what to do, instead of a Py4J trace."""
    try:
        yield
    except SourceError:
        raise
    except Exception as error:  # a FileRefusal, or the Spark exception wrapping one from a task
        message = refusal_message(str(error))
        if message is None:
            message = _corrupt_file_message(error)
        if message is None:
            raise
        raise SourceError(message) from None


def _corrupt_file_message(error: Exception) -> str | None:
    """A readable message for Spark's own errors on files that are not what they claim to be."""
    text = str(error)
    for marker, what in (("is not a Parquet file", "not a Parquet file (or truncated)"),
                         ("PATH_NOT_FOUND", "no such file or folder"),
                         ("FAILED_READ_FILE", "a file cannot be read (truncated or corrupt)")):
        if marker in text:
            first = next((line for line in text.splitlines() if marker in line), text.splitlines()[0])
            return f"{what}: {first.strip()[:500]}; check the path and ingest.format, nothing was written"
    return None


@dataclass(frozen=True)
class RawSources:
    """What an adapter returns.

    ``items_derived`` is true when the items were derived from the event rows (no independent
    catalog): then every event's item is in the items by construction, and the ``unknown_item``
    check is meaningless.
    ``events`` is None for a catalog-only ingest (``ingest.items`` without ``ingest.events``).
    """

    events: DataFrame | None
    items: DataFrame
    items_derived: bool
    # Derived items whose price is the events' own price column (online-retail's UnitPrice, or a
    # generic source whose ingest.items_columns.price is the events' price column): a bad price is
    # then quarantined with its event record, and ingest leaves the derived item row out.
    item_price_from_events: bool = False


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
        if cfg.items and fmt in GENERIC_FORMATS:
            return catalog_sources(spark, cfg, warehouse)
        raise SourceError(f"ingest.events is required when ingest.format is '{fmt}' (a catalog alone: "
                          f"ingest.items with format {'/'.join(GENERIC_FORMATS)})")
    if cfg.items and fmt not in GENERIC_FORMATS:
        raise SourceError(f"ingest.items is not used by ingest.format '{fmt}' (its items come from the events "
                          f"file); unset it, or use format csv/parquet/json/delta with a column mapping")
    if fmt in GENERIC_FORMATS:
        return tabular_sources(spark, cfg, warehouse)
    if fmt == "online-retail":
        return online_retail_rows(read_csv(spark, cfg.events, header=True, columns=ONLINE_RETAIL_COLUMNS,
                                           encoding=cfg.encoding))
    if fmt == "amazon-5core":
        files = _files(spark, cfg.events)
        lines = read_text(spark, cfg.events, TextSpec(kind="lines", encoding=cfg.encoding), files)
        return amazon_5core_rows(lines, event_type=cfg.default_event_type)
    if fmt == "diginetica":
        return diginetica_rows(read_csv(spark, cfg.events, sep=";", header=True, columns=DIGINETICA_COLUMNS,
                                        encoding=cfg.encoding), timestamp_formats(cfg))
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
        timestamp_formats=timestamp_formats(cfg), what="ingest.events_columns",
    )
    if cfg.items:
        return RawSources(events, catalog_sources(spark, cfg, warehouse).items, items_derived=False)
    # No catalog: the items are what the event rows say about them. The item id comes through the
    # events mapping; other item fields only where ingest.items_columns names an events column.
    item_mapping = {"item_id": cfg.events_columns.get("item_id", "item_id"), **cfg.items_columns}
    item_rows = map_columns(events_frame, item_mapping, RAW_ITEM_FIELDS, source=events_source,
                            what="ingest.items_columns (items derived from the events source)",
                            identity=False)
    return RawSources(events, derive_items(item_rows), items_derived=True,
                      item_price_from_events=item_price_from_events(cfg))


def catalog_sources(spark: SparkSession, cfg: IngestConfig, warehouse=None) -> RawSources:
    """The catalog ``ingest.items`` alone (``events`` None): a catalog-only ingest, or the items
    half of :func:`tabular_sources`."""
    frame, source = read_tabular(spark, cfg, cfg.items, warehouse)
    items = map_columns(frame, cfg.items_columns, RAW_ITEM_FIELDS, source=source, what="ingest.items_columns")
    return RawSources(None, items, items_derived=False)


def item_price_from_events(cfg: IngestConfig) -> bool:
    """True when items derived from a generic source take their price from the events' price column."""
    item_price = cfg.items_columns.get("price")
    return item_price is not None and item_price == cfg.events_columns.get("price", "price")


def read_tabular(spark: SparkSession, cfg: IngestConfig, path: str, warehouse=None) -> tuple[DataFrame, Column]:
    """Read one generic source; returns the frame (source columns + markers) and the expression
    that names each row's source."""
    fmt = cfg.format
    if fmt == "csv":
        df = read_csv(spark, path, sep=cfg.csv_separator, header=cfg.csv_header, encoding=cfg.encoding)
        return df, F.col(SOURCE)
    if fmt == "json":
        return read_json(spark, path, json_kinds(cfg), encoding=cfg.encoding, wanted=json_wanted(cfg)), F.col(SOURCE)
    if fmt == "parquet":
        return read_parquet(spark, path), F.col(SOURCE)
    if fmt == "delta":
        if warehouse is not None:
            df = warehouse.read(path)
        else:
            from recaug_spark.delta import read_table

            df = read_table(spark, path)
        return _with_markers(df, F.lit(path)), F.col(SOURCE)
    raise SourceError(f"ingest.format {fmt!r} is not a generic tabular format {GENERIC_FORMATS}")


_ID_FIELDS = ("user_id", "item_id", "session_id", "order_id", "ts")
_NUMBER_FIELDS = ("quantity", "price")


def json_kinds(cfg: IngestConfig) -> dict[str, str]:
    """What each mapped JSON key must hold: ``id`` (string or number), ``number``; the rest ``any``."""
    kinds: dict[str, str] = {}
    for mapping in (cfg.items_columns, cfg.events_columns):
        for name in RAW_EVENT_FIELDS + RAW_ITEM_FIELDS:
            column = mapping.get(name, name)
            if name in _NUMBER_FIELDS:
                kinds[column] = "number"
            elif name in _ID_FIELDS:
                kinds[column] = "id"
    return kinds


def _files(spark: SparkSession, path: str) -> list[str]:
    with source_errors():
        files = list_files(spark, path)
    if not files:
        raise SourceError(f"{path}: no files there (hidden and _-prefixed files are skipped); check ingest.events")
    return files


def json_wanted(cfg: IngestConfig) -> tuple[str, ...]:
    """JSON keys read even when the first objects of the first file lack them: the source column of
    every optional field (its ``ingest.events_columns`` / ``ingest.items_columns`` mapping, or its
    canonical name). Without them a key that first appears late (after the sampled lines, or in a
    later file) would be dropped silently. Required fields (user_id, item_id, ts) are left to the
    sample, so a file without them (or a misspelt mapping) is refused by :func:`map_columns`."""
    required = set(REQUIRED_EVENT_FIELDS) | set(REQUIRED_ITEM_FIELDS)
    wanted = [mapping.get(name, name) for mapping, fields in ((cfg.events_columns, RAW_EVENT_FIELDS),
                                                              (cfg.items_columns, RAW_ITEM_FIELDS))
              for name in fields if name not in required]
    return tuple(dict.fromkeys(wanted))


def read_json(spark: SparkSession, path: str, kinds: Mapping[str, str] | None = None, *,
              encoding: str | None = None, wanted: Sequence[str] = ()) -> DataFrame:
    """JSON lines (one object per line) as string columns (the keys of the first file's first
    objects, then the ``wanted`` keys they lack) plus the markers. A number keeps the text it was
    written with; objects and arrays become JSON. A line that is not a JSON object is
    ``unparsable_line``, a repeated key ``duplicate_key``, an object/array/boolean where an id is
    expected or a string where a number is, ``wrong_type`` (``kinds``: source key → id / number)."""
    files = _files(spark, path)
    with source_errors():
        columns = tuple(dict.fromkeys([*json_keys(files[0], encoding), *wanted]))
    kinds = kinds or {}
    spec = TextSpec(kind="json", columns=columns, kinds=tuple(kinds.get(c, "any") for c in columns),
                    encoding=encoding)
    return _marked(read_text(spark, path, spec, files), columns)


def read_parquet(spark: SparkSession, path: str) -> DataFrame:
    """Parquet files, each checked first (a truncated file or one that is not Parquet is refused);
    string values that are not valid UTF-8 get the reason ``encoding`` (their raw text in hex)."""
    files = _files(spark, path)
    with source_errors():
        for uri in files:
            _check_parquet(uri)
        df = spark.read.parquet(path)
    row = F.col("_metadata.row_index") + 1
    return _with_markers(df, F.col("_metadata.file_name"), row=row)


def _check_parquet(uri: str) -> None:
    import pyarrow.parquet as pq

    from recaug_spark.parsing import FileRefusal
    from recaug_spark.text_reader import file_name, open_uri

    try:
        with open_uri(uri) as stream:
            pq.read_metadata(stream)
    except Exception as error:  # ArrowInvalid / OSError: not Parquet, truncated, empty
        raise FileRefusal(file_name(uri), f"not a readable Parquet file ({str(error).splitlines()[0]}); "
                                          f"re-export it or remove it, nothing was written") from None


def read_csv(
    spark: SparkSession, path: str, *, sep: str = ",", header: bool = True, columns: Sequence[str] | None = None,
    encoding: str | None = None,
) -> DataFrame:
    """Read CSV (RFC 4180) as string columns plus the markers (:data:`MARKER_COLUMNS`).

    Nothing is dropped: a record with the wrong number of fields or a broken quote keeps its
    partial fields and gets ``_unparsable`` (reason ``unparsable_line``); a record with invalid
    UTF-8 or a NUL byte gets reason ``encoding``. Quoted fields may hold the separator, doubled
    quotes and line breaks; blank lines are skipped; ``_raw`` is the record exactly as written.

    ``columns`` names the columns to read, matched by name in every file's header (order and
    extra columns are free; a file lacking one raises :class:`SourceError` naming it); by
    default the first file's header (``_c0``, ``_c1``, ... without one).
    """
    files = _files(spark, path)
    probe = TextSpec(kind="csv", sep=sep, encoding=encoding)
    with source_errors():
        first = first_record_fields(files[0], probe)
        if columns is None:
            names = [c for c in first if c.strip()] if header else [f"_c{i}" for i in range(len(first))]
            columns = list(dict.fromkeys(names))
        elif header:
            from recaug_spark.parsing import header_index
            from recaug_spark.text_reader import file_name

            header_index(first, columns, file_name(files[0]))
    spec = TextSpec(kind="csv", columns=tuple(columns), sep=sep, header=header, encoding=encoding)
    return _marked(read_text(spark, path, spec, files), columns)


def _marked(df: DataFrame, columns: Sequence[str]) -> DataFrame:
    """The text reader's frame with ``_unparsable`` (any reading reason) in the marker order."""
    return df.select(*[_col(c) for c in columns], F.col(SOURCE), F.col(RAW),
                     F.col(REASON).isNotNull().alias(UNPARSABLE), F.col(REASON), F.col(ROW), F.col(OFFSET))


def _with_markers(df: DataFrame, source: Column, *, row: Column | None = None) -> DataFrame:
    """Add the markers to a typed frame: ``_raw`` = JSON of the row; reason ``encoding`` when a
    string value is not valid UTF-8 or holds a NUL (as for text files; its value then shown as
    ``0x<hex>`` in ``_raw``)."""
    columns = list(df.columns)
    strings = [c for c in columns if isinstance(df.schema[c].dataType, T.StringType)]
    valid = [F.coalesce(F.is_valid_utf8(_col(c)) & ~_col(c).contains("\x00"), F.lit(True)) for c in strings]
    all_valid = F.lit(True)
    for v in valid:
        all_valid = all_valid & v
    shown = [F.when(v, _col(c)).otherwise(F.concat(F.lit("0x"), F.hex(_col(c)))).alias(c) if c in strings
             else _col(c) for c, v in zip(columns, _spread(columns, strings, valid))]
    row_json = F.to_json(F.struct(*shown)) if columns else F.lit(None).cast("string")
    reason = F.when(~all_valid, F.lit("encoding")).cast("string")
    return df.select(*[_col(c) for c in columns], source.alias(SOURCE), row_json.alias(RAW), (~all_valid).alias(
        UNPARSABLE), reason.alias(REASON), (row if row is not None else F.lit(None)).cast("long").alias(ROW),
        F.lit(None).cast("long").alias(OFFSET))


def _spread(columns: Sequence[str], strings: Sequence[str], valid: Sequence[Column]) -> list:
    by_name = dict(zip(strings, valid))
    return [by_name.get(c, F.lit(True)) for c in columns]


def map_columns(
    df: DataFrame,
    mapping: Mapping[str, str],
    fields: Sequence[str],
    *,
    source: Column | None = None,
    timestamp_formats: Sequence[str | None] = (None,),
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
            data_type = df.schema[column].dataType
            epoch = set(timestamp_formats) & set(EPOCH_FORMATS)
            if name == "ts" and isinstance(data_type, T.IntegralType) and not epoch:
                raise SourceError(
                    f"{what}: the timestamp column {column!r} holds integers ({data_type.simpleString()}): say their "
                    f"unit with ingest.timestamp_format: epoch_seconds (or epoch_millis)"
                )
            selected.append(as_string(_col(column), data_type).alias(name))
    if RAW not in df.columns:
        df = _with_markers(df, source if source is not None else F.lit(None).cast("string"))
    source_column = source if source is not None else F.col(SOURCE)
    kinds = {REASON: "string", ROW: "long", OFFSET: "long"}
    position = [(F.col(c) if c in df.columns else F.lit(None)).cast(k).alias(c) for c, k in kinds.items()]
    return df.select(*selected, source_column.cast("string").alias(SOURCE), F.col(RAW), F.col(UNPARSABLE),
                     *position)


def timestamp_formats(cfg: IngestConfig) -> tuple[str | None, ...]:
    """The timestamp spellings accepted for ``cfg``'s format, in order (None = ISO-8601):
    ``ingest.timestamp_format`` (one pattern or a list), then the format's native spellings."""
    configured = cfg.timestamp_format
    formats = [configured] if isinstance(configured, str) else list(configured or [])
    if cfg.format == "diginetica":
        return (*formats, "yyyy-MM-dd")  # formats of its eventdate column
    native = (None, *ONLINE_RETAIL_TIME_FORMATS) if cfg.format == "online-retail" else (None,)
    return tuple(dict.fromkeys([*formats, *native]))


def as_string(column: Column, data_type: T.DataType) -> Column:
    """A typed source column as the string a text source would have held.

    Timestamps and dates render as ISO-8601 UTC (``2024-01-05T13:22:10.000000Z``; ISO is always
    among the accepted spellings); integers (epoch timestamps included) as their digits.
    Structs, arrays and maps become JSON; everything else is cast.
    """
    if isinstance(data_type, T.StringType):
        return column
    if isinstance(data_type, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        return F.date_format(column.cast("timestamp"), ISO_PATTERN)
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
    first = F.min(F.struct(F.col(SOURCE), F.col(ROW), F.col(OFFSET))).alias("_first")
    grouped = usable.groupBy(*fields).agg(first)
    return grouped.select(
        *fields, F.col("_first._source").alias(SOURCE), F.to_json(F.struct(*fields)).alias(RAW),
        F.lit(False).alias(UNPARSABLE), F.lit(None).cast("string").alias(REASON),
        F.col("_first._row").alias(ROW), F.col("_first._offset").alias(OFFSET),
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
    q = F.trim("Quantity")
    quantity = F.when(is_return & q.startswith("-"), F.substring(q, 2, 1 << 30)).otherwise(F.col("Quantity"))
    customer = F.trim("CustomerID")
    whole = F.expr("substring(trim(CustomerID), 1, length(trim(CustomerID)) - 2)")  # "17850.0" → "17850"
    fields = {
        "user_id": F.when(customer.endswith(".0"), whole).otherwise(F.col("CustomerID")),
        "item_id": F.col("StockCode"),
        "event_type": F.when(is_return, F.lit("return")).otherwise(F.lit("purchase")),
        "ts": F.col("InvoiceDate"),
        "quantity": quantity,
        "price": F.col("UnitPrice"),
        "order_id": F.col("InvoiceNo"),
        "country": F.col("Country"),
    }
    events = df.select(*_canonical(fields, RAW_EVENT_FIELDS), *_markers(df))
    item_rows = df.select(
        *_canonical({"item_id": F.col("StockCode"), "title": F.col("Description"), "price": F.col("UnitPrice")},
                    RAW_ITEM_FIELDS),
        *_markers(df),
    )
    return RawSources(events, derive_items(item_rows), items_derived=True, item_price_from_events=True)


def amazon_5core_rows(lines: DataFrame, *, event_type: str = "purchase") -> RawSources:
    """5-core lines ``user_id item_id item_id ...`` (oldest first) → events.

    ``lines`` is the text reader's line frame: ``_fields`` (the line's whitespace-separated
    tokens, null when the line is not a 5-core line: fewer than two tokens, or a comma or
    semicolon in it) plus the markers. One event per item, with ts = 2000-01-01T00:00:00Z +
    (position in the line, from 0) seconds: the files carry no time, so only the order is real
    (the source is order-only). ``event_type`` is the configured ``ingest.default_event_type``.
    A line that cannot be read becomes ONE row with ``_unparsable`` set, so an input record is
    one (user, item) event of a read line or one whole bad line; ``_line_start`` (after the
    markers) is true on the first row of each line, so lines are countable too. Items: the
    distinct item ids.
    """
    parsed = F.col("_fields").isNotNull() & F.col(REASON).isNull()
    item_tokens = F.when(parsed, F.slice("_fields", 2, F.size("_fields") - 1)).otherwise(
        F.array(F.lit(None).cast("string")))
    exploded = lines.select(
        F.col(SOURCE), F.col(RAW), F.col(REASON), F.col(ROW), F.col(OFFSET), parsed.alias("_parsed"),
        F.col("_fields")[0].alias("_user"), F.posexplode(item_tokens).alias("_pos", "_item"),
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
    ).otherwise(F.col(RAW))
    reason = F.when(~F.col("_parsed"), F.coalesce(F.col(REASON), F.lit("unparsable_line")))
    events = exploded.select(
        *_canonical(fields, RAW_EVENT_FIELDS), F.col(SOURCE), raw.alias(RAW), (~F.col("_parsed")).alias(UNPARSABLE),
        reason.alias(REASON), F.col(ROW), F.col(OFFSET), (F.col("_pos") == 0).alias(LINE_START),
    )
    item_rows = events.select(*_canonical({"item_id": F.col("item_id")}, RAW_ITEM_FIELDS), *MARKER_COLUMNS)
    return RawSources(events, derive_items(item_rows), items_derived=True)


def diginetica_rows(df: DataFrame, date_formats: Sequence[str | None] = ("yyyy-MM-dd",)) -> RawSources:
    """DIGINETICA rows (``session_id;user_id;item_id;timeframe;eventdate`` as strings) → view events.

    ``user_id`` "NA" (or empty) is an anonymous session: the user becomes ``session:<session_id>``
    (prefixed so that a session id can never collide with a real user id). ts = eventdate
    (midnight UTC) + timeframe milliseconds, rendered ISO-8601; when either part does not parse,
    ts keeps the raw text (``<eventdate> + <timeframe>ms``) and the row is quarantined as
    ``bad_timestamp``. ``date_formats``: the eventdate spellings tried in order (None = ISO).
    event_type is ``view``. Items: the distinct item ids.
    """
    user = F.trim(F.col("user_id"))
    anonymous = user.isNull() | (user == "") | (F.upper(user) == "NA")
    session = F.trim(F.col("session_id"))
    day = F.coalesce(*[F.try_to_timestamp(F.trim(F.col("eventdate")), *([F.lit(f)] if f else []))
                       for f in date_formats])
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
    events = df.select(*_canonical(fields, RAW_EVENT_FIELDS), *_markers(df))
    item_rows = df.select(*_canonical({"item_id": F.col("item_id")}, RAW_ITEM_FIELDS), *_markers(df))
    return RawSources(events, derive_items(item_rows), items_derived=True)


# --------------------------------------------------------------------------------------------

def _canonical(expressions: Mapping[str, Column], fields: Sequence[str]) -> list[Column]:
    """All ``fields`` in order, each from ``expressions`` or null, as strings."""
    return [
        (expressions[name] if name in expressions else F.lit(None)).cast("string").alias(name)
        for name in fields
    ]


def _markers(df: DataFrame) -> list[Column]:
    """The marker columns of ``df``; the reading reason and position are null where it lacks them."""
    kinds = {REASON: "string", ROW: "long", OFFSET: "long"}
    return [F.col(c) if c in df.columns else F.lit(None).cast(kinds[c]).alias(c) for c in MARKER_COLUMNS]


def _col(name: str) -> Column:
    return F.col("`" + name.replace("`", "``") + "`")
