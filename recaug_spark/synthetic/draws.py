"""Keyed random draws of the synthetic shop: every number is a function of (seed, stream, key, draw).

Streams are prefixed with ``generate/``; keys are :func:`entity_keys` of a user, session or item
index; ``draw`` is an index within that entity (an event, a session, a slot). No draw depends on a
partition, a batch or the order of calls, so any chunk of users gives the same rows.
"""

from __future__ import annotations

import numpy as np

from recaug_spark import rng

_KEY_SALT = np.uint64(0x5851F42D4C957F2D)


def entity_keys(ids: np.ndarray) -> np.ndarray:
    """The rng key of each entity index: its splitmix64 hash, not the index itself.

    ``rng.random_bits`` adds ``mix64(key ^ base)`` and ``mix64(draw + base)``. With small integer
    keys and draws, ``key ^ base`` often equals ``d + base`` for some small ``d``, so different
    (key, draw) pairs share numbers: (user a, session b) and (user b, session a) got the same
    session id. Hashed keys are spread over 64 bits and never meet a small draw index.
    """
    return rng.mix64(np.asarray(ids, dtype=np.int64).astype(np.uint64) ^ _KEY_SALT)


def uniform(seed: int, stream: str, keys: np.ndarray, draw: np.ndarray | int = 0) -> np.ndarray:
    """Uniforms in [0, 1)."""
    return rng.uniform(seed, f"generate/{stream}", keys, draw)


def integers(seed: int, stream: str, keys: np.ndarray, high, draw: np.ndarray | int = 0) -> np.ndarray:
    """Integers in [0, high)."""
    return rng.integers(seed, f"generate/{stream}", keys, high, draw)


def bits(seed: int, stream: str, keys: np.ndarray, draw: np.ndarray | int = 0) -> np.ndarray:
    """Raw uint64 values (session and order ids)."""
    return rng.random_bits(seed, f"generate/{stream}", keys, draw)


def normal(seed: int, stream: str, keys: np.ndarray, draw: np.ndarray | int = 0) -> np.ndarray:
    """Standard normal draws (Box-Muller on two keyed uniforms)."""
    u1 = 1.0 - uniform(seed, f"{stream}/a", keys, draw)  # (0, 1]: log is finite
    u2 = uniform(seed, f"{stream}/b", keys, draw)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def pick(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Categorical draw: the index whose cumulative share first exceeds ``u``."""
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def cdf(weights) -> np.ndarray:
    """The cumulative shares of ``weights`` (last value 1)."""
    w = np.asarray(weights, dtype=np.float64)
    return np.cumsum(w) / w.sum()
