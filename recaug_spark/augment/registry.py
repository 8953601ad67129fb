"""Every operator usable from config, by name: the one place that imports all operator modules.

Operator classes register themselves under their config name when their module is imported
(``base.register`` / ``base.register_item``); importing this module imports them all, so its
registries are complete. Build operators here, never through an operator module.
"""

from __future__ import annotations

from recaug_spark.augment import (  # noqa: F401  (importing them registers their operators)
    attribute_ops,
    balance_ops,
    catalog_ops,
    context_ops,
    description_ops,
    generator_ops,
    item_ops,
    sequence_ops,
    time_ops,
)
from recaug_spark.augment.base import ITEM_REGISTRY, REGISTRY, Augmenter
from recaug_spark.augment.item_ops import ItemAugmenter

__all__ = ["ITEM_REGISTRY", "REGISTRY", "build", "build_item"]


def build(name: str, params: dict | None = None) -> Augmenter:
    """A sequence augmenter from its config name and parameters; unknown names or parameters fail here."""
    return REGISTRY.build(name, params)


def build_item(name: str, params: dict | None = None) -> ItemAugmenter:
    """An item augmenter from its config name and parameters; unknown names or parameters fail here."""
    return ITEM_REGISTRY.build(name, params)
