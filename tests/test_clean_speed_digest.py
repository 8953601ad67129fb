"""Clean stage speed work (issue 23) without a change of output: all the counts come from one
aggregation, ``sequences`` are built by Spark instead of an Arrow pass, and the four tables and the
counts equal those of the code before the change.

The golden digests and counts below were taken from the clean stage as of commit 9ccc82c (before
this work), on the same generated input and config (``clean_digests``).
"""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from recaug_spark.config import CleanConfig, load_config
from recaug_spark.delta.arrow_reader import read_arrow
from recaug_spark.runs import RunContext
from recaug_spark.schemas import EVENTS_RAW
from recaug_spark.stages import clean as C
from recaug_spark.stages import clean_steps as steps

T0 = dt.datetime(2024, 3, 1, 10, 0, 0)
GENERATED = ["generate.events=20000", "generate.users=400", "generate.items=300", "run.seed=7"]
GOLDEN = {  # sha256 (16 hex digits) over each table's sorted rows, from the code before the change
    "events": "114006456b256fc6", "items": "eaa0d3022e64febf", "sequences": "f2af6786cd7ce05d",
    "sequence_targets": "8d9d63c170a9da40",
}
GOLDEN_COUNTS = {  # the stage's counts from the code before the change
    "removed.exact_duplicate": 333, "removed.near_duplicate": 166, "removed.bot_user": 1998, "removed.returned": 41,
    "removed.return_netted": 42, "removed.unmatched_return": 0, "removed.kcore": 0, "users": 400, "items": 300,
    "sequences": 400, "targets.valid": 400, "targets.test": 400, "users_capped": 5, "events_beyond_cap": 947,
}


def annotated(spark, rows):
    """(user_id, event_type, ts, _reason, split) rows as the stage's annotated frame would hold them."""
    return spark.createDataFrame(
        [(user, event_type, T0 + dt.timedelta(minutes=i), reason, split)
         for i, (user, event_type, reason, split) in enumerate(rows)],
        "user_id string, event_type string, ts timestamp, _reason string, split string",
    )


def test_one_aggregation_gives_the_removal_and_the_per_user_counts(spark):
    # u1: 3 kept views (train, valid, test) and an exact duplicate; u2: a bot (every event removed);
    # u3: one kept click (not a sequence event). Users are those with a kept event: u1 and u3.
    frame = annotated(spark, [
        ("u1", "view", None, "train"), ("u1", "view", None, "valid"), ("u1", "view", None, "test"),
        ("u1", "view", "exact_duplicate", None), ("u2", "view", "bot_user", None), ("u2", "cart", "bot_user", None),
        ("u3", "click", None, None),
    ])
    counts = C._per_user_counts(frame, CleanConfig(max_sequence_length=3))
    assert (counts.rows, counts.kept, counts.unknown) == (7, 4, 0)
    assert {r: counts[f"removed_{r}"] for r in C.REASONS} == {
        **{r: 0 for r in C.REASONS}, "exact_duplicate": 1, "bot_user": 2}
    assert (counts.users, counts.sequences, counts.valid, counts.test) == (2, 1, 1, 1)
    assert (counts.capped, counts.beyond_cap) == (0, 0)
    removal, per_user = C._reconciled_counts(frame, 7, CleanConfig())
    assert removal == {"rows": 7, "kept": 4, **{f"removed.{r}": 0 for r in C.REASONS},
                       "removed.exact_duplicate": 1, "removed.bot_user": 2}
    assert per_user.users == 2


def test_an_unknown_reason_or_a_lost_row_fails_the_reconciliation(spark):
    with pytest.raises(RuntimeError, match="unknown removal reason 'typo'"):
        C._reconciled_counts(annotated(spark, [("u1", "view", "typo", None)]), 1, CleanConfig())
    with pytest.raises(RuntimeError, match="lost track"):
        C._reconciled_counts(annotated(spark, [("u1", "view", None, "train")]), 2, CleanConfig())


def test_spark_sequences_equal_the_arrow_kernel_whatever_the_row_order(spark):
    # 3 users, ties on ts (ordered by item, then type), a return and a click (not sequence events), a
    # history beyond the cap; the kept events are then scattered over 3 partitions in no order.
    rows = ([(u, f"i{k % 4}", "view" if k % 3 else "cart", T0 + dt.timedelta(seconds=60 * k + (k % 2))) for u, n in
             (("a", 9), ("b", 4), ("c", 2)) for k in range(n)]
            + [("a", "z", "view", T0), ("a", "y", "view", T0), ("b", "i0", "return", T0), ("c", "i1", "click", T0)])
    events = spark.createDataFrame([(u, i, t, ts, 1, 1.0, None, None, "gb", "web", "s", ts.date())
                                    for u, i, t, ts in rows], EVENTS_RAW)
    cfg = CleanConfig(max_sequence_length=6)
    kept = C.clean_events(events, cfg).where(C.REASON + " IS NULL").repartition(3).cache()
    in_spark = C.build_sequences(kept, session_column=C._SESSION).toArrow()
    train = steps.sort_in_time_order(kept.where("split = 'train'").toArrow())
    in_arrow = steps.sequences_of(train.drop_columns(["session_id"]).rename_columns(
        ["session_id" if c == C._SESSION else c for c in train.drop_columns(["session_id"]).column_names]))
    by_user = lambda t: sorted(t.select(in_spark.column_names).to_pylist(), key=lambda r: r["user_id"])  # noqa: E731
    assert by_user(in_spark) == by_user(in_arrow)
    assert [r["length"] for r in by_user(in_spark)] == [4, 2, 2]  # a: 6 capped - 2 held out; b: 4 - 2; c: all 2
    kept.unpersist()


def table_digest(uri: str) -> str:
    table = read_arrow(uri)
    lines = sorted(repr(tuple(row[c] for c in sorted(row))) for row in table.to_pylist())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def clean_digests(spark, root) -> tuple[dict[str, str], dict[str, int]]:
    """Generate → ingest → clean on a small generated shop under ``root``: each output table's digest
    and the stage's counts."""
    from recaug_spark.pipeline import stage_function

    ctx = RunContext.create(spark, load_config(overrides=[f"run.warehouse={root}", *GENERATED]), run_id="golden")
    for stage in ("generate", "ingest"):
        stage_function(stage)(ctx)
    result = C.run_clean(ctx)
    return {name: table_digest(ctx.warehouse.uri(name)) for name in C.OUTPUT_TABLES}, result.counts


def test_clean_outputs_equal_the_code_before_the_speed_work(spark, tmp_path):
    digests, counts = clean_digests(spark, tmp_path)
    assert counts == GOLDEN_COUNTS
    assert digests == GOLDEN
