"""Item operator ``describe_expand``: richer descriptions for items with thin text.

``method: neighbours`` (default) appends keywords of the item's nearest rich neighbours in the
all-MiniLM-L6-v2 embedding space and its category's distinctive terms, from the
``description_index`` of ``recaug fit`` (:mod:`recaug_spark.generators.text`). ``method:
generator`` appends the continuation a local Hugging Face model writes for "title. category."
(``generator_path``), deduplicated the same way. The original description is kept verbatim as the
prefix; items whose description already has ``min_words`` words are returned unchanged.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
from pydantic import Field

from recaug_spark.augment.base import Draws, Params, register_item
from recaug_spark.augment.item_ops import ItemAugmenter, ItemState
from recaug_spark.generators.runtime import load
from recaug_spark.generators.text import is_thin, text_generator
from recaug_spark.text.tokens import words


@register_item
class DescribeExpand(ItemAugmenter):
    """Expand thin or missing descriptions with words of similar items (or a text generator).

    When it helps: long-tail items with a title and little else, whose text features are too
    sparse for content-based or cold-start models; the added words come from real neighbours.
    """

    name = "describe_expand"
    kind = "generator"

    class Params(Params):
        model: str = Field("description_index", description="artifact name in the models folder (recaug fit)")
        method: Literal["neighbours", "generator"] = Field("neighbours", description="neighbour keywords, or a text model")
        min_words: int | None = Field(None, ge=1, description="thin = fewer words; None: the index's min_words")
        neighbours: int | None = Field(None, ge=1, description="neighbours consulted; None: the index's setting")
        max_added_words: int | None = Field(None, ge=1, description="words appended at most; None: the index's setting")
        generator_path: str | None = Field(None, description="method generator: a local Hugging Face model folder")
        generator_task: Literal["causal", "seq2seq"] = Field("causal", description="method generator: the model kind")

    @property
    def artifact(self) -> str:
        return self.params.model

    def apply(self, items: pd.DataFrame, draws: Draws, state: ItemState) -> pd.DataFrame:
        index = load(state.require_generator(self.name, self.artifact))
        p = self.params
        min_words = p.min_words or index.config["min_words"]
        max_added = p.max_added_words or index.config["max_added_words"]
        out = items.copy()
        thin = [i for i, d in enumerate(items["description"]) if is_thin(d if isinstance(d, str) else None, min_words)]
        if not thin:
            return out
        rows = items.iloc[thin]
        descriptions = [d if isinstance(d, str) else "" for d in rows["description"]]
        if p.method == "neighbours":
            added = index.expand(rows["item_id"].tolist(), rows["title"].tolist(), rows["category"].tolist(),
                                 descriptions, k=p.neighbours or index.config["neighbours"], max_added=max_added)
        else:
            added = self._generated(rows, descriptions, max_added, draws.seed)
        expanded = [" ".join(part for part in (d, " ".join(a)) if part) or None for d, a in zip(descriptions, added)]
        column = out["description"].astype(object).tolist()
        for position, text in zip(thin, expanded):
            column[position] = text
        out["description"] = column
        return out

    def _generated(self, rows, descriptions, max_added: int, seed: int) -> list[list[str]]:
        if not self.params.generator_path:
            raise ValueError("describe_expand with method 'generator' needs generator_path (a local model folder)")
        generator = text_generator(self.params.generator_path, self.params.generator_task)
        prompts = [f"{t or ''}. {c or ''}." for t, c in zip(rows["title"], rows["category"])]
        texts = generator.generate(prompts, max_new_tokens=max_added * 2, seed=seed)
        added = []
        for text, title, description in zip(texts, rows["title"], descriptions):
            present = set(words(f"{title or ''} {description}"))
            fresh = [w for w in dict.fromkeys(words(text)) if w not in present]
            added.append(fresh[:max_added])
        return added
