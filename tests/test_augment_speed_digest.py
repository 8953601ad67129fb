"""The augment engine's output rows, pinned by digest: speed work must not change a single row.

``augment_record_batch`` (every row: real and augmented, with provenance) and ``branch_record_batch``
(the stage's branch rows) run on a fixed input built here with numpy (no Spark): 400 sequences of
1 to 300 events in two Arrow batches (the second a slice with non-zero offsets), sequences longer
than ``max_input_events``, null and odd-length session / context lists, and branches covering every
sequence operator that needs no Spark-fitted state (catalog operators get a fixed vocabulary), in
chains, with copies and with a length target. The digest is SHA-256 over each output batch's schema
and its rows (``to_pylist``), in output order, so row order, batch boundaries and every value count.

The golden digests were computed with the engine as of commit 894df9c (before the issue 23
speed work on ``augment_record_batch``: Arrow memory pool, keyed draws, selection kernels), by running
``digests()`` below on that code; they were not derived from the code under test.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from recaug_spark.augment.arrow_io import output_schema
from recaug_spark.augment.engine import BRANCH_ROWS, CompiledBranch, augment_record_batch, branch_record_batch
from recaug_spark.augment.kernels import ItemVocabulary
from recaug_spark.augment.registry import build
from recaug_spark.augment.targeting import Targeting
from recaug_spark.config import AugmentConfig
from recaug_spark.schemas import AUGMENTED_SEQUENCES

SEED = 1234
MAX_INPUT_EVENTS = 40

# (chain, params, copies, stateful, target max_length)
BRANCHES = (
    ("crop", {}, 1, False, None),
    ("mask", {"mask": {"gamma": 0.3}}, 2, False, None),
    ("reorder", {}, 1, False, None),
    ("mask", {"mask": {"mode": "dropout", "gamma": 0.5}}, 1, False, None),
    ("delete", {"delete": {"rate": 0.4}}, 1, False, None),
    ("substitute", {"substitute": {"rate": 0.3}}, 1, True, None),
    ("substitute", {"substitute": {"sampling": "uniform"}}, 1, True, None),
    ("insert", {"insert": {"rate": 0.3}}, 2, True, None),
    ("prefixes", {"prefixes": {"max_per_sequence": 5}}, 1, False, None),
    ("prefixes", {"prefixes": {"mode": "windows", "window": 6, "stride": 3}}, 1, False, None),
    ("crop>mask>reorder", {}, 2, False, None),
    ("mask>substitute>insert", {}, 1, True, None),
    ("reorder>delete", {}, 1, False, 12),
    ("context_drop", {}, 1, False, None),
    ("oversample_events", {"oversample_events": {"event_types": ["cart"]}}, 1, False, None),
    ("session_crop", {}, 1, False, None),
    ("session_reorder", {}, 1, False, None),
    ("time_crop", {}, 1, False, None),
    ("time_insert", {}, 1, True, None),
    ("time_jitter", {}, 1, False, None),
    ("time_shift", {}, 1, False, None),
)

# ``python tests/test_augment_speed_digest.py`` on the code of commit 894df9c printed these.
GOLDEN_FULL = "add1ef28f79a3d38426c69198af85c4988fe356c23703559f92a16f73906c70e"
GOLDEN_FULL_ROWS = 12861
GOLDEN_BRANCH = "2832b602a6cd530b058351b1b2c71f20dc5416cc4cb26904acdf30195512c1ba"
GOLDEN_BRANCH_ROWS = 12461


def fixed_input() -> list[pa.RecordBatch]:
    """400 sequences (columns of the stage's input), as two record batches; the second is a slice."""
    rng = np.random.default_rng(7)
    n = 400
    lengths = np.minimum(1 + rng.geometric(0.06, n), 300)
    lengths[:5] = [1, 2, 3, 150, 300]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    total = int(offsets[-1])
    seq = np.repeat(np.arange(n), lengths)
    items = pa.array([f"i{k}" for k in np.minimum(rng.zipf(1.3, total), 5000)], pa.string())
    gaps = np.where(rng.random(total) < 0.2, rng.integers(1, 5 * 86_400, total), rng.integers(1, 600, total))
    ts = 1_700_000_000_000_000 + np.cumsum(gaps * 1_000_000).astype(np.int64)
    kinds = pa.array(np.array(["view", "cart", "purchase"])[rng.choice(3, total, p=[0.8, 0.15, 0.05])].tolist())
    session_no = np.cumsum(gaps > 1800)
    sessions = pa.array([None if k % 37 == 0 else f"s{s}" for k, s in enumerate(session_no)], pa.string())

    def as_list(values, valid=None):
        mask = None if valid is None else pa.array(~valid)
        return pa.ListArray.from_arrays(pa.array(offsets), values, mask=mask)

    countries = pa.array(np.array(["US", "DE", "FR"])[rng.integers(0, 3, n)][seq].tolist())
    devices = pa.array(np.array(["mobile", "desktop"])[rng.integers(0, 2, n)][seq].tolist())
    odd = [[("x" if j % 2 else "y") for j in range(int(length) + 1)] if r % 29 == 3 else None
           for r, length in enumerate(lengths)]
    devices_lists = as_list(devices).to_pylist()
    devices_lists = [o if o is not None else d for o, d in zip(odd, devices_lists)]
    batch = pa.RecordBatch.from_arrays(
        [pa.array([f"user{r:04d}" for r in range(n)]), as_list(items),
         as_list(pa.array(ts, pa.timestamp("us", tz="UTC"))), as_list(kinds),
         as_list(sessions, valid=np.arange(n) % 11 != 5), as_list(countries, valid=np.arange(n) % 13 != 7),
         pa.array(devices_lists, pa.list_(pa.string()))],
        names=["user_id", "item_ids", "timestamps", "event_types", "session_ids", "countries", "devices"])
    return [batch.slice(0, 150), batch.slice(150)]


def branches() -> list[CompiledBranch]:
    vocabulary = ItemVocabulary.from_counts([f"v{k}" for k in range(300)], 1.0 / (1.0 + np.arange(300)))
    out = []
    for index, (chain, params, copies, stateful, max_length) in enumerate(BRANCHES):
        names = chain.split(">")
        operators = tuple(build(name, params.get(name)) for name in names)
        states = tuple(vocabulary if stateful and name in ("substitute", "insert", "time_insert") else None
                       for name in names)
        out.append(CompiledBranch(index, chain, operators, states, copies, Targeting(max_length=max_length),
                                  f'{{"branch": {index}}}'))
    return out


def _digest(batches) -> tuple[str, int]:
    h, rows = hashlib.sha256(), 0
    for batch in batches:
        h.update(str(batch.schema).encode())
        h.update(repr(batch.to_pylist()).encode())
        rows += batch.num_rows
    return h.hexdigest(), rows


def digests() -> tuple[tuple[str, int], tuple[str, int]]:
    """(digest, rows) of ``augment_record_batch``'s and of ``branch_record_batch``'s output on the fixed input."""
    compiled, cfg = branches(), AugmentConfig(max_input_events=MAX_INPUT_EVENTS, branches=())
    full_schema, branch_schema = output_schema(AUGMENTED_SEQUENCES), output_schema(BRANCH_ROWS)
    inputs = fixed_input()
    full = [out for rb in inputs for out in augment_record_batch(rb, compiled, cfg, SEED, "run", "hash", full_schema)]
    only = [out for rb in inputs for out in branch_record_batch(rb, compiled, SEED, MAX_INPUT_EVENTS, branch_schema)]
    return _digest(full), _digest(only)


def test_augment_record_batch_rows_are_those_of_the_engine_before_the_speed_work():
    (full, full_rows), (only, only_rows) = digests()
    assert (full_rows, only_rows) == (GOLDEN_FULL_ROWS, GOLDEN_BRANCH_ROWS)
    assert full == GOLDEN_FULL
    assert only == GOLDEN_BRANCH


if __name__ == "__main__":  # how the golden digests were computed (on the code before the change)
    print(digests())
