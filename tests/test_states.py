"""Trial and sweep states: one enum each, stored and printed as the plain words they always were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.contract import judge
from orchestrator.ledger import Ledger, iter_states
from orchestrator.search import ENGINE_STATE
from orchestrator.states import RETRYABLE, TERMINAL, SweepState, TrialState


def test_every_state_the_ledger_holds_reads_back_as_a_trial_state(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.upsert_sweep("s", "spec.yaml", {}, [], "val_loss", "minimize")
    for i, state in enumerate(TrialState):
        ledger.add_trial("s", f"h{i}", {}, state)
    # A row as an older orch wrote it: the bare word.
    ledger.db.execute("UPDATE trials SET state='oom' WHERE config_hash='h0'")
    trials = ledger.trials("s")
    assert all(isinstance(t.state, TrialState) for t in trials)
    assert [t.state for t in trials] == [TrialState.OOM, *list(TrialState)[1:]]
    stored = [r[0] for r in ledger.db.execute("SELECT state FROM trials ORDER BY number")]
    assert stored == ["oom", *[s.value for s in list(TrialState)[1:]]]
    assert [s for s, _ in iter_states(trials)] == [s for s in TrialState if s != "pending"]


def test_a_state_prints_and_serializes_as_its_word() -> None:
    assert (str(TrialState.OOM), f"{TrialState.OOM}", f"{SweepState.ON_WANDB}") == (
        "oom", "oom", "running on W&B")
    assert json.dumps({TrialState.FAILED: TrialState.KILLED}) == '{"failed": "killed"}'
    assert TrialState.FINISHED == "finished" and SweepState.DETACHED == "detached"


@pytest.mark.filterwarnings("ignore")  # sweeps' pydantic v1 style config
def test_the_engine_mapping_covers_every_trial_state() -> None:
    from sweeps import RunState

    assert set(ENGINE_STATE) == set(TrialState)
    assert set(ENGINE_STATE.values()) <= {s.value for s in RunState}


def test_retries_and_ends_are_trial_states_and_every_verdict_is_an_end(tmp_path: Path) -> None:
    assert RETRYABLE <= TERMINAL <= set(TrialState)
    assert set(TrialState) - TERMINAL == {TrialState.PENDING, TrialState.RUNNING}
    done = tmp_path / "done"
    done.mkdir()
    (done / "result.json").write_text(json.dumps({"status": "finished"}))
    verdicts = [judge(code, tmp_path) for code in (None, -9, 0, 1, 2, 3, 5, 130, 143)]
    verdicts += [judge(1, tmp_path, timed_out=True), judge(1, tmp_path, stop_reason="early"),
                 judge(0, done)]
    assert {v.state for v in verdicts} == TERMINAL - {TrialState.INVALID}
