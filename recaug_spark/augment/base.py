"""The augmenter contract, its keyed randomness and the registry of names usable from config.

An augmenter is a pure function of a batch, its parameters, its (small, broadcast) fitted state
and a counter-based random source: ``plan(batch, draws, state) -> Edit``. Randomness is keyed by
(global seed, operator, entity key, copy, draw index), so a user's augmented rows are the same
whatever the partitioning, batch composition or task retries (DESIGN.md, Determinism).
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


@dataclass(frozen=True)
class Draws:
    """Keyed uniform draws for one operator applied to one batch, for one augmented copy."""

    seed: int
    stream: str
    keys: np.ndarray  # uint64 per sequence
    copy: int = 0

    def _draw(self, tag: str, keys: np.ndarray, index: np.ndarray | int) -> np.ndarray:
        draw = (np.uint64(self.copy) << np.uint64(40)) + np.asarray(index, dtype=np.uint64)
        return rng.uniform(self.seed, f"{self.stream}/{tag}", keys, draw)

    def per_sequence(self, tag: str) -> np.ndarray:
        """One uniform in [0, 1) per sequence."""
        return self._draw(tag, self.keys, 0)

    def per_element(self, tag: str, batch: SequenceBatch) -> np.ndarray:
        """One uniform per flat element, keyed by its sequence's key and its position in it."""
        return self._draw(tag, self.keys[batch.sequence_of_element], batch.position_in_sequence)


class Augmenter(ABC):
    """Base class. Subclasses set ``name``, ``Params`` and a docstring saying what, when and why."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params):
        self.params = params

    def fit(self, spark, sequences, items) -> Any:
        """Statistics computed once with Spark (e.g. item popularity); None when not needed."""
        return None

    @abstractmethod
    def plan(self, batch: SequenceBatch, draws: Draws, state: Any) -> Edit:
        """The edit turning ``batch`` into its augmented copy."""

    def describe(self) -> dict:
        return {"name": self.name, "params": self.params.model_dump(mode="json")}


class Registry(dict):
    """Config names → augmenter classes: an explicit registry, never pickled user code (STYLE.md 5)."""

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


REGISTRY = Registry("augmenter")
register = REGISTRY.register


def build(name: str, params: dict | None = None) -> Augmenter:
    """An augmenter from its config name and parameters; unknown names or parameters fail here."""
    from recaug_spark.augment import (  # noqa: F401  (importing them registers the built-in operators)
        balance_ops,
        catalog_ops,
        context_ops,
        generator_ops,
        sequence_ops,
        time_ops,
    )

    return REGISTRY.build(name, params)
