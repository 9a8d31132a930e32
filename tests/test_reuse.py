"""Sweeps that build on each other: `reuse: true` takes a finished trial of another sweep (same
program, same config hash) instead of training again, and cross-sweep tables show the value a
sweep kept fixed. Real `orch sweep` runs of the fake trainer; launches counted from its log."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from orch_helpers import BASE_TINY, FAKE, orch_env, run_orch, write_spec

from orchestrator.ledger import Ledger
from trainer.config import load_config

SEEDS = {"train.seed": {"values": [1, 2, 3]}}
# Seed 3 crashes in the first sweep; the others finish with these final val_loss values.
FIRST = {"key": "train.seed", "default": {"curve": [3.0, 2.0, 1.25]},
         "cases": {"2": {"curve": [3.0, 1.5, 1.125]}, "3": {"mode": "crash"}}}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, fake_schema_file: Path) -> Path:
    """An ORCH_HOME whose sweep `first` finished seeds 1 and 2 and failed seed 3."""
    home = tmp_path_factory.mktemp("reuse") / "home"
    spec = write_spec(home.parent / "first.yaml", name="first", parameters=SEEDS,
                      resources={"retries": 0})
    proc = run_orch(["sweep", str(spec)], _env(home, FIRST, "first", fake_schema_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return home


def _env(home: Path, script: dict[str, Any], log: str, schema: Path) -> dict[str, str]:
    return orch_env(home, script, FAKE_LOG=str(home.parent / f"{log}.log"),
                    FAKE_SCHEMA_FILE=str(schema), FAKE_CONFIG="1")


def _sweep(home: Path, schema: Path, name: str, **fields: Any) -> tuple[Any, list[dict]]:
    """Run sweep `name` (all trials finish) and return its process and its launches."""
    spec = write_spec(home.parent / f"{name}.yaml", name=name, **fields)
    proc = run_orch(["sweep", str(spec)], _env(home, {}, name, schema))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = home.parent / f"{name}.log"
    launches = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return proc, launches


def _records(home: Path, *args: str) -> list[dict[str, Any]]:
    proc = run_orch(["results", *args, "--format", "json"], orch_env(home))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["rows"]


def test_reuse_runs_only_what_no_other_sweep_finished(home: Path, fake_schema_file: Path
                                                      ) -> None:
    seeds = {"train.seed": {"values": [1, 2, 3, 4]}}
    spec = write_spec(home.parent / "second.yaml", name="second", reuse=True, parameters=seeds)
    dry = run_orch(["sweep", str(spec), "--dry-run", "--no-probe"],
                   _env(home, {}, "second", fake_schema_file))
    assert dry.returncode == 0, dry.stdout + dry.stderr
    # The dry run counts what would train, and says where the rest comes from.
    assert "2 trial(s) would run; 2 reused from other sweeps, not run" in dry.stdout
    assert "reuse first/1" in dry.stdout and "reuse first/2" in dry.stdout

    proc, launches = _sweep(home, fake_schema_file, "second", reuse=True, parameters=seeds)
    # Seeds 1 and 2 finished in `first`; 3 failed there, 4 is new: only those two train.
    assert sorted(json.loads(x["train.seed"]) for x in launches) == [3, 4]
    out = proc.stdout + proc.stderr
    assert "reused from first/1" in out and "reused from first/2" in out
    assert re.search(r"launching 2 trial\(s\) on \d slot\(s\); 2 reused from other sweeps", out)

    ledger = Ledger(home, readonly=True)
    first = {t.params["train.seed"]: t for t in ledger.trials("first")}
    second = {t.params["train.seed"]: t for t in ledger.trials("second")}
    for seed in (1, 2):
        t = second[seed]
        assert (t.state, t.reused_from, t.attempts) == ("finished", f"first/{seed}", 0)
        assert t.final == first[seed].final and t.result == first[seed].result
        assert [v.metrics for v in ledger.history(t)] == \
            [v.metrics for v in ledger.history(first[seed])]
    assert second[3].reused_from is None and second[4].reused_from is None

    rows = {r["train.seed"]: r for r in _records(home, "second", "--group-by", "none")}
    assert rows[1]["reused_from"] == "first/1" and rows[1]["note"] == "reused from first/1"
    assert rows[1]["val_loss"] == FIRST["default"]["curve"][-1]
    assert rows[2]["val_loss"] == FIRST["cases"]["2"]["curve"][-1]
    assert rows[4]["reused_from"] is None and rows[4]["note"] == ""
    table = run_orch(["results", "second", "--group-by", "none"], orch_env(home)).stdout
    assert "reused from first/2" in table
    compared = _records(home, "second", "--compare", "first")
    assert [r["this_reused_from"] for r in compared] == [["first/1", "first/2"]]
    status = json.loads(run_orch(["status", "second", "--format", "json"], orch_env(home)).stdout)
    assert {t["number"]: t["reused_from"] for t in status["trials"]}[second[1].number] == "first/1"

    # Parameter importance over both sweeps counts each result once.
    from orchestrator.report.importance import scored
    both = [t for n in ("first", "second") for t in ledger.trials(n)]
    assert sorted(t.origin for t, _ in scored(both, "val_loss")) == \
        sorted({t.origin for t in both if t.state == "finished"})
    assert len(scored(both, "val_loss")) < len([t for t in both if t.state == "finished"])

    # A resume keeps them: nothing is launched again.
    _, again = _sweep(home, fake_schema_file, "second", reuse=True,
                      parameters={"train.seed": {"values": [1, 2, 3, 4]}})
    assert len(again) == len(launches)


def test_without_reuse_everything_trains_again(home: Path, fake_schema_file: Path) -> None:
    _, launches = _sweep(home, fake_schema_file, "plain", parameters=SEEDS)
    assert sorted(json.loads(x["train.seed"]) for x in launches) == [1, 2, 3]
    trials = Ledger(home, readonly=True).trials("plain")
    assert all(t.reused_from is None for t in trials)


def test_another_program_is_not_reused(home: Path, fake_schema_file: Path) -> None:
    # The same trainer, but a different command line: its results are not taken as this one's.
    _, launches = _sweep(home, fake_schema_file, "otherprog", reuse=True, parameters=SEEDS,
                         program=[sys.executable, "-B", str(FAKE)])
    assert sorted(json.loads(x["train.seed"]) for x in launches) == [1, 2, 3]


def test_cross_sweep_table_shows_the_value_a_sweep_did_not_vary(home: Path,
                                                                 fake_schema_file: Path) -> None:
    _sweep(home, fake_schema_file, "lrs", parameters={"optim.lr": {"values": [0.001, 0.01]}})
    base = load_config(BASE_TINY)
    rows = _records(home, "first", "lrs", "--group-by", "none")
    first = [r for r in rows if r["sweep"] == "first"]
    lrs = [r for r in rows if r["sweep"] == "lrs"]
    # `first` never varied optim.lr, `lrs` never varied train.seed: each shows what it ran with,
    # the failed trial too (its sweep kept the value fixed).
    assert [r["optim.lr"] for r in first] == [base.optim.lr] * 3
    assert sorted(r["optim.lr"] for r in lrs) == [0.001, 0.01]
    assert [r["train.seed"] for r in lrs] == [base.train.seed] * 2
