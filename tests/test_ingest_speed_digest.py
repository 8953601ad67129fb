"""Ingest reads the events source a second time (for their quarantine rows) only when its write's
tally says that some event was rejected (issue 23: no pass that finds nothing)."""

from __future__ import annotations

from pathlib import Path

from recaug_spark.config import validate
from recaug_spark.runs import RunContext
from recaug_spark.stages import ingest

ITEMS_CSV = "item_id,title,price\ni1,One,2.5\ni2,Two,-1\n"  # i2: nonpositive_price
CLEAN_EVENTS = "user_id,item_id,ts,event_type\nu1,i1,2024-01-05T10:00:00Z,view\nu2,i1,2024-01-06,purchase\n"
ONE_BAD_EVENT = CLEAN_EVENTS + ",i1,2024-01-07,view\n"  # no user: missing_user


def _ingest(spark, tmp_path: Path, events_csv: str, monkeypatch) -> tuple:
    """Run ingest on a CSV source; (result, the tables quarantine_rows was called for, quarantine rows)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "events.csv").write_text(events_csv)
    (tmp_path / "src" / "items.csv").write_text(ITEMS_CSV)
    cfg = validate({"run": {"warehouse": str(tmp_path / "wh")},
                    "ingest": {"format": "csv", "events": str(tmp_path / "src" / "events.csv"),
                               "items": str(tmp_path / "src" / "items.csv"),
                               "pseudonymize": {"ids_already_anonymous": True}}})
    ctx = RunContext.create(spark, cfg, run_id="speed")
    called, original = [], ingest.quarantine_rows

    def recorded(checked, *, run_id, table):
        called.append(table)
        return original(checked, run_id=run_id, table=table)

    monkeypatch.setattr(ingest, "quarantine_rows", recorded)
    result = ingest.run_ingest(ctx)
    quarantine = sorted((r["table"], r["reason"]) for r in ctx.warehouse.read("quarantine").collect())
    return result, called, quarantine


def test_no_second_pass_over_events_when_none_is_rejected(spark, tmp_path, monkeypatch):
    result, called, quarantine = _ingest(spark, tmp_path, CLEAN_EVENTS, monkeypatch)
    assert called == ["items"]  # the events source is read once: by the events_raw write
    assert quarantine == [("items", "nonpositive_price")]
    assert (result.counts["events_accepted"], result.counts["events_quarantined"]) == (2, 0)
    assert (result.rows_in, result.rows_out, result.rows_quarantined) == (4, 3, 1)


def test_rejected_events_still_reach_the_quarantine(spark, tmp_path, monkeypatch):
    result, called, quarantine = _ingest(spark, tmp_path, ONE_BAD_EVENT, monkeypatch)
    assert sorted(called) == ["events", "items"]
    assert quarantine == [("events", "missing_user"), ("items", "nonpositive_price")]
    assert result.counts["events.quarantine.missing_user"] == 1 and result.counts["events_accepted"] == 2
