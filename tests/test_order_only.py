"""Order-only sources (5-core: timestamps fabricated from positions): ingest marks them, and
operators or targeting that read time are refused, early from config and late from the warehouse."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from recaug_spark.augment.registry import time_based_uses
from recaug_spark.config import BranchConfig, validate

KEY = "test-key-0123456789-abcdefghijklmnop"


def test_time_based_uses_names_time_operators_and_cold_start_targeting():
    branches = (BranchConfig(chain="crop"), BranchConfig(chain="crop > time_jitter"),
                BranchConfig(chain="synthetic_user", cold_start_days=14), BranchConfig(chain="session_reorder"))
    assert time_based_uses(branches) == [
        "branch 2 (crop > time_jitter): operator 'time_jitter' reads timestamps",
        "branch 3 (synthetic_user): cold_start_days targeting",
        "branch 4 (session_reorder): operator 'session_reorder' reads timestamps",
    ]
    assert time_based_uses((BranchConfig(chain="crop > mask"), BranchConfig(chain="prehistory", max_length=5))) == []


def test_the_cli_refuses_time_based_branches_on_an_order_only_format_before_spark(tmp_path):
    from click.testing import CliRunner

    from recaug_spark.cli import main

    source = tmp_path / "lines.txt"
    source.write_text("1 10 11 12 13 14\n")
    args = ["run", "--input-format", "amazon-5core", "--input", str(source), "--warehouse", str(tmp_path / "wh")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "no real timestamps (order only)" in result.output and "cold_start_days targeting" in result.output
    assert not (tmp_path / "wh").exists()  # refused before anything ran


def _marked_warehouse(tmp_path, order_only: bool):
    import pyarrow as pa
    from deltalake import CommitProperties, write_deltalake

    from recaug_spark.stages.augment import refuse_time_on_order_only  # noqa: F401 (import check)

    uri = str(tmp_path / "events_raw")
    write_deltalake(uri, pa.table({"user_id": ["u1"]}),
                    commit_properties=CommitProperties(custom_metadata={"recaug.order_only": str(order_only).lower()}))
    warehouse = SimpleNamespace(uri=lambda table: str(tmp_path / table))
    return SimpleNamespace(warehouse=warehouse, input_version=lambda table: None)


def test_augment_refuses_time_based_branches_on_a_warehouse_ingested_order_only(tmp_path):
    from recaug_spark.stages.augment import AugmentConfigError, refuse_time_on_order_only

    timed = (BranchConfig(chain="crop"), BranchConfig(chain="time_shift"))
    with pytest.raises(AugmentConfigError, match="order-only source.*'time_shift' reads timestamps"):
        refuse_time_on_order_only(_marked_warehouse(tmp_path / "a", order_only=True), timed)
    refuse_time_on_order_only(_marked_warehouse(tmp_path / "b", order_only=False), timed)  # real time: fine
    refuse_time_on_order_only(_marked_warehouse(tmp_path / "c", order_only=True), timed[:1])  # no time used


def test_ingest_marks_5core_events_raw_order_only_and_csv_not(spark, tmp_path, monkeypatch):
    from recaug_spark.delta import commit_metadata
    from recaug_spark.runs import RunContext
    from recaug_spark.stages.ingest import run_ingest

    monkeypatch.setenv("RECAUG_PSEUDONYM_KEY", KEY)
    lines = tmp_path / "5core.txt"
    lines.write_text("1 10 11 12 13 14\n2 11 12 13 14 15\n")
    csv = tmp_path / "events.csv"
    csv.write_text("user_id,item_id,ts\nu1,i1,2024-01-05T10:00:00Z\n")
    for name, fmt, path, expected in (("a", "amazon-5core", lines, "true"), ("b", "csv", csv, "false")):
        cfg = validate({"run": {"warehouse": str(tmp_path / name)}, "ingest": {"format": fmt, "events": str(path)}})
        ctx = RunContext.create(spark, cfg, run_id=f"order-{name}")
        run_ingest(ctx)
        assert commit_metadata(ctx.warehouse.uri("events_raw"))["recaug.order_only"] == expected
