"""Ingest reconciliation (issue 24, item 7): one quarantine row per source record, a catalog
ingested on its own, and 5-core counted in lines and in events — on tiny files with known answers."""

from __future__ import annotations

import pytest

from recaug_spark.config import ConfigError, IngestConfig, validate
from recaug_spark.delta import WriteResult
from recaug_spark.runs import RunContext
from recaug_spark.sources import item_price_from_events
from recaug_spark.stages.ingest import (
    ReconciliationError,
    output_tables,
    reconcile,
    reconciliation_lines,
    resolve_pseudonym_key,
    run_ingest,
)

KEY = "test-key-0123456789-abcdefghijklmnop"
RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


def _context(spark, tmp_path, run_id: str, **ingest) -> RunContext:
    cfg = validate({"run": {"warehouse": str(tmp_path / "warehouse")}, "ingest": ingest})
    return RunContext.create(spark, cfg, run_id=run_id)


def _quarantine(ctx) -> list[tuple]:
    return sorted((r["table"], r["row_number"], r["reason"]) for r in ctx.warehouse.read("quarantine").collect())


def test_a_bad_price_is_one_quarantine_row_the_event_not_also_its_derived_item(spark, tmp_path, monkeypatch):
    monkeypatch.setenv("RECAUG_PSEUDONYM_KEY", KEY)
    path = tmp_path / "retail" / "day.csv"
    path.parent.mkdir()
    path.write_text(RETAIL_HEADER + (
        "536365,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"  # row 2: accepted
        "536366,22139,MUG,2,2010-12-01 09:00:00,0.0,17851.0,France\n"  # row 3: nonpositive_price
        "536367,22140,CUP,1,2010-12-01 09:00:00,abc,17852.0,France\n"  # row 4: wrong_type
        "536368,22141,PEN,1,2010-12-01 09:00:00,-1,,France\n"  # row 5: missing_user (and a bad price)
        "536369,85123A,HEART,2,2010-12-01 10:00:00,2.55,17853.0,France\n"  # row 6: accepted, same item
    ))
    ctx = _context(spark, tmp_path, "price", format="online-retail", events=str(path.parent))

    result = run_ingest(ctx)

    # The old code also quarantined the three derived item rows (22139, 22140, 22141): 6 rows for 3 records.
    assert _quarantine(ctx) == [("events", 3, "nonpositive_price"), ("events", 4, "wrong_type"),
                                ("events", 5, "missing_user")]
    counts = result.counts
    assert (counts["events_in"], counts["events_accepted"], counts["events_quarantined"]) == (5, 2, 3)
    assert (counts["items_in"], counts["items_accepted"], counts["items_quarantined"]) == (1, 1, 0)
    assert (result.rows_in, result.rows_out, result.rows_quarantined) == (6, 3, 3)
    assert [r["item_id"] for r in ctx.warehouse.read("items_raw").collect()] == ["85123A"]


def test_derived_items_share_the_event_price_only_when_mapped_to_the_same_column():
    assert not item_price_from_events(IngestConfig(format="csv", events="e.csv"))  # items carry no price
    assert item_price_from_events(IngestConfig(format="csv", events="e.csv", items_columns={"price": "price"}))
    assert item_price_from_events(IngestConfig(format="csv", events="e.csv", events_columns={"price": "p"},
                                               items_columns={"price": "p"}))
    assert not item_price_from_events(IngestConfig(format="csv", events="e.csv", items_columns={"price": "list"}))


CATALOG = (
    "item_id,title,category,price,attributes\n"
    'p1,Mug,kitchen,3.5,"{""color"": ""blue""}"\n'  # row 2: accepted
    "p2,Pen,office,,\n"  # row 3: accepted (a missing price is fine)
    ",Orphan,misc,1.0,\n"  # row 4: missing_item
    "p3,Bad,misc,abc,\n"  # row 5: wrong_type (price)
    "p4,Free,misc,0,\n"  # row 6: nonpositive_price
    'p5,List,misc,1.0,"[1,2]"\n'  # row 7: wrong_type (attributes not a JSON object)
    "p6,short,row\n"  # row 8: unparsable_line
)


def test_a_catalog_is_ingested_on_its_own(spark, tmp_path, monkeypatch):
    monkeypatch.delenv("RECAUG_PSEUDONYM_KEY", raising=False)  # a catalog has no user ids: no key needed
    path = tmp_path / "catalog.csv"
    path.write_text(CATALOG)
    ctx = _context(spark, tmp_path, "catalog", format="csv", items=str(path))  # no ingest.events

    result = run_ingest(ctx)

    assert result.counts == {
        "items_in": 7, "items_accepted": 2, "items_quarantined": 5,
        "items.quarantine.missing_item": 1, "items.quarantine.wrong_type": 2,
        "items.quarantine.nonpositive_price": 1, "items.quarantine.unparsable_line": 1,
        "quarantine.missing_item": 1, "quarantine.wrong_type": 2, "quarantine.nonpositive_price": 1,
        "quarantine.unparsable_line": 1,
    }
    assert (result.rows_in, result.rows_out, result.rows_quarantined) == (7, 2, 5)
    assert result.tables == {"items_raw": 0, "quarantine": 0} and not ctx.warehouse.exists("events_raw")
    assert _quarantine(ctx) == [("items", 4, "missing_item"), ("items", 5, "wrong_type"),
                                ("items", 6, "nonpositive_price"), ("items", 7, "wrong_type"),
                                ("items", 8, "unparsable_line")]
    items = sorted((r["item_id"], r["title"], r["price"]) for r in ctx.warehouse.read("items_raw").collect())
    assert items == [("p1", "Mug", 3.5), ("p2", "Pen", None)]
    assert reconciliation_lines(result.counts) == ["  items: 7 in = 2 accepted + 5 quarantined"]

    again = run_ingest(ctx)  # the same run id: nothing written twice
    assert again.skipped and again.tables == result.tables
    assert ctx.warehouse.read("quarantine").count() == 5


