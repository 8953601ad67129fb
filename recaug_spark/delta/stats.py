"""Delta per-file statistics (numRecords, minValues, maxValues, nullCount) from Parquet footers,
and the Arrow schema they are computed against."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import types as T

STATS_MAX_STRING = 32  # longer strings get no min/max: a truncated max would lie


def arrow_schema(schema: T.StructType) -> pa.Schema:
    """Spark schema → Arrow schema with every field nullable (Parquet files from Spark are)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    arrow = to_arrow_schema(schema)
    return pa.schema([field.with_nullable(True) for field in arrow])


def file_stats(metadata: pq.FileMetaData, arrow_schema: pa.Schema) -> dict:
    """Delta per-file statistics (numRecords, minValues, maxValues, nullCount) from a footer."""
    mins: dict = {}
    maxs: dict = {}
    nulls: dict = {}
    schema = metadata.schema.to_arrow_schema()
    for index, field in enumerate(schema):
        if pa.types.is_nested(field.type):
            continue
        low = high = None
        null_count = 0
        complete = True
        for group in range(metadata.num_row_groups):
            stats = metadata.row_group(group).column(index).statistics
            if stats is None:
                complete = False
                break
            null_count += stats.null_count or 0
            if stats.has_min_max:
                low = stats.min if low is None else min(low, stats.min)
                high = stats.max if high is None else max(high, stats.max)
        if not complete:
            continue
        nulls[field.name] = null_count
        for target, value in ((mins, low), (maxs, high)):
            encoded = _stat_value(value, field.type)
            if encoded is not None:
                target[field.name] = encoded
    return {"numRecords": metadata.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}


def _stat_value(value, arrow_type: pa.DataType):
    if value is None:
        return None
    if pa.types.is_timestamp(arrow_type):
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if pa.types.is_date(arrow_type):
        return value.isoformat()
    if isinstance(value, bytes):
        return None
    if isinstance(value, str):
        return value if len(value) <= STATS_MAX_STRING else None  # a truncated max would lie
    if isinstance(value, float) and value != value:
        return None
    return value
