"""The ``attributes`` column of items: a JSON object per item, read the same way everywhere.

Invalid JSON, a JSON value that is not an object, or a null all read as no attributes, so a messy
catalog never stops an augmentation or a model fit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from recaug_spark.text.tokens import split_token


def parse_attributes(attributes: str | None) -> dict:
    """The top-level object of an attributes JSON string; {} for null, invalid JSON or a non-object."""
    if not isinstance(attributes, str):
        return {}
    try:
        parsed = json.loads(attributes)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def is_number(value) -> bool:
    """A finite JSON number: an int or a float, not a boolean."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def numeric_attributes(attributes: str | None) -> dict[str, int | float]:
    """The JSON numbers (not strings, not booleans) at the top level of an attributes JSON object."""
    return {k: v for k, v in parse_attributes(attributes).items() if is_number(v)}


def attribute_words(attributes: str | None, keys: Sequence[str]) -> frozenset[str]:
    """Lower-case token cores of the values of ``keys`` in an item's attributes JSON."""
    if not keys:
        return frozenset()
    parsed = parse_attributes(attributes)
    words = set()
    for key in keys:
        value = parsed.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            words.update(split_token(t)[1].lower() for t in str(value).split())
    return frozenset(words)
