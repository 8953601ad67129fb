"""Synthetic ``sequences`` tables for measuring the augment engine (``benchmarks/``).

Written with Spark (``spark.range`` chunks → ``mapInArrow`` with numpy → Parquet), matching
``schemas.SEQUENCES``: long-tailed (Lomax, α = 1.6, mean ≈ 20) sequence lengths, Zipf(1) item
popularity, increasing timestamps grouped into sessions (``<user_id>-<n>`` session ids), event
types, countries and devices. Every table holds exactly the number of events asked for, which the
generate → ingest → clean path cannot promise (and takes minutes per 10^7 events). It lives in the
package, not in a benchmark script, so that Spark's Python workers can import it.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recaug_spark.augment.arrow_io import output_schema
from recaug_spark.schemas import SEQUENCES

SEED = 42

# Synthetic sequences: Lomax (shifted Pareto) lengths like the generator's user activity.
LENGTH_ALPHA = 1.6
LENGTH_SCALE = 10.8  # mean extra length = scale / (alpha - 1) = 18, so mean length ≈ 20
MIN_LENGTH = 2
MAX_LENGTH = 5_000
EVENTS_PER_CHUNK = 250_000
T0_US = 1_704_067_200_000_000  # 2024-01-01 UTC
COUNTRIES = ("US", "DE", "FR", "GB", "ES", "IT", "NL", "PL", "SE", "BR")
DEVICES = ("mobile", "desktop", "tablet")
EVENT_TYPES = ("view", "cart", "purchase")


def draw_lengths(events: int, seed: int, heavy_users: int = 0, heavy_events: int = 0) -> np.ndarray:
    """Sequence lengths summing to exactly ``events``: long-tailed users plus optional heavy ones."""
    rng = np.random.default_rng([seed, events, heavy_users, heavy_events])
    target = events - heavy_users * heavy_events
    parts, total = [], 0
    while total < target:
        u = rng.random(max(1_024, int((target - total) / 15)))
        lengths = MIN_LENGTH + np.floor(LENGTH_SCALE * ((1.0 - u) ** (-1.0 / LENGTH_ALPHA) - 1.0))
        lengths = np.minimum(lengths, MAX_LENGTH).astype(np.int64)
        parts.append(lengths)
        total += int(lengths.sum())
    lengths = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if target > 0:
        cumulative = np.cumsum(lengths)
        last = int(np.searchsorted(cumulative, target))
        lengths = lengths[: last + 1].copy()
        lengths[-1] -= int(cumulative[last]) - target
    lengths = np.concatenate([lengths, np.full(heavy_users, heavy_events, np.int64)])
    return lengths[rng.permutation(len(lengths))]


def _sequence_chunk(lengths: np.ndarray, first_user: int, user_width: int, n_items: int, seed: int,
                    schema: pa.Schema) -> pa.RecordBatch:
    """One chunk of synthetic ``sequences`` rows (numpy + Arrow, no Python loop over events)."""
    rng = np.random.default_rng([seed, first_user])
    n, total = len(lengths), int(lengths.sum())
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    starts = offsets[:-1]
    seq = np.repeat(np.arange(n), lengths)
    user_ids = pa.array([f"U{first_user + i:0{user_width}d}" for i in range(n)], pa.string())
    item_width = len(str(n_items))
    vocabulary = pa.array([f"I{i:0{item_width}d}" for i in range(n_items)], pa.string())
    ranks = np.minimum(np.exp(rng.random(total) * math.log(n_items + 1)).astype(np.int64) - 1, n_items - 1)  # Zipf(1)
    new_session = rng.random(total) < 0.25
    gaps_s = np.where(new_session, rng.exponential(2 * 86_400.0, total), rng.exponential(90.0, total)) + 1.0
    gaps_us = (gaps_s * 1e6).astype(np.int64)
    gaps_us[starts] = 0
    new_session[starts] = True
    cumulative = np.cumsum(gaps_us)
    user_start = T0_US + (rng.random(n) * 30 * 86_400e6).astype(np.int64)
    timestamps = cumulative - np.repeat(cumulative[starts], lengths) + np.repeat(user_start, lengths)
    sessions = np.cumsum(new_session)
    session_no = sessions - np.repeat(sessions[starts], lengths) + 1
    session_ids = pc.binary_join_element_wise(user_ids.take(pa.array(seq)), pc.cast(pa.array(session_no), pa.string()), "-")
    kinds = np.searchsorted([0.85, 0.95], rng.random(total), side="right")
    country = rng.integers(0, len(COUNTRIES), n)[seq]
    device = rng.integers(0, len(DEVICES), n)[seq]
    list_offsets = pa.array(offsets.astype(np.int32))

    def as_list(values: pa.Array) -> pa.ListArray:
        return pa.ListArray.from_arrays(list_offsets, values)

    columns = {
        "user_id": user_ids,
        "item_ids": as_list(vocabulary.take(pa.array(ranks))),
        "timestamps": as_list(pa.array(timestamps, pa.timestamp("us", tz="UTC"))),
        "event_types": as_list(pa.array(EVENT_TYPES).take(pa.array(kinds))),
        "session_ids": as_list(session_ids),
        "countries": as_list(pa.array(COUNTRIES).take(pa.array(country))),
        "devices": as_list(pa.array(DEVICES).take(pa.array(device))),
        "length": pa.array(lengths.astype(np.int32)),
    }
    return pa.RecordBatch.from_arrays([columns[f.name] for f in schema], schema=schema)


def synthesize(spark, path: Path, events: int, heavy_users: int = 0, heavy_events: int = 0, seed: int = SEED) -> dict:
    """Write a synthetic ``sequences`` Parquet table of exactly ``events`` events; return its stats."""
    lengths = draw_lengths(events, seed, heavy_users, heavy_events)
    users = len(lengths)
    user_width = len(str(users))
    n_items = max(2_000, events // 200)
    bounds = [0]
    cumulative = np.cumsum(lengths)
    while bounds[-1] < users:
        done = int(cumulative[bounds[-1] - 1]) if bounds[-1] else 0
        bounds.append(max(bounds[-1] + 1, int(np.searchsorted(cumulative, done + EVENTS_PER_CHUNK, side="right"))))
    bounds[-1] = users
    schema = output_schema(SEQUENCES)

    def build(batches):
        for batch in batches:
            for chunk in batch.column(0).to_pylist():
                lo, hi = bounds[chunk], bounds[chunk + 1]
                yield _sequence_chunk(lengths[lo:hi], lo, user_width, n_items, seed, schema)

    files = max(2, min(16, math.ceil(events / 1_000_000)))
    chunks = len(bounds) - 1
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    (spark.range(chunks, numPartitions=min(files, chunks)).mapInArrow(build, SEQUENCES)
     .write.mode("overwrite").parquet(str(path)))
    return {"events": int(lengths.sum()), "users": users, "items": n_items, "bytes": parquet_bytes(path),
            "max_length": int(lengths.max()), "median_length": float(np.median(lengths)),
            "build_s": time.perf_counter() - start}


def parquet_bytes(path: Path) -> int:
    """The size of the Parquet files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*.parquet"))
