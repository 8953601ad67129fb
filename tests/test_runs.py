"""The runs table as the stage marker (recaug_spark/runs.py): later stages read the versions named by
the last complete stage record, never simply the latest; a run id retried with another config is
refused; each warehouse owns its models folder."""

from __future__ import annotations

import datetime as dt
import types

import pytest

from recaug_spark.config import ConfigError, load_config
from recaug_spark.runs import RunContext, check_run_config, last_records, pinned_version

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def record(run_id: str, stage: str, minute: int, tables: dict, config_hash: str = "h1") -> dict:
    return {"run_id": run_id, "stage": stage, "started_at": T0 + dt.timedelta(minutes=minute), "duration_s": 30.0,
            "tables": tables, "config_hash": config_hash}


CLEAN_A = {"events": 1, "items": 1, "sequences": 1, "sequence_targets": 1}


def test_a_crash_between_commits_is_invisible_through_the_marker():
    # run A: ingest and clean complete. Run B's clean committed events v2 and died: no record.
    records = [record("A", "ingest", 0, {"events_raw": 0}), record("A", "clean", 1, CLEAN_A),
               record("A", "augment", 2, {"augmented_sequences": 0, "read:sequences": 1})]
    assert {t: pinned_version(records, t) for t in CLEAN_A} == CLEAN_A  # v1 everywhere, never B's events v2
    assert pinned_version(records, "sequences") == 1 and pinned_version(records, "read:sequences") is None
    assert pinned_version(records, "metrics") is None  # no record: the caller reads the latest


def test_the_last_finished_record_wins_even_with_lower_versions():
    # B crashed after events v2; C (a new id) then wrote v3 of everything; B's retry finished last,
    # its events write skipped (v2, its own), the rest v4. Readers take B's record as one set.
    c = {"events": 3, "items": 3, "sequences": 3, "sequence_targets": 3}
    b = {"events": 2, "items": 4, "sequences": 4, "sequence_targets": 4}
    records = [record("A", "clean", 0, CLEAN_A), record("C", "clean", 5, c), record("B", "clean", 9, b)]
    assert last_records(records)["clean"]["run_id"] == "B"
    assert {t: pinned_version(records, t) for t in b} == b


def test_same_run_id_with_another_config_is_refused():
    records = [record("r1", "ingest", 0, {}, "aaaa1111"), record("r1", "clean", 1, {}, "aaaa1111"),
               record("r2", "ingest", 2, {}, "bbbb2222")]
    check_run_config(records, "r1", "aaaa1111")  # the same config: a retry
    check_run_config(records, "r3", "cccc3333")  # a new run id: anything goes
    with pytest.raises(ConfigError) as caught:
        check_run_config(records, "r1", "cccc3333")
    message = str(caught.value)
    assert "'r1'" in message and "aaaa1111" in message and "cccc3333" in message and "--run-id" in message


def test_two_warehouses_in_one_folder_get_separate_models_folders(tmp_path):
    def models(name: str) -> str:
        cfg = load_config(overrides=[f"run.warehouse={tmp_path / name}"])
        ctx = RunContext(spark=None, cfg=cfg, warehouse=types.SimpleNamespace(root=str(tmp_path / name)), run_id="r")
        return ctx.models_dir

    first, second = models("wh1"), models("wh2")
    assert first != second
    assert first.startswith(str(tmp_path / "wh1")) and second.startswith(str(tmp_path / "wh2"))
    configured = load_config(overrides=[f"run.models={tmp_path / 'm'}"])
    ctx = RunContext(spark=None, cfg=configured, warehouse=types.SimpleNamespace(root=str(tmp_path / "wh1")),
                     run_id="r")
    assert ctx.models_dir == str(tmp_path / "m")


def test_a_stage_killed_between_commits_leaves_readers_on_the_old_run(spark, tmp_path):
    from recaug_spark.runs import StageResult, timed

    cfg = load_config(overrides=[f"run.warehouse={tmp_path / 'wh'}"])

    def stage(ctx, values, fail_after_first=False):
        def run_clean(ctx):
            tables = {}
            for name in ("events", "sequences"):
                df = spark.createDataFrame([(v,) for v in values], "x long")
                tables[name] = ctx.warehouse.write(name, df, mode="overwrite", txn=ctx.txn("clean")).version
                if fail_after_first:
                    raise RuntimeError("driver killed between two commits")
            return StageResult("clean", rows_in=len(values), rows_out=len(values), tables=tables)
        return timed(run_clean, ctx)

    old = RunContext.create(spark, cfg, run_id="old")
    stage(old, [1, 2])
    new = RunContext.create(spark, cfg, run_id="new")
    with pytest.raises(RuntimeError, match="killed"):
        stage(new, [7, 8, 9], fail_after_first=True)
    assert new.warehouse.version("events") == 1  # the new run's events commit is there...
    reader = RunContext.create(spark, cfg, run_id="reader")
    pinned = {name: reader.read_version(name) for name in ("events", "sequences")}
    assert pinned == {"events": 0, "sequences": 0}  # ...but readers stay on the old run's consistent set
    rows = {name: sorted(r.x for r in reader.warehouse.read(name, version=v).collect()) for name, v in pinned.items()}
    assert rows == {"events": [1, 2], "sequences": [1, 2]}
    stage(new, [7, 8, 9])  # the retry finishes the stage: events is skipped (already committed), sequences written
    assert {name: reader.read_version(name) for name in ("events", "sequences")} == {"events": 1, "sequences": 1}
