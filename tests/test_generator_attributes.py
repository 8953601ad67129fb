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
from recaug_spark.generators.attributes import (
    TIE,
    AttributeGeneratorConfig,
    choose_method,
    fit_attribute_generator,
    holdout_mask,
)

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
    # measured on held-out items: 20% of each category (12 of 60), both models fitted on the other 48
    assert report["held_out"] == 36 and set(report["in_sample"]) == {"vae", "copula"}
    assert report["chosen"] == choose_method(report) and report["rule"]


def copula_items(per_category: int = 25, seed: int = 0) -> pd.DataFrame:
    """Three categories whose price and weight come from a Gaussian copula (correlation 0.95), the
    colour from the sign of the weight's normal score: few items, strongly dependent columns."""
    r = np.random.default_rng(seed)
    rows = []
    for category, (median, grams) in {"lamps": (20.0, 300), "sofas": (600.0, 30000), "rugs": (90.0, 4000)}.items():
        for i in range(per_category):
            z1 = r.normal()
            z2 = 0.95 * z1 + math.sqrt(1 - 0.95 ** 2) * r.normal()
            attributes = {"weight_g": int(grams * math.exp(0.2 * z2)), "color": "red" if z2 > 0 else "blue"}
            rows.append({"item_id": f"{category}-{i:02d}", "title": f"{category} {i}", "description": "",
                         "category": category, "price": round(median * math.exp(0.3 * z1), 2),
                         "price_imputed": False, "attributes": json.dumps(attributes)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def copula_fitted(spark, tmp_path_factory):
    """The copula catalog with a VAE too small and too briefly trained to learn it (one epoch)."""
    cfg = AttributeGeneratorConfig(latent=1, hidden=4, text_dims=0, epochs=1, lr=1e-4, seed=0)
    frame = copula_items()
    return frame, fit_attribute_generator(spark.createDataFrame(frame), cfg, tmp_path_factory.mktemp("copula_models"),
                                          trained_on={"items": 0})


def test_the_method_that_fits_held_out_items_better_is_chosen(copula_fitted):
    frame, ref = copula_fitted
    report = manifest(ref)["fidelity"]
    assert report["items"] == 75 and report["held_out"] == 15  # floor(20% of 25) per category
    for method in ("vae", "copula", "independent"):
        assert {"price_w1", "numeric_w1", "w1_mean", "categorical_tvd", "correlation_diff"} <= set(report[method])
    # the copula is the true model of the data; the untrained VAE lands on the band edges and the global weight
    assert report["copula"]["w1_mean"] < report["vae"]["w1_mean"] / 3, report
    assert report["chosen"] == "copula" and runtime.load(ref).chosen == "copula"


def test_the_holdout_is_a_deterministic_share_of_each_category():
    ids = [f"i{k}" for k in range(50)]
    categories = ["a"] * 40 + ["b"] * 6 + ["c"] * 4
    held = holdout_mask(ids, categories, 0.2, seed=1)
    assert (held == holdout_mask(ids, categories, 0.2, seed=1)).all()
    assert held[:40].sum() == 8 and held[40:46].sum() == 1 and held[46:].sum() == 0  # floor(20% of n)
    half = holdout_mask(ids, categories, 0.5, seed=1)
    assert half[:40].sum() == 20 and half[40:46].sum() == 3 and half[46:].sum() == 1  # at least 3 left to fit on
    assert (held != holdout_mask(ids, categories, 0.2, seed=2)).any()
    assert not holdout_mask(ids, categories, 0.0, seed=1).any()


def test_choice_rule_lower_w1_then_categorical_distance_then_the_copula():
    def report(vae_w1, vae_tvd, copula_w1, copula_tvd):
        return {"vae": {"w1_mean": vae_w1, "categorical_tvd": vae_tvd},
                "copula": {"w1_mean": copula_w1, "categorical_tvd": copula_tvd}}

    assert choose_method(report(0.1, 0.3, 0.2, 0.1)) == "vae"  # lower W1 wins, whatever the TVD
    assert choose_method(report(0.417, 0.1, 0.0875, 0.2)) == "copula"
    assert choose_method(report(0.1, 0.1, 0.1 + TIE / 2, 0.2)) == "vae"  # a W1 tie: the lower TVD
    assert choose_method(report(0.1 + TIE / 2, 0.2, 0.1, 0.1)) == "copula"
    assert choose_method(report(0.1, 0.1, 0.1, 0.1)) == "copula"  # still tied: the simpler model
    assert choose_method(report(float("nan"), 0.1, 0.5, 0.5)) == "copula"  # a missing figure loses


def apply(ref, frame, copy=0, scale=1.0, method="auto"):
    op = build_item("attribute_generate", {"scale": scale, "method": method})
    keys = rng.key_strings(frame["item_id"].tolist())  # keyed by item id, as the stage's apply_chain does
    return op.apply(frame, Draws(7, "items/0:0:attribute_generate", keys, copy), ItemState(generators={op.artifact: ref}))


@pytest.mark.parametrize("method", ["vae", "copula"])
def test_variants_respect_the_category_constraints(fitted, method):
    frame, ref = fitted
    items = frame[frame["price"].notna()].reset_index(drop=True)
    out = apply(ref, items, scale=3.0, method=method)  # far from the items: the constraints must still hold
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


@pytest.mark.parametrize("method", ["vae", "copula"])
def test_variants_are_deterministic_per_seed_item_and_copy(fitted, method):
    frame, ref = fitted
    items = frame[frame["price"].notna()].reset_index(drop=True)
    first, again = apply(ref, items, method=method), apply(ref, items, method=method)
    pd.testing.assert_frame_equal(first, again)
    # the same item gives the same variant in another batch (keyed draws, no batch effect)
    part = apply(ref, items.iloc[50:70].reset_index(drop=True), method=method)
    pd.testing.assert_frame_equal(part, first.iloc[50:70].reset_index(drop=True))
    other_copy = apply(ref, items, copy=1, method=method)
    assert (first["price"] != other_copy["price"]).any()  # another copy: other draws


def test_copula_variants_stay_near_the_item_for_a_small_scale(fitted):
    frame, ref = fitted
    items = frame[frame["price"].notna()].reset_index(drop=True)
    near, far = apply(ref, items, scale=0.01, method="copula"), apply(ref, items, scale=3.0, method="copula")
    near_gap = np.abs(np.log(near["price"] / items["price"]))
    far_gap = np.abs(np.log(far["price"] / items["price"]))
    # ρ ≈ 1: a fitted item maps back to its own value (a held-out one to its neighbour by rank)
    assert (near_gap < 1e-9).mean() > 0.6 and near_gap.median() < 0.01 < far_gap.median()
    colour = [json.loads(a)["color"] for a in items["attributes"]]
    assert np.mean([json.loads(a)["color"] == c for a, c in zip(near["attributes"], colour)]) > 0.9


def test_method_routes_to_the_vae_the_copula_or_the_chosen_one(fitted, copula_fitted):
    frame, ref = fitted
    items = frame[frame["price"].notna()].reset_index(drop=True)
    vae, copula = apply(ref, items, method="vae"), apply(ref, items, method="copula")
    assert (vae["price"] != copula["price"]).any()
    chosen = {"vae": vae, "copula": copula}[manifest(ref)["fidelity"]["chosen"]]
    pd.testing.assert_frame_equal(apply(ref, items), chosen)  # auto: the manifest's choice
    small, small_ref = copula_fitted  # chosen: the copula
    pd.testing.assert_frame_equal(apply(small_ref, small), apply(small_ref, small, method="copula"))
    assert not apply(small_ref, small).equals(apply(small_ref, small, method="vae"))


def test_missing_model_names_recaug_fit(fitted):
    frame, _ = fitted
    op = build_item("attribute_generate")
    with pytest.raises(ValueError, match="recaug fit"):
        op.apply(frame.head(2), Draws(1, "s", np.arange(2, dtype=np.uint64)), ItemState())
