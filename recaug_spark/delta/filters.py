"""Row and partition predicates: read filters applied to Spark rows, and the partitions an
overwrite replaces, spelled for each backend."""

from __future__ import annotations

from typing import Iterable, Mapping, Union

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recaug_spark.delta.base import DeltaError

# A SQL predicate ("dt >= '2024-01-01'") or delta-rs tuples ([("dt", ">=", "2024-01-01")]).
Filters = Union[str, list[tuple[str, str, object]], None]


def apply_filters(df: DataFrame, filters: Filters) -> DataFrame:
    """``df`` restricted to the rows that pass ``filters`` (all rows when there are none)."""
    if not filters:
        return df
    if isinstance(filters, str):
        return df.filter(filters)
    for column, op, value in filters:
        df = df.filter(_filter_expression(F.col(column), op, value))
    return df


def _filter_expression(column, op: str, value):
    ops = {
        "=": lambda: column == value, "!=": lambda: column != value, "<": lambda: column < value,
        "<=": lambda: column <= value, ">": lambda: column > value, ">=": lambda: column >= value,
        "in": lambda: column.isin(list(value)), "not in": lambda: ~column.isin(list(value)),
    }
    if op not in ops:
        raise DeltaError(f"unknown filter operator {op!r}; allowed: {sorted(ops)}")
    return ops[op]()


def replace_where(partitions: Mapping[str, Iterable]) -> str:
    """``{"dt": [d1, d2]}`` → the native writer's ``replaceWhere`` predicate ``\\`dt\\` IN ('d1', 'd2')``."""
    clauses = []
    for column, values in partitions.items():
        quoted = ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)
        clauses.append(f"`{column}` IN ({quoted})")
    return " AND ".join(clauses)


def partition_filters(partitions: Mapping[str, Iterable]) -> list[tuple[str, str, list[str]]]:
    """``{"dt": [d1, d2]}`` → the deltalake writer's ``partition_filters`` ``[("dt", "in", ["d1", "d2"])]``."""
    return [(column, "in", [str(v) for v in values]) for column, values in partitions.items()]
