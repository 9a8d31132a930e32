"""The launch values every launcher shares, without a launcher: the trial command each one
renders for its world, and the stop rules (timeout, SIGTERM, SIGKILL after grace) the run loop
applies to all of them."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from signal import SIGKILL, SIGTERM, Signals

from orchestrator.launch.command import TrialCommand, written
from orchestrator.launch.protocol import Run
from orchestrator.run.stopping import Stopper

COMMAND = TrialCommand(written("python -m trainer"), Path("/specs/base.yaml"),
                       Path("/home/runs/s/001-abcd"), {"attention.block": 64,
                                                       "data.path": "titles.csv"})


def test_one_command_renders_for_each_world() -> None:
    assert COMMAND.host() == [sys.executable, "-m", "trainer", "--config", "/specs/base.yaml",
                              "--out", "/home/runs/s/001-abcd", "attention.block=64",
                              'data.path="titles.csv"']
    assert COMMAND.as_written()[:3] == ["python", "-m", "trainer"]
    inside = COMMAND.render(COMMAND.program, "/orch/config/base.yaml", "/orch/run",
                            {**COMMAND.overrides, "data.path": "/orch/data/titles.csv"})
    assert inside == ["python", "-m", "trainer", "--config", "/orch/config/base.yaml", "--out",
                      "/orch/run", "attention.block=64", 'data.path="/orch/data/titles.csv"']


class Recorder:
    """A launcher that only records the signals it is asked to deliver."""

    def __init__(self) -> None:
        self.sent: list[Signals] = []

    def signal(self, run: Run, sig: Signals) -> None:
        self.sent.append(sig)


def _run(begun: float | None) -> Run:
    return Run(trial_id=1, run_dir=Path("/x"), started=0.0, log=Path("/x/trial.log"),
               begun=begun)


def test_the_timeout_counts_running_time_and_the_kill_comes_once_after_grace() -> None:
    launcher = Recorder()
    stopper = Stopper(launcher, timeout=10.0, grace=2.0)  # type: ignore[arg-type]
    now = time.time()
    queued = _run(begun=None)
    stopper.enforce(queued, now + 1000)  # queued for ages: not over its time
    assert launcher.sent == [] and not queued.timed_out
    run = _run(begun=now - 9)
    stopper.enforce(run, now)
    assert launcher.sent == []
    stopper.enforce(run, now + 1)
    assert launcher.sent == [SIGTERM] and run.timed_out and run.term_sent is not None
    stopper.stop(run, "stopped")  # a later stop neither signals again nor relabels a timeout
    stopper.enforce(run, run.term_sent + 1)
    assert launcher.sent == [SIGTERM] and run.stop_reason is None
    stopper.enforce(run, run.term_sent + 2)
    stopper.enforce(run, run.term_sent + 3)
    assert launcher.sent == [SIGTERM, SIGKILL]


def test_a_second_ctrl_c_skips_the_grace_period() -> None:
    launcher = Recorder()
    stopper = Stopper(launcher, timeout=None, grace=60.0)  # type: ignore[arg-type]
    run = _run(begun=0.0)
    stopper.stop(run, "interrupted")
    stopper.enforce(run, time.time())
    assert launcher.sent == [SIGTERM] and run.stop_reason == "interrupted"
    Stopper.hurry(run)
    stopper.enforce(run, time.time())
    assert launcher.sent == [SIGTERM, SIGKILL]
