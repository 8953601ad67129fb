"""Description expansion: real MiniLM neighbours, dedup and limits, and a text generator the test trains."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recaug_spark.augment.base import Draws
from recaug_spark.augment.item_ops import ItemState
from recaug_spark.augment.registry import build_item
from recaug_spark.generators import runtime
from recaug_spark.generators.artifacts import manifest
from recaug_spark.generators.text import DescriptionConfig, HuggingFaceTextGenerator, embed, fit_description_index
from recaug_spark.text.tokens import words

RICH = {
    "shoes": ["lightweight running shoes with breathable mesh and cushioned soles for road marathons",
              "trail running shoes with grippy lugs waterproof uppers and cushioned soles for mud"],
    "kitchen": ["stainless steel frying pan with induction base riveted handle for searing and sauces",
                "cast iron skillet preseasoned for searing baking and campfire cooking with pour spouts"],
}


def vocabulary(category: str) -> set[str]:
    """Words of the category's rich items: titles and descriptions."""
    return set(words(" ".join(RICH[category]) + f" {category} item"))


def catalog() -> pd.DataFrame:
    rows = []
    for category, texts in RICH.items():
        for i, text in enumerate(texts):
            rows.append({"item_id": f"{category}-{i}", "title": f"{category} item {i}", "description": text,
                         "category": category, "price": 10.0, "price_imputed": False, "attributes": None})
    rows += [
        {"item_id": "thin-shoe", "title": "red running shoe", "description": "fast shoe", "category": "shoes",
         "price": 50.0, "price_imputed": False, "attributes": None},
        {"item_id": "no-text-pan", "title": "kitchen pan", "description": None, "category": "kitchen", "price": 20.0,
         "price_imputed": False, "attributes": None},
    ]
    return pd.DataFrame(rows)


def test_minilm_puts_related_products_together_offline():
    vectors = embed(["red running shoe", "running shoes for men", "stainless kitchen pan"])
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.5 > similarity[0, 2] + 0.3


@pytest.fixture(scope="module")
def index_ref(spark, tmp_path_factory):
    cfg = DescriptionConfig(min_words=8, neighbours=2, max_added_words=6, category_terms=3, fidelity_items=4)
    return fit_description_index(spark.createDataFrame(catalog()), cfg, tmp_path_factory.mktemp("models"),
                                 trained_on={"items": 0})


def test_the_index_holds_rich_items_and_reports_fidelity(index_ref):
    report = manifest(index_ref)["fidelity"]
    assert (report["items"], report["rich_items"], report["thin_items"]) == (6, 4, 2)
    assert report["encoder"].startswith("all-MiniLM-L6-v2")
    assert report["expanded_items"] == 4
    # Each sampled rich item (cut to its first 2 words) has its same-category sibling as first
    # neighbour, whose keywords alone give the 6 words (max_added_words): all from its category.
    assert report["added_in_category"] == 1.0
    # Of those 6, the item's own full text has: shoes-0 "cushioned", shoes-1 "cushioned soles",
    # kitchen-0 "searing", kitchen-1 none: (1 + 2 + 1 + 0) / 4 items / 6 words = 1/6.
    assert report["added_in_real_text"] == pytest.approx(1 / 6)
    index = runtime.load(index_ref)
    assert sorted(index.item_ids) == ["kitchen-0", "kitchen-1", "shoes-0", "shoes-1"]


def test_executors_and_driver_embed_the_same_rich_items(spark, index_ref, tmp_path):
    """local_items 0 sends the embedding to the executors (thin items filtered there): same index rows."""
    cfg = DescriptionConfig(min_words=8, neighbours=2, max_added_words=6, category_terms=3, fidelity_items=4,
                            local_items=0)
    ref = fit_description_index(spark.createDataFrame(catalog()), cfg, tmp_path, trained_on={"items": 0})
    on_driver, on_executors = runtime.load(index_ref), runtime.load(ref)
    assert on_executors.item_ids == on_driver.item_ids == ["kitchen-0", "kitchen-1", "shoes-0", "shoes-1"]
    assert np.allclose(on_executors.embeddings.astype(np.float32), on_driver.embeddings.astype(np.float32),
                       atol=2e-3)
    assert manifest(ref)["fidelity"]["rich_items"] == 4


