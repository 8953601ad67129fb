"""Size and unit tokens: words of a title that name a size or a measure and must never be edited.

A synonym for ``l`` (large, or litre) or a shuffled ``40 cm`` would change what the item is, so the
text operators protect these tokens and the lexicon never offers them as synonyms.
"""

from __future__ import annotations

SIZE_TOKENS = frozenset({
    "xxxs", "xxs", "xs", "s", "m", "l", "xl", "xxl", "xxxl", "xxxxl", "small", "medium", "large", "mini", "petite",
    "regular", "tall", "one-size", "onesize", "os", "sm", "md", "lg",
})
UNIT_TOKENS = frozenset({
    "mm", "cm", "dm", "m", "km", "inch", "inches", "ft", "feet", "foot", "yd", "mi", "g", "gr", "kg", "mg", "lb",
    "lbs", "oz", "ml", "cl", "dl", "l", "ltr", "litre", "litres", "liter", "liters", "gal", "floz", "w", "kw",
    "v", "mah", "wh", "kwh", "hz", "khz", "mhz", "ghz", "mb", "gb", "tb", "px", "dpi", "pcs", "pc", "pk",
    "mp", "rpm", "psi", "bar", "°c", "°f",
})
