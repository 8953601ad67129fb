"""Catalog text utilities shared by the item operators and the generator models.

Tokens and words (:mod:`.tokens`), stop words (:mod:`.stopwords`), size and unit tokens
(:mod:`.units`), the WordNet synonym lexicon (:mod:`.lexicon`) and the attributes JSON of items
(:mod:`.attributes`). Nothing here imports the augmenters or the generators, so both can import
these modules at module level.
"""
