"""Item augmentation: EDA text operators and feature noise (known answers, no Spark), then the
Spark stage (real rows kept exactly, long-tail targeting, partition-independent output)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from recaug_spark.augment.base import AugmenterError
from recaug_spark.augment.item_ops import (
    FeatureStat,
    ItemState,
    apply_chain,
    fit_feature_stats,
    is_protected,
    protected_mask,
)
from recaug_spark.augment.registry import ITEM_REGISTRY, build_item
from recaug_spark.config import (
    ConfigError,
    ItemAugmentConfig,
    ItemBranchConfig,
    load_config,
)
from recaug_spark.schemas import REAL_CHAIN
from recaug_spark.text.lexicon import Lexicon, wordnet_lexicon
from recaug_spark.text.tokens import tokenize

LEXICON = Lexicon.from_mapping({"shirt": ["tee"], "soft": ["mild"], "warm": ["cozy"]},
                               known=["blue", "red", "made", "cotton", "acme"])
TEXT_OPS = ("synonym_replace", "random_insert", "random_swap", "random_delete")


def frame(*titles, attributes=None, prices=None, category="tops"):
    n = len(titles)
    return pd.DataFrame({
        "item_id": [f"I{i:04d}" for i in range(n)], "title": list(titles), "description": [None] * n,
        "category": [category] * n, "price": prices if prices is not None else [10.0] * n,
        "price_imputed": [False] * n, "attributes": attributes if attributes is not None else [None] * n,
    })


def run(op_name, items, params=None, *, state=None, seed=7, copy=0, branch=0):
    op = build_item(op_name, {"fields": ["title"], **(params or {})} if op_name in TEXT_OPS else params)
    return apply_chain(items, [op], state or ItemState(lexicon=LEXICON), seed=seed, branch=branch, copy=copy)


def protected_tokens(text, lexicon=LEXICON, extra=frozenset()):
    tokens = tokenize(text)
    return ["".join(t) for t, p in zip(tokens, protected_mask(tokens, lexicon, extra)) if p]


# --------------------------------------------------------------------------------------------
# Registry and protection rule


def test_registry_names_every_operator_and_rejects_unknown_ones():
    assert set(ITEM_REGISTRY) == {"synonym_replace", "random_insert", "random_swap", "random_delete", "price_noise",
                                  "feature_noise", "attribute_generate", "describe_expand"}
    with pytest.raises(AugmenterError, match="known: .*price_noise.*synonym_replace"):
        build_item("synonym_swap")
    with pytest.raises(AugmenterError, match="allowed: .*alpha"):
        build_item("random_swap", {"alpa": 0.1})
    with pytest.raises(AugmenterError, match="fields"):
        build_item("random_delete", {"fields": ["sku"]})


@pytest.mark.parametrize("core, start, protected", [
    ("40cm", False, True), ("2-person", False, True), ("700x25c", False, True), ("xl", False, True),
    ("cm", False, True), ("kg", False, True), (",", False, True), ("Stridewell", False, True),
    ("stridewell", False, True),  # unknown to the lexicon: brand-like
    ("Shirt", True, False), ("Shirt", False, True), ("sHirt", True, True), ("shirt", False, False),
    ("the", False, False),  # a stop word is a word, not a brand
])
def test_protection_rule(core, start, protected):
    assert is_protected(core, start, LEXICON) is protected


# --------------------------------------------------------------------------------------------
# Text operators: known answers


def test_synonym_replace_changes_every_replaceable_word_and_no_protected_one():
    items = frame("blue shirt 40cm", "acme shirt, xl", attributes=[None, '{"brand": "acme"}'])
    lexicon = Lexicon.from_mapping({"shirt": ["tee"], "acme": ["peak"]}, known=["blue"])
    out = run("synonym_replace", items, {"alpha": 1.0}, state=ItemState(lexicon=lexicon))
    assert out["title"].tolist() == ["blue tee 40cm", "acme tee, xl"]  # acme: the item's brand
    assert out["description"].isna().all() and out["price"].tolist() == items["price"].tolist()
    assert run("synonym_replace", frame("Soft warm shirt."), {"alpha": 1.0})["title"][0] == "Mild cozy tee."


def test_synonym_replace_changes_floor_alpha_times_words():
    out = run("synonym_replace", frame("soft warm shirt made of cotton"), {"alpha": 0.4})
    changed = [a != b for a, b in zip(["soft", "warm", "shirt", "made", "of", "cotton"], out["title"][0].split())]
    assert sum(changed) == 2  # floor(0.4 · 6) words, among the three with synonyms


def test_random_swap_makes_the_given_number_of_swaps_among_movable_words():
    out = run("random_swap", frame("red soft warm shirt"), {"alpha": 0.25})  # one swap
    before, after = ["red", "soft", "warm", "shirt"], out["title"][0].split()
    assert sorted(before) == sorted(after) and sum(a != b for a, b in zip(before, after)) == 2
    out = run("random_swap", frame("red shirt 40 cm, xl"), {"alpha": 1.0})
    assert out["title"][0] in {"red shirt 40 cm, xl", "shirt red 40 cm, xl"}
    assert out["title"][0].endswith(" 40 cm, xl")


def test_random_delete_removes_unprotected_words_only_and_never_everything():
    out = run("random_delete", frame("blue shirt 40cm", "soft warm shirt", "Stridewell 40cm"), {"alpha": 1.0})
    assert out["title"][0] == "40cm"
    assert out["title"][1] in {"soft", "warm", "shirt"}  # all would go: the one with the largest draw stays
    assert out["title"][2] == "Stridewell 40cm"  # nothing to delete: unchanged


def test_random_insert_adds_synonyms_never_splitting_protected_neighbours():
    out = run("random_insert", frame("blue shirt"), {"alpha": 1.0})
    assert out["title"][0].split().count("tee") == 2 and len(out["title"][0].split()) == 4  # floor(1 · 2) inserts
    for seed in range(30):
        title = run("random_insert", frame("shirt 40 cm"), {"alpha": 1.0}, seed=seed)["title"][0]
        assert "40 cm" in title and [w for w in title.split() if w != "tee"] == ["shirt", "40", "cm"]


def test_text_without_candidates_or_null_is_returned_verbatim():
    items = frame("Stridewell  XL  40cm", None)
    for name in TEXT_OPS:
        assert run(name, items, {"alpha": 1.0})["title"].tolist()[0] == "Stridewell  XL  40cm"
        assert run(name, items, {"alpha": 1.0})["title"].isna().tolist() == [False, True]


WORDS = ["blue", "red", "shirt", "soft", "warm", "made", "cotton", "the", "of", "40cm", "xl", "cm", "2",
         "Stridewell", "acme", "Blue,", "shirt.", "-", "kg"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=12), min_size=1, max_size=5),
       st.sampled_from(TEXT_OPS), st.floats(0.05, 1.0), st.integers(0, 2**31))
def test_protected_tokens_keep_their_order_and_count(titles, name, alpha, seed):
    texts = [" ".join(t) for t in titles]
    items = frame(*texts, attributes=['{"brand": "acme"}'] * len(texts))
    out = run(name, items, {"alpha": alpha}, seed=seed)
    for before, after in zip(texts, out["title"]):
        protected = protected_tokens(before, extra=frozenset({"acme"}))
        tokens = after.split()
        assert tokens and is_subsequence(protected, tokens)  # never changed, dropped or reordered
        for token in set(protected):
            assert tokens.count(token) >= protected.count(token)
        cores = {t[1] for t in tokenize(before)} | {"tee", "mild", "cozy"}  # words come from the text or the lexicon
        assert {t[1] for t in tokenize(after)} <= cores


def is_subsequence(part, whole):
    rest = iter(whole)
    return all(any(x == y for y in rest) for x in part)


def test_determinism_is_per_item_seed_and_copy():
    titles = [f"soft warm shirt {i} made of red cotton" for i in range(300)]  # more than one chunk of draws
    items = frame(*titles)
    op = [build_item("random_swap", {"alpha": 0.5}), build_item("synonym_replace")]
    state = ItemState(lexicon=LEXICON)
    first = apply_chain(items, op, state, seed=3, branch=1, copy=0)
    assert first.equals(apply_chain(items, op, state, seed=3, branch=1, copy=0))
    shuffled = items.iloc[::-1].reset_index(drop=True)  # batch composition and order do not matter
    alone = pd.concat([apply_chain(shuffled.iloc[i:i + 70], op, state, seed=3, branch=1, copy=0)
                       for i in range(0, 300, 70)]).sort_values("item_id").reset_index(drop=True)
    assert alone["title"].tolist() == first["title"].tolist()
    for other in (apply_chain(items, op, state, seed=3, branch=1, copy=1),
                  apply_chain(items, op, state, seed=4, branch=1, copy=0)):
        assert (other["title"] != first["title"]).sum() > 150


# --------------------------------------------------------------------------------------------
# Noise operators


def catalog(n=2000, seed=0):
    r = np.random.default_rng(seed)
    prices = np.round(np.exp(r.normal(np.log(40), 0.5, n)), 2)
    weights = r.integers(100, 900, n)
    attributes = [json.dumps({"weight_g": int(w), "size": "42", "rating": 4.5}) for w in weights]
    items = frame(*[f"item {i}" for i in range(n)], prices=list(prices), attributes=attributes)
    items.loc[:9, "category"] = "gifts"
    items.loc[0, "price"] = np.nan
    return items


def test_feature_stats_are_per_category_and_feature():
    stats = fit_feature_stats(catalog())
    assert set(stats) == {(c, f) for c in ("tops", "gifts") for f in ("price", "attributes.weight_g",
                                                                       "attributes.rating")}
    price = catalog()["price"][10:].to_numpy()
    q25, q75 = np.percentile(price, [25, 75])
    tops = stats["tops", "price"]
    assert (tops.n, tops.lo, tops.hi) == (1990, price.min(), price.max())
    assert tops.iqr_sigma == pytest.approx((q75 - q25) / 1.349) and tops.integral is False
    assert stats["tops", "attributes.weight_g"].integral and stats["tops", "attributes.rating"].std == 0
    values = [5.0, 5.0, 5.0, 5.0, 9.0]  # IQR 0: the standard deviation instead
    assert FeatureStat.from_values(values).spread("iqr") == pytest.approx(np.std(values, ddof=1))


def test_price_noise_has_the_expected_spread_and_stays_in_range():
    items = catalog()
    state = ItemState(stats=fit_feature_stats(items))
    out = run("price_noise", items, {"rel_sigma": 0.1}, state=state)
    tops = state.stats["tops", "price"]
    new, old = out["price"].to_numpy(), items["price"].to_numpy()
    assert np.isnan(new[0])  # no price: unchanged
    rows = items["category"].to_numpy() == "tops"
    assert (new[rows] >= tops.lo).all() and (new[rows] <= tops.hi).all() and (new[1:] > 0).all()
    assert np.allclose(new[1:], np.round(new[1:], 2))
    inner = rows & (old > tops.lo + 4 * 0.1 * tops.iqr_sigma) & (old < tops.hi - 4 * 0.1 * tops.iqr_sigma)
    assert np.std(new[inner] - old[inner]) == pytest.approx(0.1 * tops.iqr_sigma, rel=0.1)
    assert abs(np.mean(new[inner] - old[inner])) < 0.1 * tops.iqr_sigma * 0.1


def test_feature_noise_keeps_integers_strings_and_bounds():
    items = catalog(300)
    state = ItemState(stats=fit_feature_stats(items))
    out = run("feature_noise", items, {"rel_sigma": 0.2, "features": ["weight_g"]}, state=state)
    stat = state.stats["tops", "attributes.weight_g"]
    changed = 0
    for before, after, category in zip(items["attributes"], out["attributes"], items["category"]):
        b, a = json.loads(before), json.loads(after)
        assert isinstance(a["weight_g"], int) and a["size"] == "42" and a["rating"] == 4.5  # not in `features`
        if category == "tops":
            assert stat.lo <= a["weight_g"] <= stat.hi
        changed += a["weight_g"] != b["weight_g"]
    assert changed > 250 and out["price"].equals(items["price"])


def test_real_wordnet_lexicon_is_bundled_and_restricted_to_the_vocabulary():
    lexicon = wordnet_lexicon({"jacket", "shoes", "headphones", "stridewell", "waterproof", "running"})
    assert lexicon.name == "wordnet@3.0"
    assert lexicon.knows("shoes") and lexicon.knows("running") and not lexicon.knows("stridewell")
    assert "earphones" in lexicon.synonyms_of("headphones") and "rainproof" in lexicon.synonyms_of("waterproof")
    assert set(lexicon.synonyms) <= {"jacket", "shoes", "headphones", "stridewell", "waterproof", "running"}


# --------------------------------------------------------------------------------------------
# Config


def test_item_config_validates_operators_and_params_like_sequence_branches():
    with pytest.raises(ValidationError, match="known: .*random_swap"):
        ItemBranchConfig(chain="synonym_replace > shuffle_words")
    with pytest.raises(ValidationError, match="not in the chain"):
        ItemBranchConfig(chain="random_swap", params={"price_noise": {"rel_sigma": 0.1}})
    with pytest.raises(ConfigError, match="augment.items.branches.0.*known"):
        load_config(overrides=["augment.items.branches=[{chain: 'synonym_replace > nope'}]"])
    cfg = load_config(overrides=["augment.items.branches=[{chain: 'random_delete > feature_noise', copies: 2}]"])
    assert cfg.augment.items.branches[0].operators == ["random_delete", "feature_noise"]
    defaults = ItemAugmentConfig()
    assert defaults.long_tail_only and {b.chain for b in defaults.branches} == {
        "synonym_replace", "price_noise", "attribute_generate", "describe_expand"}


# --------------------------------------------------------------------------------------------
# The Spark stage

SPARK_CFG = ItemAugmentConfig(long_tail_share=0.5, branches=(
    ItemBranchConfig(chain="synonym_replace > random_swap", copies=2, params={"synonym_replace": {"alpha": 0.3}}),
    ItemBranchConfig(chain="price_noise", long_tail_only=False),
    ItemBranchConfig(chain="random_delete > feature_noise", params={"random_delete": {"alpha": 0.3}}),
))
NOUNS = ["jacket", "shirt", "backpack", "tent", "lantern", "kettle", "blanket"]
ADJECTIVES = ["waterproof", "warm", "light", "durable", "quick", "soft"]


def item_rows(n=60):
    rows = []
    for i in range(n):
        noun, adjective = NOUNS[i % len(NOUNS)], ADJECTIVES[(i * 5) % len(ADJECTIVES)]
        attributes = json.dumps({"brand": "Trailpeak", "weight_g": 200 + 37 * i, "size": "M"})
        rows.append((f"I{i:03d}", f"trailpeak {adjective} {noun}, size m", f"a {adjective} {noun} made for long trips.",
                     ["outdoor", "home", None][i % 3], 10.0 + (i * 7) % 50, i % 11 == 0, attributes))
    return rows


@pytest.fixture(scope="module")
def spark_items(spark):
    from recaug_spark.schemas import ITEMS, SEQUENCES

    items = spark.createDataFrame(item_rows(), ITEMS)
    sequences = spark.createDataFrame(
        [(f"u{u}", [f"I{(u * k) % 20:03d}" for k in range(1, 6)], [dt.datetime(2024, 1, 1)] * 5, ["view"] * 5,
          ["s"] * 5, None, None, 5) for u in range(30)], SEQUENCES)
    return items, sequences


@pytest.fixture(scope="module")
def augmented(spark_items):
    items, sequences = spark_items
    one = augment_rows(items.repartition(1), sequences, partitions=1)
    four = augment_rows(items.repartition(3), sequences, partitions=4)
    return one, four


def augment_rows(items, sequences, partitions):
    from recaug_spark.stages.augment_items import augment_items

    out = augment_items(items, sequences, SPARK_CFG, 11, "run-1", "cfg-h", partitions=partitions)
    return sorted(tuple(r) for r in out.collect())


def long_tail(sequences_rows, n_items=60, share=0.5):
    counts = {f"I{i:03d}": 0 for i in range(n_items)}
    for row in sequences_rows:
        for item in row:
            counts[item] += 1
    return set(sorted(counts, key=lambda i: (counts[i], i))[: int(share * n_items)])


def test_real_rows_equal_the_input_and_provenance_is_complete(augmented):
    from recaug_spark.schemas import AUGMENTED_ITEMS

    rows, _ = augmented
    names = AUGMENTED_ITEMS.names
    records = [dict(zip(names, r)) for r in rows]
    real = [r for r in records if r["origin"] == REAL_CHAIN]
    assert sorted(tuple(r[c] for c in ("item_id", "title", "description", "category", "price", "price_imputed",
                                       "attributes")) for r in real) == sorted(item_rows())
    assert all(r["variant_id"] == r["item_id"] and r["operator_chain"] == REAL_CHAIN for r in real)
    titles = {r["item_id"]: r["title"] for r in real}
    for r in records:
        assert r["seed"] == 11 and r["run_id"] == "run-1" and r["config_hash"] == "cfg-h"
        if r["origin"] == "augmented":
            assert r["variant_id"] == f"{r['item_id']}~{r['branch']}:{r['copy']}"
            assert set(json.loads(r["params"])) >= set(r["operator_chain"].split(">"))
            words = r["title"].split()  # the brand (an attribute) and the size are protected, in order
            assert "trailpeak" in words and "m" in words and words.index("trailpeak") < words.index("m")
    text = [r for r in records if r["operator_chain"] == "synonym_replace>random_swap"]
    assert {r["generator"] for r in text} == {"wordnet@3.0"}
    assert sum(r["title"] != titles[r["item_id"]] for r in text) > len(text) // 2
    assert all(r["title"] == titles[r["item_id"]] for r in records if r["operator_chain"] == "price_noise")


def test_long_tail_targeting_augments_only_long_tail_items(augmented):
    rows, _ = augmented
    sequences = [[f"I{(u * k) % 20:03d}" for k in range(1, 6)] for u in range(30)]
    tail = long_tail(sequences)
    by_chain = {}
    for r in rows:
        by_chain.setdefault(r[9], []).append(r[1])
    assert len(tail) == 30 and sorted(by_chain["synonym_replace>random_swap"]) == sorted(list(tail) * 2)  # 2 copies
    assert set(by_chain["random_delete>feature_noise"]) == tail and len(by_chain["random_delete>feature_noise"]) == 30
    assert len(by_chain["price_noise"]) == 60 and len(by_chain[REAL_CHAIN]) == 60  # this branch overrides targeting


def test_output_is_identical_for_1_and_4_partitions(augmented):
    one, four = augmented
    assert one == four


def test_one_profile_pass_fits_the_same_statistics_as_the_pure_fit(spark_items):
    from recaug_spark.augment.arrow_io import ITEM_COLUMNS
    from recaug_spark.stages.augment_items import profile_catalog

    items, _ = spark_items
    profile = profile_catalog(items)
    pure = pd.DataFrame(item_rows(), columns=list(ITEM_COLUMNS))
    assert profile.stats == fit_feature_stats(pure) and profile.items == 60
    assert {"trailpeak", "jacket", "trips", "m"} <= profile.vocabulary and "trips." not in profile.vocabulary


def test_long_tail_without_sequences_is_a_clear_error(spark_items):
    from recaug_spark.stages.augment_items import augment_items

    items, _ = spark_items
    with pytest.raises(ValueError, match="long_tail_only"):
        augment_items(items, None, SPARK_CFG, 1, "r", "h")


def test_write_augmented_items_partitions_by_operator_chain(spark, spark_items, tmp_path):
    from recaug_spark.runs import RunContext
    from recaug_spark.stages.augment_items import write_augmented_items

    items, _ = spark_items
    cfg = load_config(overrides=[f"run.warehouse={tmp_path / 'wh'}", "augment.items.long_tail_only=false",
                                 "augment.items.branches=[{chain: price_noise}, {chain: random_swap, copies: 2}]"])
    ctx = RunContext.create(spark, cfg, run_id="items-1")
    ctx.warehouse.write("items", items, mode="overwrite")
    version, counts = write_augmented_items(ctx)
    assert counts == {"price_noise": 60, "random_swap": 120, REAL_CHAIN: 60}
    assert {p.name for p in (tmp_path / "wh" / "augmented_items").iterdir() if p.is_dir() and "=" in p.name} == {
        "operator_chain=price_noise", "operator_chain=random_swap", "operator_chain=real"}
    assert write_augmented_items(ctx) == (version, counts)  # the same run id: nothing refitted nor rewritten
    assert write_augmented_items(RunContext.create(spark, load_config(overrides=[
        f"run.warehouse={tmp_path / 'wh'}", "augment.items.enabled=false"]), run_id="items-2")) == (None, {})
