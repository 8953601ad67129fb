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
import pyarrow as pa

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_53 = float(1 << 53)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_STRING_SEED = np.uint64(0x6A09E667F3BCC908)  # any constant: it only separates string keys from other inputs
_LOW_BYTES = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective avalanche of uint64 values."""
    x = np.asarray(x, dtype=np.uint64)
    z = _mix_inplace(x.reshape(-1) + _GOLDEN)  # a new array, then updated in place
    return z[0] if x.ndim == 0 else z.reshape(x.shape)


def _mix_inplace(z: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """The avalanche steps of :func:`mix64` (after adding the golden gamma), in place on ``z``
    (``scratch``: a spare array of ``z``'s shape and type, overwritten)."""
    t = np.empty_like(z) if scratch is None else scratch
    np.right_shift(z, _S30, out=t)
    z ^= t
    z *= _M1
    np.right_shift(z, _S27, out=t)
    z ^= t
    z *= _M2
    np.right_shift(z, _S31, out=t)
    z ^= t
    return z


def stream_key(seed: int, stream: str) -> np.uint64:
    """A 64-bit key for one named random stream under a global seed."""
    digest = hashlib.blake2b(f"{seed}:{stream}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def key_strings(values) -> np.ndarray:
    """Stable 64-bit keys for string ids (the same on every machine and Python process).

    ``values``: an Arrow string array, or any sequence (items are converted with ``str``). The key
    is a pure function of the id's UTF-8 bytes: its length, then each 8-byte little-endian word
    (zero-padded) folded in with the splitmix64 avalanche, vectorized over all ids at once.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        values = pa.array([v if isinstance(v, str) else str(v) for v in values], pa.string())
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = values.cast(pa.string())
    if values.null_count:
        values = values.fill_null("None")  # as str(None) did
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    offset_type = np.int64 if pa.types.is_large_string(values.type) else np.int32
    offsets = np.frombuffer(values.buffers()[1], dtype=offset_type)
    offsets = offsets[values.offset: values.offset + n + 1].astype(np.int64)
    data = values.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    start, lengths = offsets[:-1] - offsets[0], np.diff(offsets)
    size = int(offsets[-1] - offsets[0])
    padded = np.zeros(size + 8, dtype=np.uint8)  # every 8-byte read below stays inside
    padded[:size] = data[int(offsets[0]): int(offsets[-1])]
    # The 8 bytes starting at each byte, as little-endian uint64 (an unaligned view, no copy).
    words_at = np.ndarray(shape=(size + 1,), dtype="<u8", buffer=padded, strides=(1,))
    key = mix64(lengths.astype(np.uint64) ^ _STRING_SEED)
    for word in range(int((lengths.max() + 7) // 8)):
        live = lengths > 8 * word  # ids still having bytes at this word; shorter ones are done, so
        every = bool(live.all())  # a key never depends on the other ids of the batch
        rows = start + 8 * word if every else start[live] + 8 * word
        left = lengths - 8 * word if every else lengths[live] - 8 * word
        words = words_at[rows].astype(np.uint64)
        words &= _LOW_BYTES[np.minimum(left, 8)]  # the bytes of this id only
        if every:
            key = mix64(key ^ words)
        else:
            key[live] = mix64(key[live] ^ words)
    return key


def random_bits(seed: int, stream: str, keys: np.ndarray, draw: np.ndarray | int = 0) -> np.ndarray:
    """uint64 pseudo-random values, one per (key, draw) pair, broadcast like numpy arrays."""
    base = stream_key(seed, stream)
    keys = np.asarray(keys, dtype=np.uint64)
    draw = np.asarray(draw, dtype=np.uint64)
    # Chained, not symmetric: (key a, draw b) and (key b, draw a) must not collide.
    with np.errstate(over="ignore"):  # wrapping uint64 arithmetic is intended (numpy warns on scalars)
        z = mix64(keys ^ base) + draw * _GOLDEN
        if z.ndim == 0:
            return mix64(z)
        z += _GOLDEN  # mix64(z), in place
    return _mix_inplace(z)


def random_bits_grouped(seed: int, stream: str, keys: np.ndarray, groups: np.ndarray, draw: np.ndarray) -> np.ndarray:
    """``random_bits(seed, stream, keys[groups], draw)`` (the same values), mixing each key once
    instead of once per draw: for many draws per entity (one per element of a sequence)."""
    mixed = mix64(np.asarray(keys, dtype=np.uint64) ^ stream_key(seed, stream))
    z = mixed[np.asarray(groups, dtype=np.int64)]
    with np.errstate(over="ignore"):
        step = np.asarray(draw, dtype=np.uint64) * _GOLDEN
        if isinstance(z, np.ndarray) and step.shape == z.shape:
            z += step  # in place, and the product's array reused as the mixer's scratch: two arrays, not four
        else:  # one group, or draws broadcast against the groups: the plain sum
            z, step = z + step, None
        z += _GOLDEN
    return _mix_inplace(z, step)


def to_uniform(bits: np.ndarray) -> np.ndarray:
    """Floats in [0, 1) from the top 53 of uint64 random bits (as :func:`uniform`); ``bits`` is reused."""
    np.right_shift(bits, np.uint64(11), out=bits)
    u = bits.astype(np.float64)
    u *= 1.0 / _TWO_POW_53  # a power of two: exact
    return u


def uniform(seed: int, stream: str, keys: np.ndarray, draw: np.ndarray | int = 0) -> np.ndarray:
    """Floats in [0, 1) with 53 random bits, keyed like :func:`random_bits`."""
    bits = random_bits(seed, stream, keys, draw)
    if np.ndim(bits) == 0:
        return float(bits >> np.uint64(11)) / _TWO_POW_53
    return to_uniform(bits)


def integers(seed: int, stream: str, keys: np.ndarray, high, draw: np.ndarray | int = 0) -> np.ndarray:
    """Integers in [0, high) (``high`` may be an array), keyed like :func:`random_bits`."""
    u = uniform(seed, stream, keys, draw)
    return np.minimum((u * np.asarray(high)).astype(np.int64), np.asarray(high, dtype=np.int64) - 1)
