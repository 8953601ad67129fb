"""Paths are checked before Spark starts: one line naming the key, the path and the problem, exit code 2.

Spark-free: the CLI tests replace ``get_session`` with a function that fails the test, so a check
that happens only once Spark runs (the old behaviour: a Java traceback after a minute) fails here.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from recaug_spark import preflight
from recaug_spark.cli import main
from recaug_spark.config import load_config
from recaug_spark.preflight import (
    PreflightError,
    check_paths,
    input_problem,
    planned_checks,
    writable_dir_problem,
)


@pytest.fixture
def no_spark(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("Spark was started before the paths were checked")

    monkeypatch.setattr("recaug_spark.session.get_session", refuse)
    monkeypatch.setenv("RECAUG_PSEUDONYM_KEY", "preflight-test-key")


def test_input_problems(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("user_id,item_id\n")
    assert input_problem(str(data / "a.csv")) is None
    assert input_problem(str(data)) is None
    assert input_problem(f"file://{data / 'a.csv'}") is None
    assert input_problem(str(data / "*.csv")) is None
    assert input_problem(str(data / "missing.csv")) == f"does not exist (nearest existing folder: {data})"
    assert input_problem(str(data / "*.json")) == "matches no file"
    nope = tmp_path / "nope"
    assert input_problem(str(nope / "*.csv")) == f"the folder {nope} before the glob does not exist"
    assert input_problem(str(data / "{a,b}.csv")) is None  # Hadoop alternation: left to Spark
    assert input_problem("s3a://bucket/events/*.csv") is None  # remote: left to Spark


def test_writable_dir_problems(tmp_path):
    assert writable_dir_problem(str(tmp_path)) is None
    assert writable_dir_problem(str(tmp_path / "new" / "deeper")) is None  # created later by the job
    assert not (tmp_path / "new").exists(), "the check must not create the folder"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert writable_dir_problem(str(a_file)) == "is a file, not a folder"
    assert writable_dir_problem(str(a_file / "wh")) == f"cannot be created: {a_file} is a file, not a folder"
    assert writable_dir_problem("s3a://bucket/wh") is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".recaug-probe")], "probe file left behind"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_warehouse_parent(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        problem = writable_dir_problem(str(locked / "wh"))
        assert problem.startswith(f"is not writable: its nearest existing parent {locked}")
    finally:
        locked.chmod(0o700)


def test_refused_probe_file_names_the_folder_before_spark(tmp_path, monkeypatch, no_spark):
    """As root a chmod cannot make a folder read-only, so the probe itself is refused: the same
    PermissionError a read-only folder gives (errno 13) reaches the user as one line, exit code 2."""
    probed = []

    def refuse(*_args, dir=None, **_kwargs):
        probed.append(dir)
        raise PermissionError(13, "Permission denied")

    # only preflight's view of tempfile is replaced: the standard library's stays as it is for everyone else
    monkeypatch.setattr(preflight, "tempfile", types.SimpleNamespace(TemporaryFile=refuse))
    locked = tmp_path / "locked"
    locked.mkdir()
    assert writable_dir_problem(str(locked / "wh")) == (
        f"is not writable: its nearest existing parent {locked} refused a file (Permission denied)")
    assert writable_dir_problem(str(locked)) == "is not writable: refused a file (Permission denied)"
    result = CliRunner().invoke(main, ["run", "--warehouse", str(locked / "wh")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: run.warehouse {locked / 'wh'}: is not writable: its nearest existing parent {locked} "
        f"refused a file (Permission denied)"]
    assert probed == [locked, locked, locked]  # the probe went into the nearest existing folder each time


def test_planned_checks_follow_the_stages(tmp_path):
    cfg = load_config(overrides=[f"run.warehouse={tmp_path / 'wh'}", "ingest.format=csv",
                                 f"ingest.events={tmp_path / 'e.csv'}", f"ingest.items={tmp_path / 'i.csv'}"])
    keys = [key for key, _, _ in planned_checks(cfg, ["ingest", "clean", "fit"])]
    assert keys == ["ingest.events", "ingest.items", "run.warehouse", "run.models"]
    assert [key for key, _, _ in planned_checks(cfg, ["clean"])] == ["run.warehouse"]
    with pytest.raises(PreflightError, match=r"^ingest\.events .*e\.csv: does not exist"):
        check_paths(cfg, ["ingest"])
    check_paths(cfg, ["clean"])  # the inputs are not read by clean


def test_missing_input_fails_before_spark_with_one_line(tmp_path, no_spark):
    missing = tmp_path / "nowhere" / "events.csv"
    result = CliRunner().invoke(main, ["ingest", "--input-format", "csv", "--input", str(missing),
                                       "--warehouse", str(tmp_path / "wh")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: ingest.events {missing}: does not exist (nearest existing folder: {tmp_path})"]


def test_warehouse_under_a_file_fails_before_spark(tmp_path, no_spark):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    result = CliRunner().invoke(main, ["run", "--warehouse", str(a_file / "wh")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: run.warehouse {a_file / 'wh'}: cannot be created: {a_file} is a file, not a folder"]


def test_models_dir_that_is_a_file_fails_fit_before_spark(tmp_path, no_spark):
    models = tmp_path / "models"
    models.write_text("not a folder")
    result = CliRunner().invoke(main, ["fit", "--warehouse", str(tmp_path / "wh"), "--set", f"run.models={models}"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: run.models {models}: is a file, not a folder"
    assert not Path(tmp_path / "wh").exists()
