"""The augment stage on Spark: real rows kept exactly, provenance, determinism across partitions."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter

import pytest

from recaug_spark.augment.engine import augment_sequences, augment_sequences_round_trip
from recaug_spark.config import AugmentConfig, BranchConfig, load_config
from recaug_spark.runs import RunContext, record_stage
from recaug_spark.schemas import AUGMENTED_SEQUENCES, ITEMS, REAL_CHAIN, SEQUENCES
from recaug_spark.stages.augment import run_augment

T0 = dt.datetime(2024, 1, 1)

# The default branches minus the model-based ones (these tests run augment without `recaug fit`).
WITHOUT_GENERATORS = ("augment.branches=[{chain: crop}, {chain: mask}, {chain: reorder}]",
                      "augment.items.branches=[{chain: synonym_replace}, {chain: price_noise}]")


def sequence_rows(users: int = 40):
    rows = []
    for u in range(users):
        n = 1 + (u * 7) % 13
        items = [f"i{(u * 3 + k * 5) % 50}" for k in range(n)]
        stamps = [T0 + dt.timedelta(minutes=u * 100 + k) for k in range(n)]
        countries = [["DE", "FR", None][(u + k) % 3] for k in range(n)]
        devices = [f"d-{items[k]}" for k in range(n)]  # device follows the item: checks alignment
        rows.append((f"u{u:03d}", items, stamps, ["view"] * n, [f"u{u:03d}-1"] * n, countries, devices, n))
    return rows


@pytest.fixture(scope="module")
def sequences(spark):
    return spark.createDataFrame(sequence_rows(), SEQUENCES)


def items_table(spark):
    return spark.createDataFrame(
        [(f"i{k}", f"blue shirt {k}", None, f"c{k % 3}", 10.0 + k, False, "{}") for k in range(50)], ITEMS)


BRANCHES = (
    BranchConfig(chain="crop > mask", copies=2),
    BranchConfig(chain="insert", params={"insert": {"rate": 0.3}}),
    BranchConfig(chain="prefixes", max_length=6),
)


def collect(df):
    return sorted(
        (r.sequence_id, r.user_id, tuple(r.item_ids), tuple(r.timestamps), r.origin, r.operator_chain, r.copy)
        for r in df.collect()
    )


def test_output_is_identical_for_1_and_8_partitions(spark, sequences):
    one = augment_sequences(sequences.repartition(1), AugmentConfig(partitions=1, branches=BRANCHES), 7, "r", "h")
    eight = augment_sequences(sequences.repartition(3), AugmentConfig(partitions=8, branches=BRANCHES,
                                                                      arrow_batch_rows=16), 7, "r", "h")
    assert collect(one) == collect(eight)


def all_columns(df):
    """Every row with every column (provenance included), sorted: equal lists = identical tables."""
    return sorted(tuple(tuple(v) if isinstance(v, list) else v for v in row) for row in df.collect())


def odd_rows():
    """Rows whose context lists a batch cannot take as they are: null, or of another length than the items."""
    rows = sequence_rows(12)
    u, items, stamps, kinds, sessions, countries, devices, n = rows[3]
    rows[3] = (u, items, stamps, kinds, None, None, devices[:-1] + ["x", "y"], n)  # null sessions and countries
    u, items, stamps, kinds, sessions, countries, devices, n = rows[7]
    rows[7] = (u, items, stamps, kinds, sessions[:-1], countries, None, n)  # sessions one short, null devices
    return rows


def test_aligned_values_decide_row_by_row_not_by_batch():
    """A null or misaligned context list costs its own row its values, never its neighbours' (the batch
    boundaries depend on the partitioning); a sliced column reads its own values."""
    import numpy as np
    import pyarrow as pa

    from recaug_spark.augment.arrow_io import aligned_values

    offsets = np.array([0, 2, 3, 3, 6])  # items of lengths 2, 1, 0, 3
    column = pa.array([["x", None], None, [], ["p", "q"]], pa.list_(pa.string()))
    assert aligned_values(column, offsets).to_pylist() == ["x", None, None, None, None, None]
    sliced = pa.array([["z"], ["x", "y"], ["c"], [], ["p", "q", "r"]], pa.list_(pa.string())).slice(1)
    assert aligned_values(sliced, offsets).to_pylist() == ["x", "y", "c", "p", "q", "r"]
    assert aligned_values(pa.array([None, ["a"]], pa.list_(pa.string())), np.array([0, 1, 3])).to_pylist() == [
        None, None, None]


def test_stage_rows_are_those_of_the_round_trip_path_for_1_and_8_partitions(spark, sequences):
    """Real rows written by Spark and provenance added by Spark give, column for column, the rows of the path
    where every row crosses into Python and back, whatever the partitioning and the Arrow batch size."""
    from pyspark.sql import types as T

    loose = T.StructType([T.StructField(f.name, f.dataType, True) for f in SEQUENCES.fields])
    for frame in (sequences, spark.createDataFrame(odd_rows(), loose)):
        reference = all_columns(augment_sequences_round_trip(
            frame.repartition(1), AugmentConfig(partitions=1, branches=BRANCHES), 7, "r", "h"))
        for partitions, batch in ((1, 2048), (8, 16)):
            cfg = AugmentConfig(partitions=partitions, branches=BRANCHES, arrow_batch_rows=batch)
            out = augment_sequences(frame.repartition(3), cfg, 7, "r", "h")
            assert [(f.name, f.dataType) for f in out.schema] == [(f.name, f.dataType) for f in AUGMENTED_SEQUENCES]
            assert all_columns(out) == reference


def test_odd_context_lists_become_nulls_row_by_row(spark):
    """A null or misaligned context list gives its own row one null per event; its neighbours keep theirs."""
    from pyspark.sql import types as T

    loose = T.StructType([T.StructField(f.name, f.dataType, True) for f in SEQUENCES.fields])
    frame = spark.createDataFrame(odd_rows(), loose)
    cfg = AugmentConfig(partitions=1, arrow_batch_rows=4096, branches=(BranchConfig(chain="reorder"),))
    by_id = {r.sequence_id: r for r in augment_sequences(frame, cfg, 7, "r", "h").collect()}
    for user, _, _, _, sessions, countries, devices, n in odd_rows():
        for key in (user, f"{user}~0:0"):
            row = by_id[key]
            if user == "u003":
                assert row.session_ids == [None] * n and row.countries == [None] * n and row.devices == [None] * n
            elif user == "u007":
                assert row.session_ids == [None] * n and row.devices == [None] * n
                assert sorted(map(str, row.countries)) == sorted(map(str, countries))
            else:
                assert sorted(row.devices) == sorted(devices) and row.session_ids == sessions


def test_real_rows_equal_the_input_and_augmented_rows_carry_provenance(spark, sequences):
    out = augment_sequences(sequences, AugmentConfig(branches=BRANCHES), 7, "run-9", "cfg-1")
    real = out.where(f"origin = '{REAL_CHAIN}'")
    assert sorted((r.user_id, tuple(r.item_ids), tuple(r.timestamps), tuple(r.countries), tuple(r.devices))
                  for r in real.collect()) == sorted(
        (u, tuple(i), tuple(t), tuple(c), tuple(d)) for u, i, t, _, _, c, d, _ in sequence_rows())
    augmented = out.where("origin = 'augmented'").collect()
    assert augmented
    for row in augmented:
        assert row.run_id == "run-9" and row.config_hash == "cfg-1" and row.seed == 7
        assert row.operator_chain in {"crop>mask", "insert", "prefixes"} and row.copy is not None
        assert json.loads(row.params)
        assert row.sequence_id.startswith(row.user_id + "~") and row.length == len(row.item_ids) > 0
        if row.operator_chain == "crop>mask":  # context columns travel with their events
            assert [d for i, d in zip(row.item_ids, row.devices) if i != "[mask]"] == [
                f"d-{i}" for i in row.item_ids if i != "[mask]"]
    by_chain = {}
    for row in augmented:
        by_chain[row.operator_chain] = by_chain.get(row.operator_chain, 0) + 1
    assert by_chain["crop>mask"] == 2 * 40  # two copies of every user
    assert by_chain["insert"] == 40
    short = [r for r in sequence_rows() if r[-1] <= 6]
    assert by_chain["prefixes"] == sum(max(0, n - 2) for *_, n in short)  # targeting: short ones only


def _is_subsequence(short, long):
    rest = iter(long)
    return all(item in rest for item in short)


def test_augmented_items_come_from_the_user_or_the_catalog(spark, sequences):
    """Row counts per chain and each row's shape follow from BRANCHES and the operators' docstrings
    (recaug_spark/augment/sequence_ops.py; min_length 2 everywhere: a 1-item parent comes back as it is)."""
    out = augment_sequences(sequences, AugmentConfig(branches=BRANCHES), 7, "r", "h").collect()
    parents = {r[0]: r[1] for r in sequence_rows()}
    catalog = set().union(*map(set, parents.values()))
    augmented = [row for row in out if row.origin == "augmented"]
    chains = Counter(row.operator_chain for row in augmented)
    short = [len(items) for items in parents.values() if len(items) <= 6]  # prefixes' max_length 6
    # 40 users: 2 crop>mask copies each, 1 insert each, L - 2 prefixes (lengths L-1 .. 2) per short one
    assert chains == {"crop>mask": 80, "insert": 40, "prefixes": sum(max(0, n - 2) for n in short)}
    assert len(out) == 40 + len(augmented)  # and the 40 real rows
    assert Counter((r.user_id, r.copy) for r in augmented if r.operator_chain == "crop>mask") == {
        (u, c): 1 for u in parents for c in (0, 1)}
    for row in augmented:
        parent, items = parents[row.user_id], list(row.item_ids)
        size = len(parent)
        if row.operator_chain == "insert":  # rate 0.3: max(1, floor(0.3 L)) catalog items inserted
            assert len(items) == (size + max(1, int(0.3 * size)) if size >= 2 else 1), (parent, items)
            assert _is_subsequence(parent, items) and set(items) <= catalog
        elif row.operator_chain == "crop>mask":  # crop eta 0.6 keeps L' = max(1, floor(0.6 L)) in a row,
            kept = max(1, int(0.6 * size)) if size >= 2 else size  # then mask gamma 0.3 hides floor(0.3 L')
            assert len(items) == kept and items.count("[mask]") == (int(0.3 * kept) if kept >= 2 else 0)
            assert any(all(i in (p, "[mask]") for i, p in zip(items, parent[start:start + kept]))
                       for start in range(size - kept + 1)), (parent, items)
    prefixes = Counter((r.user_id, tuple(r.item_ids)) for r in augmented if r.operator_chain == "prefixes")
    assert prefixes == Counter((u, tuple(p[:n])) for u, p in parents.items() if len(p) <= 6
                               for n in range(2, len(p)))


def test_run_augment_writes_a_table_partitioned_by_operator_chain(spark, tmp_path):
    cfg = load_config(overrides=[f"run.warehouse={tmp_path}", *WITHOUT_GENERATORS])
    ctx = RunContext.create(spark, cfg, run_id="aug")
    ctx.warehouse.write("sequences", spark.createDataFrame(sequence_rows(), SEQUENCES))
    ctx.warehouse.write("items", items_table(spark))
    result = run_augment(ctx)
    assert result.counts["rows.real"] == 40 and result.counts["items.rows.real"] == 50
    assert "augmented_items" in result.tables
    assert result.rows_out == sum(v for k, v in result.counts.items() if k.startswith("rows."))
    only_mask = ctx.warehouse.read("augmented_sequences", filters=[("operator_chain", "=", "mask")])
    assert only_mask.count() == result.counts["rows.mask"]
    assert all("operator_chain=mask" in f for f in only_mask.inputFiles())
    assert run_augment(ctx).skipped


def test_targeting_selects_cold_start_users_and_sequences_with_long_tail_items(spark, sequences):
    rows = sequence_rows()
    branches = (
        # users u000..u039 start at T0 + 100·u minutes: the last training event is u039's last one
        BranchConfig(chain="reorder", cold_start_days=1),
        BranchConfig(chain="crop", long_tail_share=0.2),
    )
    out = augment_sequences(sequences, AugmentConfig(branches=branches), 7, "r", "h").where("origin = 'augmented'")
    by_chain = {}
    for r in out.collect():
        by_chain.setdefault(r.operator_chain, set()).add(r.user_id)
    last = max(stamps[-1] for _, _, stamps, *_ in rows)
    cold = {u for u, _, stamps, *_ in rows if stamps[0] >= last - dt.timedelta(days=1)}
    assert 0 < len(cold) < len(rows) and by_chain["reorder"] == cold

    counts = {}
    for _, items, *_ in rows:
        for item in items:
            counts[item] = counts.get(item, 0) + 1
    ranked = sorted(counts, key=lambda i: (counts[i], i))
    tail = set(ranked[: int(0.2 * len(ranked))])
    expected = {u for u, items, *_ in rows if tail & set(items)}
    assert 0 < len(expected) < len(rows) and by_chain["crop"] == expected


def test_augmenters_see_only_the_most_recent_events_of_heavy_users(spark):
    n = 500
    heavy = ("heavy", [f"i{k}" for k in range(n)], [T0 + dt.timedelta(seconds=k) for k in range(n)],
             ["view"] * n, ["heavy-1"] * n, ["DE"] * n, ["web"] * n, n)
    df = spark.createDataFrame([heavy], SEQUENCES)
    reorder = BranchConfig(chain="reorder", params={"reorder": {"beta": 1.0}})
    cfg = AugmentConfig(max_input_events=50, branches=(reorder,))
    rows = {r.origin: r for r in augment_sequences(df, cfg, 7, "r", "h").collect()}
    assert rows[REAL_CHAIN].item_ids == heavy[1]  # the real row is kept whole
    augmented = rows["augmented"]
    assert sorted(augmented.item_ids) == sorted(heavy[1][-50:]) and augmented.item_ids != heavy[1][-50:]
    assert json.loads(augmented.params)["_input"] == {"max_input_events": 50}


def test_incremental_run_replaces_exactly_the_changed_users_rows(spark, tmp_path):
    rows = sequence_rows()
    cfg = load_config(overrides=[f"run.warehouse={tmp_path}", "augment.incremental=true", *WITHOUT_GENERATORS])
    first = RunContext.create(spark, cfg, run_id="first")
    first.warehouse.write("sequences", spark.createDataFrame(rows, SEQUENCES))
    first.warehouse.write("items", items_table(spark))
    result = run_augment(first)
    assert result.counts["incremental"] == 0  # nothing to compare with yet: every user
    record_stage(first, result, dt.datetime.now(dt.timezone.utc))
    before = {r.sequence_id: r for r in first.warehouse.read("augmented_sequences").collect()}

    # Given new events for u001, a new user u900 and u002 gone
    changed = [r for r in rows if r[0] not in ("u001", "u002")]
    u1 = next(r for r in rows if r[0] == "u001")
    n = u1[-1] + 1
    changed.append(("u001", u1[1] + ["i7"], u1[2] + [T0 + dt.timedelta(days=30)], ["view"] * n, u1[4] + ["u001-2"],
                    u1[5] + ["DE"], u1[6] + ["d-i7"], n))
    changed.append(("u900", ["i1", "i2", "i3"], [T0, T0, T0], ["view"] * 3, ["u900-1"] * 3, ["FR"] * 3, ["app"] * 3, 3))
    first.warehouse.write("sequences", spark.createDataFrame(changed, SEQUENCES), mode="overwrite")

    # When the augment stage runs incrementally
    second = RunContext.create(spark, cfg, run_id="second")
    result = run_augment(second)
    assert result.counts["incremental"] == 1 and result.counts["users_reaugmented"] == 3
    after = {r.sequence_id: r for r in second.warehouse.read("augmented_sequences").collect()}

    # Then the changed users' rows are those of a full run on the new data, and no other row changed
    full = {r.sequence_id: r for r in augment_sequences(
        spark.createDataFrame(changed, SEQUENCES), cfg.augment, cfg.run.seed, "second", cfg.hash).collect()}
    touched = {"u001", "u002", "u900"}
    assert {k for k, r in after.items() if r.user_id in touched} == {k for k, r in full.items() if r.user_id in touched}
    for key, row in after.items():
        if row.user_id in touched:
            assert row == full[key]
        else:
            assert row == before[key] and row.run_id == "first"
    assert not any(r.user_id == "u002" for r in after.values())


def test_python_workers_allocate_arrow_buffers_from_the_system_heap(spark):
    # session.py sets it for every executor's Python workers (the ≥ 20× vectorized figure of
    # docs/benchmarks.md is measured with that pool); a user's spark.conf may still override it.
    def backend(_):
        import pyarrow as pa

        yield pa.default_memory_pool().backend_name

    assert spark.conf.get("spark.executorEnv.ARROW_DEFAULT_MEMORY_POOL") == "system"  # set by session.py
    assert spark.sparkContext.parallelize([0], 1).mapPartitions(backend).collect() == ["system"]
