"""The project's tokenizer: how catalog text is split into tokens and words.

One module owns every way text is cut up, so that the item operators, the lexicon and the
generator models agree on what a word is:

* :func:`tokenize` — white-space tokens, each split into (leading punctuation, *core*, trailing
  punctuation). Lossless up to white space (:func:`render` joins them back), which is what the
  text operators need to edit words while punctuation stays in place.
* :func:`words` — the lower-case words of a text (letters with inner hyphens or apostrophes, two
  letters or more): the keywords of description expansion.
* :func:`terms` — lower-case alphanumeric runs of two characters or more: the hashed text
  features of the attribute generator (numbers count, punctuation separates).

The three views are kept exactly as the fitted models and artifacts expect them: changing one
changes what a saved model reads.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

Token = tuple[str, str, str]  # (leading punctuation, core, trailing punctuation)

SENTENCE_END = (".", "!", "?")  # a token ending so closes a sentence
_AFFIXES = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)
_WORD = re.compile(r"[a-z][a-z'-]*[a-z]")


@functools.lru_cache(maxsize=1 << 16)
def split_token(token: str) -> Token:
    """One white-space token as (leading punctuation, core, trailing punctuation)."""
    prefix, core, suffix = _AFFIXES.match(token).groups()
    return prefix, core, suffix


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text`` (split on white space), each as :func:`split_token` gives it."""
    return [split_token(t) for t in text.split()]


def render(tokens: Sequence[Token]) -> str:
    """The text of ``tokens``, joined by single spaces."""
    return " ".join("".join(t) for t in tokens)


def catalog_vocabulary(texts: Iterable[str | None]) -> set[str]:
    """The lower-case token cores of ``texts`` (non-strings are skipped): a catalog's vocabulary."""
    vocabulary = set()
    for text in texts:
        if isinstance(text, str):
            vocabulary.update(split_token(token)[1].lower() for token in text.split())
    vocabulary.discard("")
    return vocabulary


def words(text: str | None) -> list[str]:
    """Lower-case words of a text (letters, inner hyphens/apostrophes; ≥ 2 letters)."""
    return _WORD.findall((text or "").lower())


def terms(text: str | None) -> list[str]:
    """Lower-case alphanumeric runs of at least two characters (anything else separates them)."""
    return [t for t in "".join(c.lower() if c.isalnum() else " " for c in (text or "")).split() if len(t) > 1]
