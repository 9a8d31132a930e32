"""Trial lifecycle on real processes: honest states, retries, hyperband, stop, Ctrl-C, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from orch_helpers import (FAKE, orch_env, pid_alive, run_orch, start_orch, starts, wait_for,
                          write_spec)

from orchestrator.launch.local import find_marked
from orchestrator.ledger import Ledger

SLOW = {"default": {"step_time": 0.4, "curve": [3, 2.5, 2, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3, 1.2]}}


def _states(home: Path, sweep: str = "t") -> dict[int, str]:
    return {t.number: t.state for t in Ledger(home).trials(sweep)}


def _seed_starts(home: Path) -> list[str]:
    return sorted(s["train.seed"] for s in starts(home))


def test_crash_diverge_timeout_and_missing_result_each_get_their_state(orch_home: Path,
                                                                      tmp_path: Path) -> None:
    script = {"key": "train.seed", "cases": {
        "2": {"mode": "crash"}, "3": {"mode": "diverge"},
        "4": {"mode": "hang", "stubborn": True}, "5": {"mode": "noresult"}}}
    spec = write_spec(tmp_path / "s.yaml",
                      parameters={"train.seed": {"values": [1, 2, 3, 4, 5, 6]}},
                      resources={"timeout": "3s", "kill_grace": "1s", "retries": 1,
                                 "cpu_slots": 2})
    proc = run_orch(["sweep", str(spec)], orch_env(orch_home, script))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = {t.params["train.seed"]: t for t in Ledger(orch_home).trials("t")}
    assert trials[1].state == "finished" and trials[6].state == "finished"
    assert trials[2].state == "failed" and trials[2].exit_code == 1
    assert "scripted crash" in (trials[2].reason or "")
    assert trials[2].attempts == 2  # one retry for a crash
    assert trials[3].state == "diverged" and trials[3].attempts == 1  # never retried
    assert trials[4].state == "timeout" and trials[4].exit_code == -signal.SIGKILL
    assert trials[5].state == "failed" and "exit 0 but" in (trials[5].reason or "")
    # Missing numbers stay missing in the final table: never shown as 0.
    assert trials[2].final.get("val_loss") is None
    table = proc.stdout
    assert "diverged" in table and "timeout" in table and "0.0000" not in table
    assert (Path(trials[2].run_dir) / "trial.log").read_text().count("scripted crash") >= 1
    assert Path(trials[2].run_dir).name.endswith(".a2")  # the retry kept the first log


def test_hyperband_stops_a_lagging_trial(orch_home: Path, tmp_path: Path) -> None:
    slow_bad = {"step_time": 0.3, "curve": [5.0] * 30}
    script = {"key": "train.seed", "default": {"curve": [3.0, 2.0, 1.0]},
              "cases": {"4": slow_bad}}
    spec = write_spec(tmp_path / "s.yaml",
                      parameters={"train.seed": {"values": [1, 2, 3, 4]}},
                      early_terminate={"type": "hyperband", "min_iter": 1, "eta": 2})
    proc = run_orch(["sweep", str(spec)], orch_env(orch_home, script))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = {t.params["train.seed"]: t for t in Ledger(orch_home).trials("t")}
    assert [trials[s].state for s in (1, 2, 3)] == ["finished"] * 3
    assert trials[4].state == "stopped" and "hyperband" in (trials[4].reason or "")
    assert trials[4].step is not None and trials[4].step < 300
    # A hyperband stop is final: resuming does not run it again.
    run_orch(["sweep", str(spec)], orch_env(orch_home, script))
    assert _seed_starts(orch_home).count("4") == 1


def test_resume_after_a_clean_partial_run_never_reruns_finished(orch_home: Path,
                                                               tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", parameters={"train.seed": {"values": [1, 2, 3, 4]}})
    first = run_orch(["sweep", str(spec), "--max-trials", "2"], orch_env(orch_home))
    assert first.returncode == 0, first.stdout + first.stderr
    assert list(_states(orch_home).values()) == ["finished", "finished"]
    assert Ledger(orch_home).sweep("t")["state"] == "paused"
    second = run_orch(["sweep", str(spec)], orch_env(orch_home))
    assert second.returncode == 0
    assert list(_states(orch_home).values()) == ["finished"] * 4
    assert _seed_starts(orch_home) == ["1", "2", "3", "4"]
    ls = run_orch(["ls"], orch_env(orch_home))
    assert "4 finished" in ls.stdout and "finished" in ls.stdout
    status = run_orch(["status", "t"], orch_env(orch_home))
    assert status.returncode == 0 and "30/30" in status.stdout
    results = run_orch(["results", "t"], orch_env(orch_home))
    assert results.returncode == 0 and "1.5000" in results.stdout


def _interrupt_and_resume(home: Path, spec: Path, interrupt) -> None:
    """Start a slow sweep, interrupt it once a trial finished and one runs, then resume."""
    script = {"key": "train.seed", "cases": {"1": {"curve": [2.0]}}, **SLOW}
    proc = start_orch(["sweep", str(spec)], orch_env(home, script))
    try:
        wait_for(lambda: _states(home).get(1) == "finished" and _states(home).get(2) == "running",
                 what="trial 1 finished and trial 2 running")
        running = Ledger(home).trials("t")[1]
        code = interrupt(proc)
        assert code == 130, proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    states = _states(home)
    assert states[1] == "finished" and states[2] == "stopped"
    assert "running" not in states.values()
    assert not pid_alive(running.pid)
    assert find_marked(f"{home}:") == []
    fast = run_orch(["sweep", str(spec)], orch_env(home))
    assert fast.returncode == 0, fast.stdout + fast.stderr
    assert set(_states(home).values()) == {"finished"}
    seeds = _seed_starts(home)
    assert seeds.count("1") == 1 and seeds.count("2") == 2 and "3" in seeds


def test_resume_after_ctrl_c(orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml")

    def ctrl_c(proc) -> int:
        proc.send_signal(signal.SIGINT)
        return proc.wait(timeout=30)

    _interrupt_and_resume(orch_home, spec, ctrl_c)


def test_orch_stop_from_another_terminal(orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml")

    def stop(proc) -> int:
        answer = run_orch(["stop", "t"], orch_env(orch_home))
        assert answer.returncode == 0 and "asked sweep t" in answer.stdout
        return proc.wait(timeout=30)

    _interrupt_and_resume(orch_home, spec, stop)


def test_kill_9_of_the_orchestrator_leaves_no_orphans_and_resumes(orch_home: Path,
                                                                 tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", resources={"cpu_slots": 2},
                      parameters={"train.seed": {"values": [1, 2, 3, 4]}})
    script = {"key": "train.seed", "cases": {"1": {"curve": [2.0]}}, **SLOW}
    proc = start_orch(["sweep", str(spec)], orch_env(orch_home, script))
    try:
        wait_for(lambda: _states(orch_home).get(1) == "finished"
                 and list(_states(orch_home).values()).count("running") == 2,
                 what="one finished and two running trials")
        pids = [t.pid for t in Ledger(orch_home).trials("t") if t.state == "running"]
        assert all(pid_alive(p) for p in pids)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The parent-death signal ends the trials without any help.
    wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=10, what="trials to die")
    assert find_marked(f"{orch_home}:") == []
    ls = run_orch(["ls"], orch_env(orch_home))
    assert "interrupted" in ls.stdout  # owner dead, trials still marked running
    again = run_orch(["sweep", str(spec)], orch_env(orch_home))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "left running by a dead orchestrator" in again.stdout
    assert set(_states(orch_home).values()) == {"finished"}
    seeds = _seed_starts(orch_home)
    assert seeds.count("1") == 1  # the finished trial did not run again
    assert sorted(set(seeds)) == ["1", "2", "3", "4"]


def test_second_orchestrator_on_a_running_sweep_is_refused(orch_home: Path,
                                                          tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    proc = start_orch(["sweep", str(spec)], orch_env(orch_home, SLOW))
    try:
        wait_for(lambda: "running" in _states(orch_home).values(), what="a running trial")
        other = run_orch(["sweep", str(spec)], orch_env(orch_home))
        assert other.returncode == 1 and "is running under pid" in other.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143


# The fake trainer, noting each subcommand it is run with (schema, validate, prepare, a trial).
NOTING = f"""import os, runpy, sys
with open(os.environ["CALLS_LOG"], "a") as fh:
    fh.write((sys.argv[1] if len(sys.argv) > 1 else "") + "\\n")
