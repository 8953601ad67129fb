"""Counter-based randomness keyed by entity, so results never depend on partitioning.

Every random draw is a pure function of ``(seed, stream, key, draw)``: the global seed, a stream
name (an operator or generator step), the entity's 64-bit key (a user or item id hashed) and the
index of the draw for that entity. Spark may split, merge or retry batches in any way and each
row still receives the same numbers. The mixer is splitmix64's finaliser, vectorized over uint64
numpy arrays; it passes BigCrush when fed a counter, which is how it is used here.
"""

from __future__ import annotations

import hashlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_53 = float(1 << 53)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective avalanche of uint64 values."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def stream_key(seed: int, stream: str) -> np.uint64:
    """A 64-bit key for one named random stream under a global seed."""
    digest = hashlib.blake2b(f"{seed}:{stream}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def key_strings(values) -> np.ndarray:
    """Stable 64-bit keys for string ids (the same on every machine and Python process)."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little") for v in values),
        dtype=np.uint64,
        count=len(values),
    )


def random_bits(seed: int, stream: str, keys: np.ndarray, draw: np.ndarray | int = 0) -> np.ndarray:
    """uint64 pseudo-random values, one per (key, draw) pair, broadcast like numpy arrays."""
    base = stream_key(seed, stream)
    keys = np.asarray(keys, dtype=np.uint64)
    draw = np.asarray(draw, dtype=np.uint64)
    with np.errstate(over="ignore"):
        # Chained, not symmetric: (key a, draw b) and (key b, draw a) must not collide.
        return mix64(mix64(keys ^ base) + draw * _GOLDEN)


def uniform(seed: int, stream: str, keys: np.ndarray, draw: np.ndarray | int = 0) -> np.ndarray:
    """Floats in [0, 1) with 53 random bits, keyed like :func:`random_bits`."""
    return (random_bits(seed, stream, keys, draw) >> np.uint64(11)).astype(np.float64) / _TWO_POW_53


def integers(seed: int, stream: str, keys: np.ndarray, high, draw: np.ndarray | int = 0) -> np.ndarray:
    """Integers in [0, high) (``high`` may be an array), keyed like :func:`random_bits`."""
    u = uniform(seed, stream, keys, draw)
    return np.minimum((u * np.asarray(high)).astype(np.int64), np.asarray(high, dtype=np.int64) - 1)