def expand(index_ref, items, **params):
    op = build_item("describe_expand", params)
    draws = Draws(1, "items/0:0:describe_expand", np.arange(len(items), dtype=np.uint64))
    return op.apply(items, draws, ItemState(generators={op.artifact: index_ref}))


def test_thin_items_get_words_of_their_neighbours_and_rich_ones_stay(index_ref):
    items = catalog()
    out = expand(index_ref, items)
    unchanged = out["item_id"].str.contains("-[01]$", regex=True)
    assert (out.loc[unchanged, "description"] == items.loc[unchanged, "description"]).all()
    shoe = out.set_index("item_id").loc["thin-shoe", "description"]
    pan = out.set_index("item_id").loc["no-text-pan", "description"]
    assert shoe.startswith("fast shoe ")  # the original text is kept verbatim as the prefix
    added_shoe, added_pan = words(shoe)[2:], words(pan)
    assert added_shoe and set(added_shoe) <= vocabulary("shoes")  # words of running shoes, not of pans
    assert added_pan and set(added_pan) <= vocabulary("kitchen")
    assert len(added_shoe) <= 6 and len(added_pan) <= 6  # max_added_words
    assert len(set(words(shoe))) == len(words(shoe))  # nothing repeated, nothing the text already had
    assert "shoe" not in added_shoe and "running" not in added_shoe  # in the title already


def test_expansion_is_deterministic_and_limits_are_parameters(index_ref):
    items = catalog()
    first, again = expand(index_ref, items), expand(index_ref, items.iloc[::-1].reset_index(drop=True))
    assert first.set_index("item_id")["description"].to_dict() == again.set_index("item_id")["description"].to_dict()
    short = expand(index_ref, items, max_added_words=2).set_index("item_id")
    assert len(words(short.loc["no-text-pan", "description"])) == 2
    everything = expand(index_ref, items, min_words=100).set_index("item_id")  # every item is thin now
    assert everything.loc["shoes-0", "description"].startswith(RICH["shoes"][0] + " ")


def _train_tiny_gpt2(folder):
    """A 1-layer GPT-2 with a word-level tokenizer, trained on 'title. category. words' lines."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    lines = [f"{colour} {thing}. {category}. {text}" for category, texts in RICH.items() for text in texts
             for colour, thing in (("red", "shoe" if category == "shoes" else "pan"),
                                   ("blue", "shoe" if category == "shoes" else "pan"))]
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(lines, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=fast.vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                       pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = fast([line + " [EOS]" for line in lines], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for _ in range(150):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return float(loss.detach())


def test_a_local_text_model_plugs_in_through_the_interface(index_ref, tmp_path):
    loss = _train_tiny_gpt2(tmp_path / "gpt")
    assert loss < 0.5
    generator = HuggingFaceTextGenerator(str(tmp_path / "gpt"), task="causal")
    texts = generator.generate(["red shoe. shoes.", "blue pan. kitchen."], max_new_tokens=6, seed=0)
    assert set(words(texts[0])) <= set(words(" ".join(RICH["shoes"]))) and words(texts[0])
    assert set(words(texts[1])) <= set(words(" ".join(RICH["kitchen"]))) and words(texts[1])
    out = expand(index_ref, catalog(), method="generator", generator_path=str(tmp_path / "gpt"))
    shoe = out.set_index("item_id").loc["thin-shoe", "description"]
    assert shoe.startswith("fast shoe ") and set(words(shoe)[2:]) <= set(words(" ".join(RICH["shoes"])))


def test_missing_generator_folder_is_a_clear_error(index_ref, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HuggingFaceTextGenerator(str(tmp_path / "nothing")).generate(["x"], max_new_tokens=2)
