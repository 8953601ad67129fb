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

__all__ = ["ITEM_REGISTRY", "REGISTRY", "build", "build_item", "time_based_uses"]


def build(name: str, params: dict | None = None) -> Augmenter:
    """A sequence augmenter from its config name and parameters; unknown names or parameters fail here."""
    return REGISTRY.build(name, params)


def build_item(name: str, params: dict | None = None) -> ItemAugmenter:
    """An item augmenter from its config name and parameters; unknown names or parameters fail here."""
    return ITEM_REGISTRY.build(name, params)


def time_based_uses(branches) -> list[str]:
    """What in ``branches`` (``BranchConfig``s) depends on real timestamps: operators that read
    time or time-derived sessions, and ``cold_start_days`` targeting; e.g.
    ``["branch 5 (synthetic_user): cold_start_days targeting"]``. Empty when nothing does."""
    uses = []
    for index, branch in enumerate(branches, 1):
        label = f"branch {index} ({branch.chain})"
        uses += [f"{label}: operator {name!r} reads timestamps" for name in branch.operators
                 if getattr(REGISTRY.get(name), "needs_real_time", False)]
        if branch.cold_start_days is not None:
            uses.append(f"{label}: cold_start_days targeting")
    return uses
