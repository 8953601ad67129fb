"""Item operator ``attribute_generate``: long-tail item variants from the attribute VAE of ``recaug fit``.

The item is encoded, its latent code perturbed with keyed normal draws (``z = μ + scale·σ·ε``,
deterministic per seed, item and copy) and decoded: a new price and new categorical / numeric
attribute values, within the constraints of :mod:`recaug_spark.generators.attributes` (price > 0
and in the category's band, values the category has, integers stay integers). Title, description
and category are kept. The model is loaded once per Python worker (``runtime.load``).
"""

from __future__ import annotations

import pandas as pd
from pydantic import Field

from recaug_spark.augment.base import Draws, Params, register_item
from recaug_spark.augment.item_ops import ItemAugmenter, ItemState
from recaug_spark.generators.attributes import kinds_of, variants
from recaug_spark.generators.runtime import load, set_torch_threads


@register_item
class AttributeGenerate(ItemAugmenter):
    """New price and attributes for an item, decoded by the attribute VAE near the item's own code.

    When it helps: long-tail items with few interactions and sparse or noisy attributes: the
    model sees plausible attribute variants learned from the whole catalog of the category.
    """

    name = "attribute_generate"
    kind = "generator"

    class Params(Params):
        model: str = Field("item_attributes", description="artifact name in the models folder (recaug fit)")
        scale: float = Field(1.0, gt=0, le=5, description="multiplier of the posterior σ: larger = further from the item")

    @property
    def artifact(self) -> str:
        return self.params.model

    def apply(self, items: pd.DataFrame, draws: Draws, state: ItemState) -> pd.DataFrame:
        generator = load(state.require_generator(self.name, self.artifact))
        set_torch_threads()
        normals = draws.normals("latent", generator.model.mu.out_features)
        uniforms = draws.uniform("values", len(kinds_of(generator.schema)))
        out = items.copy()
        if len(items):
            prices, attributes = variants(generator, items, normals, uniforms, self.params.scale)
            out["price"] = prices
            out["attributes"] = attributes
            out["price_imputed"] = False
        return out
