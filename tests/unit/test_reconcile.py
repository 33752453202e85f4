"""Reconciliation of the marts with the simulators' manifests and journals, on a DuckDB file of its own."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
import typer
from typer.testing import CliRunner

from omnistream.manifest import Manifest, Totals, truth_change
from omnistream.reconcile import (
    ReconcileError,
    ground_truth,
    last_reconciliation,
    reconcile,
    reconcile_command,
)
from omnistream.settings import Settings, StackSettings, get_settings
from omnistream.warehouse.dbt import default_duckdb_path
from simulators.runs import RunJournal

D = Decimal
DAY = date(2026, 6, 1)


def journal(out: Path, *records: dict[str, Any]) -> str:
    with RunJournal.open_next(out, out.name) as j:
        j.write({"type": "run", "run_id": j.run_id})
        for record in records:
            j.write(record)
        return j.run_id


def order(channel: str, store: str | None, net: str, tax: str, sign: int = 1) -> dict[str, Any]:
    return {"type": "create", "truth": truth_change(channel, store, DAY, 2, D(net), D(tax), sign)}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A state dir with the three kinds of truth: a manifest alone, a manifest with its journals, journals."""
    settings = Settings(stack=StackSettings(state_dir=tmp_path))
    sims = tmp_path / "simulators"
    history = Manifest(source="history", seed=1)  # the truth itself: counted
    history.add_order("in_store", "S001", DAY, 3, D("10.00"), D("1.90"))
    history.add_order("online", None, date(2016, 1, 1), 1, D("5.00"), D("0.95"))
    history.write(sims / "history" / "manifest.json")
    # Orders: two runs (one deletes an order again) and the manifest a bounded run wrote from them.
    first = journal(
        sims / "orders", order("online", None, "20.00", "3.80"), order("online", None, "1.00", "0.19")
    )
    second = journal(sims / "orders", order("online", None, "1.00", "0.19", sign=-1))
    summary = Manifest(source="orders", seed=1, journals={first: 3, second: 2})
    summary.add_order("online", None, DAY, 2, D("20.00"), D("3.80"))
    summary.write(sims / "orders" / "manifest.json")
    # Emails: a run still going (or killed): a journal and no manifest.
    journal(sims / "emails", order("in_store", "S001", "7.00", "1.33"), {"type": "sending", "seq": 1})
    (sims / "masterdata").mkdir()
    (sims / "masterdata" / "stores.csv").write_text("store_id\nS001\n")  # no truth here
    return settings


def write_marts(settings: Settings, rows: list[tuple[str, str | None, date, int, str]]) -> None:
    path = default_duckdb_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(path)) as con:
        con.execute("create schema if not exists main_marts")
        con.execute("drop table if exists main_marts.fct_daily_sales")
        con.execute(
            "create table main_marts.fct_daily_sales (order_date date, channel varchar, store_id varchar, "
            "order_count bigint, gross_amount decimal(18, 2))"
        )
        for channel, store, day, n, gross in rows:
            con.execute(
                "insert into main_marts.fct_daily_sales values (?, ?, ?, ?, ?)",
                [day, channel, store, n, D(gross)],
            )


EXACT = [
    ("in_store", "S001", DAY, 2, "20.23"),  # history 11.90 + email 8.33
    ("online", None, date(2016, 1, 1), 1, "5.95"),
    ("online", None, DAY, 1, "23.80"),  # the deleted order is gone again
]


def test_every_source_counts_once(settings: Settings) -> None:
    sources = {s.name: s for s in ground_truth(settings.stack.state_dir / "simulators")}
    assert sorted(sources) == ["emails", "history", "orders"]
    assert sources["history"].manifest_counted
    assert not sources["orders"].manifest_counted  # its journals are the truth; the summary is not added
    assert sources["orders"].totals == {("online", None, "2026-06-01"): Totals(1, 2, D("20.00"), D("3.80"))}
    assert sources["emails"].records == 3
    assert sources["emails"].in_doubt == 1  # reserved, then no outcome: the run was killed in flight


def test_marts_equal_to_the_cent_reconcile(settings: Settings) -> None:
    write_marts(settings, EXACT)
    result = reconcile(settings)
    assert result.ok
    assert result.keys_compared == 3
    assert result.orders == 4
    assert result.summary().startswith("reconciliation ok: the marts equal the ground truth on all 3")
    report = last_reconciliation(settings)
    assert report is not None
    assert report["ok"] is True
    assert report["summary"] == result.summary()
    assert report["mismatches"] == []
    assert report["keys_compared"] == 3
    assert report["expected_gross"] == "49.98"
    assert datetime.fromisoformat(report["at"]).tzinfo is not None
    assert report["sources"]["orders"]["journals"] == 2


def test_a_cent_a_missing_day_and_an_extra_day_are_mismatches(settings: Settings) -> None:
    write_marts(
        settings,
        [
            ("in_store", "S001", DAY, 2, "20.24"),  # a cent too much
            ("online", None, DAY, 1, "23.80"),
            ("online", None, date(2026, 6, 2), 1, "1.19"),  # not in the truth
        ],  # and 2016-01-01 is missing
    )
    result = reconcile(settings)
    assert not result.ok
    assert [(m.key, m.expected, m.actual) for m in result.mismatches] == [
        (("in_store", "S001", "2026-06-01"), (2, D("20.23")), (2, D("20.24"))),
        (("online", None, "2016-01-01"), (1, D("5.95")), None),
        (("online", None, "2026-06-02"), None, (1, D("1.19"))),
    ]
    report = last_reconciliation(settings)
    assert report is not None
    assert report["ok"] is False
    assert report["mismatch_count"] == 3
    assert report["mismatches"][1] == {
        "channel": "online",
        "store_id": None,
        "day": "2016-01-01",
        "expected": {"orders": 1, "gross": "5.95"},
        "actual": None,
    }


def invoke(settings: Settings, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    app = typer.Typer()
    app.command()(reconcile_command)
    monkeypatch.setenv("OMNISTREAM_STACK__STATE_DIR", str(settings.stack.state_dir))
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        get_settings.cache_clear()


def test_the_command_exits_1_on_a_mismatch_and_2_when_it_cannot_run(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = invoke(settings, monkeypatch)
    assert missing.exit_code == 2
    assert "no warehouse at" in missing.output
    write_marts(settings, EXACT)
    ok = invoke(settings, monkeypatch)
    assert ok.exit_code == 0, ok.output
    assert ok.output.count("\n") == 1 and ok.output.startswith("reconciliation ok")
    as_json = invoke(settings, monkeypatch, "--json")
    assert json.loads(as_json.output)["ok"] is True
    write_marts(settings, EXACT[1:])
    failed = invoke(settings, monkeypatch)
    assert failed.exit_code == 1
    assert failed.output.startswith("reconciliation FAILED: 1 of 3 keys differ; first ('in_store', 'S001'")
    assert "(1 emails in doubt after a kill -9)" in failed.output


def test_a_manifest_whose_journals_are_gone_is_an_error(settings: Settings) -> None:
    write_marts(settings, EXACT)
    for path in (settings.stack.state_dir / "simulators" / "orders" / "runs").glob("00000-*.jsonl"):
        path.unlink()
    with pytest.raises(ValueError, match="was built from journals that are gone"):
        reconcile(settings)


def test_no_marts_says_what_to_run(settings: Settings) -> None:
    path = default_duckdb_path(settings)
    path.parent.mkdir(parents=True)
    duckdb.connect(str(path)).close()
    with pytest.raises(ReconcileError, match=r"no marts\.fct_daily_sales; run `omnistream dbt build`"):
        reconcile(settings)
