"""The item attribute generator on a planted catalog with known per-category distributions."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from recaug_spark import rng
from recaug_spark.augment.base import Draws
from recaug_spark.augment.item_ops import ItemState
from recaug_spark.augment.registry import build_item
from recaug_spark.generators import runtime
from recaug_spark.generators.artifacts import manifest
from recaug_spark.generators.attributes import AttributeGeneratorConfig, fit_attribute_generator

# category -> (median price, colours it has, pages attribute?)
PLANTED = {
    "books": (15.0, ["red", "blue"], True),
    "bikes": (900.0, ["black", "silver", "green"], False),
    "toys": (30.0, ["yellow", "red"], False),
}


def planted_items(per_category: int = 60, seed: int = 0) -> pd.DataFrame:
    r = np.random.default_rng(seed)
    rows = []
    for category, (median, colours, pages) in PLANTED.items():
        for i in range(per_category):
            attributes = {"color": colours[i % len(colours)], "material": "paper" if category == "books" else "metal"}
            if pages:
                attributes["pages"] = int(r.integers(100, 600))
            rows.append({"item_id": f"{category}-{i:03d}", "title": f"{colours[i % len(colours)]} {category} item",
                         "description": f"a {category} product for everyday use", "category": category,
                         "price": round(float(median * math.exp(r.normal(0, 0.2))), 2), "price_imputed": False,
                         "attributes": json.dumps(attributes)})
    rows.append({"item_id": "no-price", "title": "x", "description": None, "category": "toys", "price": None,
                 "price_imputed": False, "attributes": None})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def fitted(spark, tmp_path_factory):
    frame = planted_items()
    cfg = AttributeGeneratorConfig(epochs=120, seed=3)
    ref = fit_attribute_generator(spark.createDataFrame(frame), cfg, tmp_path_factory.mktemp("models"),
                                  trained_on={"items": 0})
    return frame, ref


def test_fidelity_ranks_the_vae_and_the_copula_above_independent_sampling(fitted):
    _, ref = fitted
    report = manifest(ref)["fidelity"]
    assert report["items"] == 180 and report["excluded"] == 1  # the item without a price is not trained on
    for method in ("vae", "copula"):
        assert report[method]["price_w1"] < report["independent"]["price_w1"] / 2, (method, report)
        assert report[method]["categorical_tvd"] < report["independent"]["categorical_tvd"], (method, report)
    assert report["independent"]["price_w1"] > 1.0  # prices of other categories: far off


def apply(ref, frame, copy=0, scale=1.0):
    op = build_item("attribute_generate", {"scale": scale})
    keys = rng.key_strings(frame["item_id"].tolist())  # keyed by item id, as the stage's apply_chain does
    return op.apply(frame, Draws(7, "items/0:0:attribute_generate", keys, copy), ItemState(generators={op.artifact: ref}))


def test_variants_respect_the_category_constraints(fitted):
    frame, ref = fitted
    items = frame[frame["price"].notna()].reset_index(drop=True)
    out = apply(ref, items, scale=3.0)  # far from the items: the constraints must still hold
    generator = runtime.load(ref)
    assert (out["category"] == items["category"]).all() and (out["item_id"] == items["item_id"]).all()
    assert (out["title"] == items["title"]).all()
    for _, row in out.iterrows():
        low, high = generator.schema.band[row.category]
        assert row.price > 0 and low - 1e-9 <= math.log(row.price) <= high + 1e-9
        attributes = json.loads(row.attributes)
        assert attributes["color"] in PLANTED[row.category][1]  # a colour the category has
        if row.category == "books":
            assert isinstance(attributes["pages"], int)  # integers stay integers
        else:
            assert "pages" not in attributes  # no attribute the item did not have
    medians = out.groupby("category")["price"].median()
    assert medians["books"] < medians["toys"] < medians["bikes"]


def test_variants_are_deterministic_per_seed_item_and_copy(fitted):
    frame, ref = fitted
    items = frame[frame["price"].notna()].reset_index(drop=True)
    first, again = apply(ref, items), apply(ref, items)
    pd.testing.assert_frame_equal(first, again)
    # the same item gives the same variant in another batch (keyed draws, no batch effect)
    part = apply(ref, items.iloc[50:70].reset_index(drop=True))
    pd.testing.assert_frame_equal(part, first.iloc[50:70].reset_index(drop=True))
    other_copy = apply(ref, items, copy=1)
    assert (first["price"] != other_copy["price"]).any()  # another copy: other draws


def test_missing_model_names_recaug_fit(fitted):
    frame, _ = fitted
    op = build_item("attribute_generate")
    with pytest.raises(ValueError, match="recaug fit"):
        op.apply(frame.head(2), Draws(1, "s", np.arange(2, dtype=np.uint64)), ItemState())
