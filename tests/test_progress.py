"""What a running sweep says: stage lines from the first second, step/total and the ETA."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from orch_helpers import orch_env, start_orch, write_spec
from orchestrator.run.estimate import duration
from orchestrator.ledger import Trial
from orchestrator.run.progress import Progress


def _trial(number: int, state: str, started: float, step: int | None = None,
           wall: float | None = None) -> Trial:
    return Trial(id=number, sweep="s", number=number, config_hash=f"h{number}",
                 params={"optim.lr": 0.001 * number}, state=state, reason=None, exit_code=None,
                 attempts=1, created_at=started, started_at=started,
                 ended_at=started + wall if wall else None, run_dir=None, pid=None, pgid=None,
                 slot=0, device="cpu", step=step, max_steps=100 if step else None,
                 last_metric=None, best_metric=None, final={}, best={}, program_wall=wall)


def test_piped_sweep_says_each_stage_before_the_first_trial(orch_home: Path,
                                                           tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    proc = start_orch(["sweep", str(spec)], orch_env(orch_home))  # stderr merged, in order
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    lines = out.splitlines()
    at = {key: next(i for i, ln in enumerate(lines) if key in ln)
          for key in (f"validating {spec}", "estimate:", "launching 3 trial(s) on 1 slot(s)",
                      "trial 1 started")}
    assert list(at.values()) == sorted(at.values()), out


def test_plain_view_prints_step_total_and_eta_at_each_validation(orch_home: Path,
                                                                tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    proc = start_orch(["sweep", str(spec)], orch_env(orch_home))  # not a terminal: plain lines
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    # The fake trainer validates at steps 10, 20 and 30 of 30.
    progress = [ln for ln in out.splitlines() if "trial 1: step" in ln]
    assert [ln.split("step ")[1].split()[0] for ln in progress] == ["10/30", "20/30", "30/30"]
    assert "sweep ETA unknown" in progress[0]  # nothing finished, no estimate yet
    later = [ln for ln in out.splitlines() if "trial 3: step" in ln]
    assert later and all("sweep ETA ~" in ln for ln in later)  # trials 1 and 2 finished


def test_live_table_shows_step_total_and_the_sweep_eta() -> None:
    console = Console(record=True, width=200)
    progress = Progress("s", ["optim.lr"], "val_loss", console=console, live=True)
    progress.set_eta(todo=4, slots=2)
    now = time.time()
    trials = [_trial(1, "finished", now + 1, wall=100.0),
              _trial(2, "running", now + 2, step=50)]
    console.print(progress.table(trials, now + 3))
    text = console.export_text()
    # Per trial: the finished one's 100 s. Left: half of trial 2, plus two waiting trials,
    # on two slots: (50 + 2 * 100) / 2.
    assert "50/100" in text and f"ETA ~{duration(125)}" in text, text


def test_eta_is_unknown_until_a_time_is_known_then_uses_the_estimate() -> None:
    progress = Progress("s", ["optim.lr"], "val_loss", console=Console(), live=False)
    progress.set_eta(todo=3, slots=1)
    now = time.time()
    running = [_trial(1, "running", now + 1, step=25)]
    assert progress.eta(running, now + 2) == "ETA unknown"
    progress.estimate = 400.0  # from the dry run's sources: 3/4 of one trial + two more
    assert progress.eta(running, now + 2) == f"ETA ~{duration(300 + 800)}"


def test_stage_goes_to_stderr_as_a_plain_line(capsys) -> None:
    progress = Progress("s", [], "val_loss", live=False)
    progress.stage("preparing data…")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.rstrip().endswith("preparing data…")