def test_catalog_only_config_and_cli_path():
    from recaug_spark.cli import resolve_config

    cfg = resolve_config([], [], input_format="csv", items="catalog.csv")  # recaug ingest --input-format csv --items …
    assert (cfg.ingest.events, cfg.ingest.items) == (None, "catalog.csv")
    assert output_tables(cfg.ingest) == ("items_raw", "quarantine") and resolve_pseudonym_key(cfg.ingest) is None
    assert output_tables(validate({"ingest": {"format": "csv", "events": "e.csv", "items": "c.csv"}}).ingest) == (
        "events_raw", "items_raw", "quarantine")
    with pytest.raises(ConfigError, match="ingest.events is required when ingest.format is 'online-retail'"):
        validate({"ingest": {"format": "online-retail", "items": "c.csv"}})  # its items come from its events


def test_5core_reconciles_in_lines_and_in_events(spark, tmp_path, monkeypatch):
    monkeypatch.setenv("RECAUG_PSEUDONYM_KEY", KEY)
    path = tmp_path / "5core.txt"
    path.write_text("1 10 11 12\n2 11 -4 13\nbadline\n3 10 11\n")  # 4 lines, one bad; 8 events, one bad id
    ctx = _context(spark, tmp_path, "5core", format="amazon-5core", events=str(path))

    result = run_ingest(ctx)

    # The old code counted the bad line as an event (events_in 9) and had no line counts.
    assert result.counts == {
        "lines_in": 4, "lines_accepted": 3, "lines_quarantined": 1, "lines.quarantine.unparsable_line": 1,
        "events_in": 8, "events_accepted": 7, "events_quarantined": 1, "events.quarantine.bad_id": 1,
        "items_in": 4, "items_accepted": 4, "items_quarantined": 0,
        "quarantine.unparsable_line": 1, "quarantine.bad_id": 1,
    }
    assert reconciliation_lines(result.counts) == [
        "  lines: 4 in = 3 accepted + 1 quarantined", "  events of read lines: 8 in = 7 accepted + 1 quarantined",
        "  items: 4 in = 4 accepted + 0 quarantined"]
    assert (result.rows_in, result.rows_out, result.rows_quarantined) == (13, 11, 2)
    # The progress line states each unit (it used to say "rows in 13": lines, events and items summed).
    result.duration_s = 2.0
    assert result.progress_line() == ("[ingest] lines: 4 in = 3 accepted + 1 quarantined; events of read lines: "
                                      "8 in = 7 accepted + 1 quarantined; items: 4 in = 4 accepted + 0 quarantined "
                                      "in 2.0s")
    assert _quarantine(ctx) == [("events", 2, "bad_id"), ("events", 3, "unparsable_line")]
    assert ctx.warehouse.read("events_raw").count() == 7
    # The item "-4" is no id: its event is quarantined once, and it is not accepted as an item either.
    assert sorted(r["item_id"] for r in ctx.warehouse.read("items_raw").collect()) == ["10", "11", "12", "13"]


def test_reconcile_checks_lines_and_a_catalog_alone():
    lines = {"lines_in": 4, "lines_accepted": 3, "lines_quarantined": 1, "lines.quarantine.unparsable_line": 1,
             "events_in": 2, "events_accepted": 2, "events_quarantined": 0,
             "items_in": 1, "items_accepted": 1, "items_quarantined": 0}
    written = {name: WriteResult(name, name, 0, 1, rows, False) for name, rows in
               (("events_raw", 2), ("items_raw", 1), ("quarantine", 1))}
    reconcile(lines, written)
    with pytest.raises(ReconciliationError, match="lines: in 5 != accepted 3 "):
        reconcile({**lines, "lines_in": 5}, written)  # a line counted but neither read nor quarantined
    with pytest.raises(ReconciliationError, match="quarantine: wrote 1 rows but counted 2"):
        reconcile({**lines, "events_quarantined": 1, "events.quarantine.bad_id": 1, "events_in": 3}, written)
    catalog = {"items_in": 3, "items_accepted": 2, "items_quarantined": 1, "items.quarantine.missing_item": 1}
    reconcile(catalog, {"items_raw": WriteResult("i", "i", 0, 1, 2, False), "quarantine": written["quarantine"]})
