"""Item operator ``attribute_generate``: long-tail item variants from the attribute generator of ``recaug fit``.

Two methods, both fitted by ``recaug fit`` (:mod:`recaug_spark.generators.attributes`):

* ``vae``: the item is encoded, its latent code perturbed with keyed normal draws
  (``z = μ + scale·σ·ε``) and decoded;
* ``copula``: the item's normal scores under its category's Gaussian copula are moved to
  ``ρ·z + √(1−ρ²)·R·ε`` (``R Rᵀ`` the category's correlation, ``ρ = 1/√(1 + scale²)``) and mapped
  back through the category's empirical quantiles.

``auto`` (the default) uses the method with the better fidelity on held-out items, the
manifest's ``fidelity["chosen"]``. Either way: a new price and new categorical / numeric attribute
values, deterministic per seed, item and copy, within the same constraints (price > 0 and in the
category's band, values the category has, integers stay integers). Title, description and
category are kept. The model is loaded once per Python worker (``runtime.load``).
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
from pydantic import Field

from recaug_spark.augment.base import Draws, Params, register_item
from recaug_spark.augment.item_ops import ItemAugmenter, ItemState
from recaug_spark.generators.attributes import column_count, copula_variants, kinds_of, variants
from recaug_spark.generators.runtime import load, set_torch_threads


@register_item
class AttributeGenerate(ItemAugmenter):
    """New price and attributes for an item, generated near the item by the attribute generator.

    ``method: auto`` (default) uses the model with the better fidelity on held-out items (the
    fitted manifest's ``chosen``: the conditional VAE or the per-category Gaussian copula);
    ``vae`` or ``copula`` force one. Same seed, item and copy: same variant.

    When it helps: long-tail items with few interactions and sparse or noisy attributes: the
    model sees plausible attribute variants learned from the whole catalog of the category.
    """

    name = "attribute_generate"
    kind = "generator"

    class Params(Params):
        model: str = Field("item_attributes", description="artifact name in the models folder (recaug fit)")
        method: Literal["auto", "vae", "copula"] = Field(
            "auto", description="auto: the method with the better held-out fidelity (manifest's chosen); or force one")
        scale: float = Field(1.0, gt=0, le=5, description="distance from the item: multiplier of the VAE's posterior σ; "
                             "copula: noise-to-item ratio, ρ = 1/√(1 + scale²)")

    @property
    def artifact(self) -> str:
        return self.params.model

    def method(self, generator) -> str:
        """The method used with ``generator``: the parameter, or for ``auto`` the manifest's choice."""
        return generator.chosen if self.params.method == "auto" else self.params.method

    def apply(self, items: pd.DataFrame, draws: Draws, state: ItemState) -> pd.DataFrame:
        generator = load(state.require_generator(self.name, self.artifact))
        set_torch_threads()
        out = items.copy()
        if not len(items):
            return out
        if self.method(generator) == "copula":
            normals = draws.normals("copula", column_count(generator.schema))
            prices, attributes = copula_variants(generator, items, normals, self.params.scale)
        else:
            normals = draws.normals("latent", generator.model.mu.out_features)
            uniforms = draws.uniform("values", len(kinds_of(generator.schema)))
            prices, attributes = variants(generator, items, normals, uniforms, self.params.scale)
        out["price"] = prices
        out["attributes"] = attributes
        out["price_imputed"] = False
        return out
