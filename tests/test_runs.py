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


def start(run_id: str, stage: str, minute: int, config_hash: str = "h1", driver: str = "host:1") -> dict:
    return {"run_id": run_id, "stage": stage, "started_at": T0 + dt.timedelta(minutes=minute),
            "config_hash": config_hash, "input_versions": {}, "driver": driver}


def test_the_listing_tells_a_crashed_stage_from_a_finished_one():
    from recaug_spark.runs import FINISHED, UNFINISHED, listing_line, stage_listing

    # run A: ingest finished; clean started twice (the first attempt crashed), the second finished.
    # run B: ingest started on another driver and never finished. "old" finished before stage_starts existed.
    starts = [start("A", "ingest", 0), start("A", "clean", 1, driver="host:7"), start("A", "clean", 3, driver="host:8"),
              start("B", "ingest", 5, driver="host:9")]
    finished = [record("old", "ingest", -10, {"events_raw": 0}), record("A", "ingest", 0, {"events_raw": 1}),
                record("A", "clean", 3, CLEAN_A)]
    entries = stage_listing(finished, starts)
    assert [(e["run_id"], e["stage"], e["status"], e["attempts"]) for e in entries] == [
        ("old", "ingest", FINISHED, 0), ("A", "ingest", FINISHED, 1), ("A", "clean", FINISHED, 2),
        ("B", "ingest", UNFINISHED, 1)]
    assert entries[2]["started_at"] == T0 + dt.timedelta(minutes=1)  # the first attempt's start
    line = listing_line(entries[3])
    assert "started, never finished" in line and "host:9" in line and "attempts 1" in line
    assert "host:8" not in listing_line(entries[2]) and "30.0s" in listing_line(entries[2])


def test_a_crashed_stage_start_binds_its_run_id_to_its_config():
    # r1's ingest crashed after committing events_raw: no runs record, only its start. A retry under
    # another config would skip that committed table and mix two configs: refused like a finished stage.
    starts = [start("r1", "ingest", 0, config_hash="aaaa1111")]
    check_run_config(starts, "r1", "aaaa1111")
    with pytest.raises(ConfigError, match="aaaa1111.*bbbb2222"):
        check_run_config(starts, "r1", "bbbb2222")


def run_toy_stage(spark, ctx, stage: str, fail: bool = False):
    """Through ``timed``: ingest writes events_raw; clean writes events, then sequences (raising after
    its first commit when ``fail``: a driver lost between two commits)."""
    from recaug_spark.runs import StageResult, timed

    def run_ingest(ctx):
        df = spark.createDataFrame([(1,), (2,), (3,)], "x long")
        written = ctx.warehouse.write("events_raw", df, mode="overwrite", txn=ctx.txn("ingest"))
        return StageResult("ingest", rows_in=3, rows_out=3, tables={"events_raw": written.version})

    def run_clean(ctx):
        tables = {}
        for name, values in (("events", [3, 1, 2]), ("sequences", [5, 4])):
            df = spark.createDataFrame([(v,) for v in values], "x long")
            tables[name] = ctx.warehouse.write(name, df, mode="overwrite", txn=ctx.txn("clean")).version
            if fail:
                raise RuntimeError("driver lost between two commits")
        return StageResult("clean", rows_in=3, rows_out=3, tables=tables)

    return timed(run_ingest if stage == "ingest" else run_clean, ctx)


def test_a_stage_that_raises_leaves_a_start_and_no_finish_and_its_retry_finishes(spark, tmp_path):
    from click.testing import CliRunner

    from recaug_spark.cli import main
    from recaug_spark.runs import FINISHED, STARTS, UNFINISHED, stage_listing, stage_records, start_records

    def context(wh: str, run_id: str = "r1") -> RunContext:
        return RunContext.create(spark, load_config(overrides=[f"run.warehouse={wh}"]), run_id=run_id)

    def rows(wh: str) -> dict:
        reader = context(wh, "reader")
        return {t: sorted(r.x for r in reader.warehouse.read(t, version=reader.read_version(t)).collect())
                for t in ("events_raw", "events", "sequences")}

    wh = str(tmp_path / "wh")
    ctx = context(wh)
    run_toy_stage(spark, ctx, "ingest")
    with pytest.raises(RuntimeError, match="lost"):
        run_toy_stage(spark, ctx, "clean", fail=True)
    # Then: a start and no finish for clean; the start names the run, config and the versions it reads
    assert [r["stage"] for r in stage_records(f"{wh}/runs")] == ["ingest"]
    starts = start_records(f"{wh}/{STARTS}")
    assert [(s["run_id"], s["stage"], s["config_hash"], s["input_versions"]) for s in starts] == [
        ("r1", "ingest", ctx.cfg.hash, {}), ("r1", "clean", ctx.cfg.hash, {"events_raw": 0})]
    assert {e["stage"]: e["status"] for e in stage_listing(stage_records(f"{wh}/runs"), starts)} == {
        "ingest": FINISHED, "clean": UNFINISHED}
    listed = CliRunner().invoke(main, ["runs", "--warehouse", wh])
    assert listed.exit_code == 0 and "clean     started, never finished" in listed.output, listed.output

    # When the retry finishes: one clean record, two attempts, listed finished; a third run is a no-op
    run_toy_stage(spark, ctx, "clean")
    run_toy_stage(spark, ctx, "clean")
    assert sorted(r["stage"] for r in stage_records(f"{wh}/runs")) == ["clean", "ingest"]
    entries = {e["stage"]: e for e in stage_listing(stage_records(f"{wh}/runs"), start_records(f"{wh}/{STARTS}"))}
    assert (entries["clean"]["status"], entries["clean"]["attempts"]) == (FINISHED, 2)
    listed = CliRunner().invoke(main, ["runs", "--warehouse", wh, "--run-id", "r1"])
    assert listed.exit_code == 0 and "never finished" not in listed.output and listed.output.count("r1") == 2

    # And the tables readers see equal an undisturbed run's
    other = str(tmp_path / "undisturbed")
    undisturbed = context(other)
    run_toy_stage(spark, undisturbed, "ingest")
    run_toy_stage(spark, undisturbed, "clean")
    assert rows(wh) == rows(other) == {"events_raw": [1, 2, 3], "events": [1, 2, 3], "sequences": [4, 5]}
