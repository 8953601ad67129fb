"""The augmenter contract, its keyed randomness and the registries of names usable from config.

A sequence augmenter is a pure function of a batch, its parameters, its (small, broadcast) fitted
state and a counter-based random source: ``plan(batch, draws, state) -> Edit``; an item augmenter
maps a frame of items to its augmented copy the same way (``recaug_spark.augment.item_ops``).
Randomness is keyed by (global seed, operator, entity key, copy, draw index), so a user's or an
item's augmented rows are the same whatever the partitioning, batch composition or task retries.

Operators register under their config name with :func:`register` / :func:`register_item`;
``recaug_spark.augment.registry`` imports every operator module, so that is where names are built.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from recaug_spark import rng
from recaug_spark.augment.batch import Edit, SequenceBatch


class AugmenterError(ValueError):
    """An unknown augmenter or parameter; the message lists what is known."""


class Params(BaseModel):
    """Parameters of an augmenter: typed, frozen, unknown names rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def box_muller(u: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Standard normals from pairs of uniforms in [0, 1) (Box–Muller; ``u`` never reaches 1)."""
    return np.sqrt(-2.0 * np.log1p(-u)) * np.cos(2.0 * np.pi * angle)


@dataclass(frozen=True)
class Draws:
    """Keyed uniforms for one operator applied to one batch (of sequences or items), for one copy.

    Draw ``index`` of entity ``key`` under ``tag`` is a fixed function of (seed, stream/tag, key,
    copy, index): it does not depend on which other entities share the batch.
    """

    seed: int
    stream: str
    keys: np.ndarray  # uint64 per sequence (user key) or per item
    copy: int = 0

    def _index(self, index: np.ndarray | int) -> np.ndarray:
        return (np.uint64(self.copy) << np.uint64(40)) + np.asarray(index, dtype=np.uint64)

    def draw(self, tag: str, keys: np.ndarray, index: np.ndarray | int) -> np.ndarray:
        """Uniforms in [0, 1) for entity ``keys`` (any subset or repetition of ``self.keys``) and draw ``index``."""
        return rng.uniform(self.seed, f"{self.stream}/{tag}", keys, self._index(index))

    def bits(self, tag: str, owner: np.ndarray, index: np.ndarray) -> np.ndarray:
        """The random bits behind ``draw(tag, keys[owner], index)``, each key mixed once."""
        return rng.random_bits_grouped(self.seed, f"{self.stream}/{tag}", self.keys, owner, self._index(index))

    def per_sequence(self, tag: str) -> np.ndarray:
        """One uniform in [0, 1) per sequence."""
        return self.draw(tag, self.keys, 0)

    def per_element(self, tag: str, batch: SequenceBatch) -> np.ndarray:
        """One uniform per flat element, keyed by its sequence's key and its position in it."""
        return self.draw(tag, self.keys[batch.sequence_of_element], batch.position_in_sequence)

    def uniform(self, tag: str, width: int = 1, rows: slice | None = None) -> np.ndarray:
        """``(entities, width)`` uniforms (of ``rows`` only, if given); column j is draw j of the
        entity, the same whatever ``width`` or ``rows``."""
        keys = self.keys if rows is None else self.keys[rows]
        return self.draw(tag, keys[:, None], np.arange(max(width, 1), dtype=np.uint64)[None, :])

    def normals(self, tag: str, width: int) -> np.ndarray:
        """``(entities, width)`` standard normals (Box–Muller on ``2 * width`` keyed uniforms)."""
        u = self.uniform(tag, 2 * width)
        return box_muller(u[:, :width], u[:, width:])

    def normal(self, tag: str) -> np.ndarray:
        """One standard normal per entity."""
        return self.normals(tag, 1)[:, 0]


@dataclass(frozen=True)
class FitContext:
    """What augmenters fit their state on, once, on the driver (Spark DataFrames and a folder)."""

    sequences: Any  # the training sequences
    items: Any = None  # the catalog (``items`` table), when there is one
    models_dir: str | None = None  # where ``recaug fit`` wrote the generator models


class Operator(ABC):
    """What every augmenter has: a config ``name``, typed ``Params`` and a docstring saying what,
    when and why (``docs/augmenters.md`` is generated from them)."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params):
        self.params = params

    def describe(self) -> dict:
        return {"name": self.name, "params": self.params.model_dump(mode="json")}


class Augmenter(Operator):
    """A sequence augmenter: ``fit`` once with Spark, then ``plan`` an edit of each batch."""

    origin: ClassVar[str] = "augmented"  # the origin of its output rows ("synthetic": new users)
    # True for operators that read timestamps or time-derived sessions: refused on order-only sources
    # (whose timestamps are fabricated from positions, see sources.ORDER_ONLY_FORMATS)
    needs_real_time: ClassVar[bool] = False

    def fit(self, context: FitContext) -> Any:
        """Statistics computed once with Spark (e.g. item popularity); None when not needed."""
        return None

    @abstractmethod
    def plan(self, batch: SequenceBatch, draws: Draws, state: Any) -> Edit:
        """The edit turning ``batch`` into its augmented copy."""

    def generator_tag(self, state: Any) -> str | None:
        """``name@version`` of the generator model behind ``state``; None for model-free operators."""
        return None


class Registry(dict):
    """Config names → augmenter classes: an explicit registry, never pickled user code."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, cls):
        if cls.name in self:
            raise ValueError(f"{self.kind} name {cls.name!r} registered twice")
        self[cls.name] = cls
        return cls

    def build(self, name: str, params: dict | None = None):
        """An instance from its config name and parameters; unknown names or parameters fail here."""
        if name not in self:
            raise AugmenterError(f"unknown {self.kind} {name!r}; known: {sorted(self)}")
        cls = self[name]
        try:
            return cls(cls.Params.model_validate(params or {}))
        except ValidationError as error:
            details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise AugmenterError(
                f"bad parameters for {self.kind} {name!r}: {details}; allowed: {sorted(cls.Params.model_fields)}"
            ) from None


# Filled by the operator modules' decorators; complete once ``recaug_spark.augment.registry`` is imported.
REGISTRY = Registry("augmenter")
register = REGISTRY.register
ITEM_REGISTRY = Registry("item augmenter")
register_item = ITEM_REGISTRY.register