sys.argv[0] = {str(FAKE)!r}
runpy.run_path({str(FAKE)!r}, run_name="__main__")
"""


def test_a_busy_sweep_is_refused_before_the_launcher_and_data_are_prepared(
        orch_home: Path, tmp_path: Path) -> None:
    noting = tmp_path / "noting.py"
    noting.write_text(NOTING)
    calls = tmp_path / "calls.log"
    spec = write_spec(tmp_path / "s.yaml", parameters={"train.seed": {"values": [1]}},
                      program=f"{sys.executable} {noting}")
    docker = write_spec(tmp_path / "d.yaml", launcher={"type": "docker", "image": "orch:none"})
    ledger = Ledger(orch_home)
    ledger.upsert_sweep("t", str(spec), {}, ["train.seed"], "val_loss", "minimize")
    assert ledger.claim("t") is None  # this test's process owns the sweep, and lives
    env = orch_env(orch_home, CALLS_LOG=str(calls), DOCKER_HOST="unix:///nonexistent.sock")
    for path in (spec, docker):
        busy = run_orch(["sweep", str(path)], env)
        assert busy.returncode == 1, busy.stdout + busy.stderr
        assert f"sweep t is running under pid {os.getpid()}" in busy.stderr
        assert "Docker engine" not in busy.stderr  # refused before reaching for the engine
    assert "prepare" not in calls.read_text().split()
    assert starts(orch_home) == []
    # Owned by no one, the same sweep prepares its data, then runs.
    ledger.release("t", "stopped")
    proc = run_orch(["sweep", str(spec)], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "prepare" in calls.read_text().split() and len(starts(orch_home)) == 1


def test_name_option_runs_one_spec_as_a_new_sweep(orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", parameters={"train.seed": {"values": [1, 2]}})
    assert run_orch(["sweep", str(spec)], orch_env(orch_home)).returncode == 0
    # Under its own name the spec would resume and skip both; under --name it runs again.
    again = run_orch(["sweep", str(spec), "--name", "t-gh2"], orch_env(orch_home))
    assert again.returncode == 0, again.stdout + again.stderr
    assert _states(orch_home) == _states(orch_home, "t-gh2") == {1: "finished", 2: "finished"}
    assert _seed_starts(orch_home) == ["1", "1", "2", "2"]
    bad = run_orch(["sweep", str(spec), "--name", "no spaces"], orch_env(orch_home))
    assert bad.returncode == 2 and "--name 'no spaces'" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert [s["name"] for s in Ledger(orch_home).sweeps()] == ["t", "t-gh2"]
    assert _seed_starts(orch_home) == ["1", "1", "2", "2"]  # nothing launched


def test_ctrl_c_under_name_says_how_to_resume_that_sweep(orch_home: Path, tmp_path: Path) -> None:
    """The hint repeats the name and the settings (--set, --data): without them a resume
    would train other configurations."""
    spec = write_spec(tmp_path / "s.yaml", parameters={"train.seed": {"values": [1, 2]}})
    proc = start_orch(["sweep", str(spec), "--name", "t-gh3", "--set", "optim.lr=0.05"],
                      orch_env(orch_home, SLOW))
    try:
        wait_for(lambda: "running" in _states(orch_home, "t-gh3").values(), what="a running trial")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        out = proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    hint = f"orch sweep {spec} --name t-gh3 --set optim.lr=0.05"
    assert f"`{hint}` resumes it" in " ".join(out.split())
    again = run_orch(hint.split()[1:], orch_env(orch_home))
    assert again.returncode == 0, again.stdout + again.stderr
    assert _states(orch_home, "t-gh3") == {1: "finished", 2: "finished"}


def test_another_program_or_metric_under_a_recorded_name_is_refused(orch_home: Path,
                                                                    tmp_path: Path) -> None:
    """A spec that names a recorded sweep but optimizes another metric (or runs another
    program) would add its trials to that sweep's table and `orch best`: refused, exit 2,
    nothing launched; under another name it runs."""
    first = write_spec(tmp_path / "a.yaml", parameters={"train.seed": {"values": [1]}})
    assert run_orch(["sweep", str(first)], orch_env(orch_home)).returncode == 0
    other = write_spec(tmp_path / "b.yaml", parameters={"train.seed": {"values": [1, 2]}},
                       metric={"name": "val_bpb", "goal": "minimize"})
    for extra in (["--dry-run", "--no-probe"], []):
        proc = run_orch(["sweep", str(other), *extra], orch_env(orch_home))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        text = " ".join(proc.stderr.split())
        assert f"sweep t is already in the ledger (from {first})" in text
        assert "metric 'val_loss', here 'val_bpb'" in text and "--name t-2" in text
    assert _seed_starts(orch_home) == ["1"]
    assert run_orch(["sweep", str(other), "--name", "t-2"], orch_env(orch_home)).returncode == 0
    assert _seed_starts(orch_home) == ["1", "1", "2"]
    # The same program and metric with an edited grid resumes the recorded sweep, and says
    # that the trials of configurations it no longer has stay in it.
    edited = write_spec(tmp_path / "c.yaml", parameters={"train.seed": {"values": [3]}})
    proc = run_orch(["sweep", str(edited)], orch_env(orch_home))
    assert proc.returncode == 0, proc.stderr
    assert "note: sweep t holds 1 trial(s) of points this spec's grid no longer has" \
        in " ".join(proc.stderr.split())
    assert _states(orch_home) == {1: "finished", 2: "finished"}


def test_a_resume_with_other_shared_settings_is_refused(orch_home: Path, tmp_path: Path) -> None:
    """Resuming under other shared settings (`--set`, `overrides`, base, `--data`) ran the
    pending trials under their old config hash and took the new configurations of finished
    points for done: refused, dry run included, nothing launched; the same settings resume."""
    spec = write_spec(tmp_path / "s.yaml", parameters={"train.seed": {"values": [1, 2, 3]}})
    env = orch_env(orch_home)
    first = run_orch(["sweep", str(spec), "--set", "optim.lr=0.01", "--max-trials", "1"], env)
    assert first.returncode == 0, first.stderr
    for extra in (["--dry-run", "--no-probe"], []):
        proc = run_orch(["sweep", str(spec), "--set", "optim.lr=0.02", *extra], env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        text = " ".join(proc.stderr.split())
        assert "the settings all trials share (base, overrides, --set, --data) differ from " \
            "those sweep t ran with: its trial 1 (train.seed=1)" in text
        assert "Traceback" not in text and "--name t-2" in text
    assert _seed_starts(orch_home) == ["1"]
    again = run_orch(["sweep", str(spec), "--set", "optim.lr=0.01"], env)
    assert again.returncode == 0, again.stderr
    assert _states(orch_home) == {1: "finished", 2: "finished", 3: "finished"}
    assert _seed_starts(orch_home) == ["1", "2", "3"]


def test_stop_of_a_sweep_whose_orchestrator_died_says_so(orch_home: Path) -> None:
    """`orch stop` said it asked a killed orchestrator to stop."""
    import subprocess

    owner = subprocess.run([sys.executable, "-c", (
        "import sys; from pathlib import Path; from orchestrator.ledger import Ledger\n"
        "ledger = Ledger(Path(sys.argv[1]))\n"
        "ledger.upsert_sweep('t', 't.yaml', {}, [], 'val_loss', 'minimize')\n"
        "ledger.claim('t'); print(__import__('os').getpid())"), str(orch_home)],
        capture_output=True, text=True, check=True)  # it claims the sweep and exits
    pid = int(owner.stdout)
    proc = run_orch(["stop", "t"], orch_env(orch_home))
    assert proc.returncode == 0, proc.stderr
    said = " ".join(proc.stdout.split())
    assert f"sweep t is not running: its orchestrator (pid {pid}) is gone; `orch sweep` " \
        "resumes it" in said and "asked" not in said


def test_ctrl_c_while_orch_is_still_importing_exits_130_without_a_traceback(
        orch_home: Path) -> None:
    """The `orch` entry point itself, with Ctrl-C arriving during the app's imports (an import
    hook raises it where the signal would land)."""
    code = ("import sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'typer':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "from orchestrator.__main__ import main\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code, "ls"], env=orch_env(orch_home),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
