"""The Slurm launcher on a real single-node Slurm (../shared/slurm/start-slurm.sh), no mocks.

Trials run the fake trainer (tests/fake_trainer.py) as Slurm jobs, 2 at a time on the 2 CPUs;
one runs the real trainer. Locally these skip with a reason when no Slurm controller answers;
in CI (CI=true) they fail instead. The pure parts (state mapping, time limits, batch scripts,
spec checks) are tested without a cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from orch_helpers import BASE_TINY, orch_env, run_orch, start_orch, starts, wait_for, write_spec
from pydantic import ValidationError
from slurm_fixtures import cluster  # noqa: F401

from orchestrator.launch.slurm import commands as slurm
from orchestrator.ledger import Ledger, Trial
from orchestrator.launch.slurm.launcher import batch_script, slurm_time, verdict
from orchestrator.spec.model import SweepSpec
from orchestrator.states import INTERRUPTED

# A trial that trains until it is stopped (or for 10 s), one that ends at once.
SLOW = {"step_time": 0.5, "curve": [3.0 - 0.1 * i for i in range(20)]}
FAST = {"curve": [2.0]}


def _name() -> str:
    """A sweep name no earlier run used: sacct remembers every job by its name."""
    return f"s{uuid.uuid4().hex[:8]}"


def _spec(tmp_path: Path, name: str, seeds: list[int], **fields: Any) -> Path:
    launcher = {"type": "slurm", "max_concurrent": 2, "poll": 0.3, **fields.pop("launcher", {})}
    return write_spec(tmp_path / f"{name}.yaml", name=name, launcher=launcher,
                      parameters={"train.seed": {"values": seeds}},
                      resources={"kill_grace": "2s", **fields.pop("resources", {})}, **fields)


def _trials(home: Path, name: str) -> dict[int, Trial]:
    return {t.params["train.seed"]: t for t in Ledger(home).trials(name)}


def _queued(job_ids: list[str]) -> dict[str, str]:
    """Job id -> state of those jobs still queued or running."""
    return {j: s.state for j, s in slurm.queue(job_ids).items() if not s.ended}


def _training(home: Path, name: str, seeds: list[int]) -> dict[int, Trial] | None:
    """These trials as Slurm jobs that are RUNNING and have logged a training step."""
    trials = _trials(home, name)
    picked = {s: trials[s] for s in seeds if s in trials}
    jobs = [t.job or "" for t in picked.values() if t.state == "running"]
    if len(jobs) != len(seeds) or set(_queued(jobs).values()) != {"RUNNING"}:
        return None
    for t in picked.values():
        events = Path(t.run_dir or "") / "events.jsonl"
        if not events.exists() or b"training_step" not in events.read_bytes():
            return None
    return picked


def _jobs_by_name(name: str, number: int) -> list[tuple[str, str]]:
    """(job id, state) of every job sacct recorded under a trial's job name."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "--name", f"orch:{name}:{number}", "-o",
                          "JobID,State"], capture_output=True, text=True, check=True).stdout
    return [(job, state) for job, _, state in (line.partition("|") for line in out.splitlines())
            if job]


def _recorded(name: str, numbers: list[int]) -> dict[int, list[tuple[str, str]]]:
    """Every trial's jobs once accounting holds each as ended (slurmdbd lags by a moment)."""
    def ended() -> dict[int, list[tuple[str, str]]] | None:
        found = {n: _jobs_by_name(name, n) for n in numbers}
        done = all(jobs and all(st.split()[0] in slurm.ENDED for _, st in jobs)
                   for jobs in found.values())
        return found if done else None

    return wait_for(ended, timeout=30, what="the jobs' accounting records")


# -- on the cluster -------------------------------------------------------------------------------


def test_three_trials_two_at_a_time_with_a_failure_and_a_timeout(cluster: None, orch_home: Path,
                                                                tmp_path: Path) -> None:
    name = _name()
    script = {"key": "train.seed", "default": {"step_time": 0.3},
              "cases": {"2": {"mode": "crash"}, "3": {"mode": "hang"}}}
    spec = _spec(tmp_path, name, [1, 2, 3], resources={"timeout": "4s"})
    proc = run_orch(["sweep", str(spec)], orch_env(orch_home, script))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    t = _trials(orch_home, name)
    assert t[1].state == "finished" and t[1].exit_code == 0 and t[1].final["val_loss"] == 1.5
    assert t[2].state == "failed" and t[2].exit_code == 1
    assert "scripted crash" in (t[2].reason or "")
    assert t[3].state == "timeout" and t[3].reason == "exceeded resources.timeout"
    # Two in flight together, and the third submitted only once one of them had ended.
    assert t[2].started_at < t[1].ended_at and t[1].started_at < t[2].ended_at  # type: ignore
    assert t[3].started_at >= min(t[1].ended_at, t[2].ended_at)  # type: ignore
    jobs = _recorded(name, [1, 2, 3])
    assert [len(j) for j in jobs.values()] == [1, 1, 1]  # one job per trial, named for it
    assert jobs[1][0] == (t[1].job, "COMPLETED") and jobs[2][0] == (t[2].job, "FAILED")
    run1, run2 = Path(t[1].run_dir or ""), Path(t[2].run_dir or "")
    assert f"#SBATCH --job-name=orch:{name}:1\n" in (run1 / "job.sh").read_text()
    assert "fake run" in (run1 / "trial.log").read_text()  # the job's output went to the log
    assert "scripted crash" in (run2 / "trial.log").read_text()


def test_orch_stop_cancels_exactly_the_sweeps_jobs(cluster: None, orch_home: Path,
                                                   tmp_path: Path) -> None:
    name = _name()
    # A queued job of another sweep by the same naming scheme: `orch stop` must not touch it.
    other = slurm.submit(_wrap(tmp_path, "sleep 300"), dict(os.environ),
                         ["--hold", f"--job-name=orch:{_name()}:1"])
    try:
        spec = _spec(tmp_path, name, [1, 2, 3])
        proc = start_orch(["sweep", str(spec)], orch_env(orch_home, {"default": SLOW}))
        running = wait_for(lambda: _training(orch_home, name, [1, 2]), timeout=60,
                           what="two trials training as Slurm jobs")
        answer = run_orch(["stop", name], orch_env(orch_home))
        assert answer.returncode == 0 and f"asked sweep {name}" in answer.stdout
        assert proc.wait(timeout=60) == 130
        t = _trials(orch_home, name)
        assert [t[1].state, t[2].state] == ["stopped", "stopped"] and 3 not in t
        assert t[1].reason == INTERRUPTED  # so a resume runs them again
        assert _queued([r.job or "" for r in running.values()]) == {}
        assert _queued([other]) == {other: "PENDING"}
    finally:
        slurm.cancel([other])


def test_resume_after_kill_9_adopts_the_running_jobs(cluster: None, orch_home: Path,
                                                     tmp_path: Path) -> None:
    name = _name()
    script = {"key": "train.seed", "default": SLOW, "cases": {"1": FAST, "4": FAST}}
    spec = _spec(tmp_path, name, [1, 2, 3, 4])
    proc = start_orch(["sweep", str(spec)], orch_env(orch_home, script))
    try:
        running = wait_for(lambda: _trials(orch_home, name).get(1, None) is not None
                           and _trials(orch_home, name)[1].state == "finished"
                           and _training(orch_home, name, [2, 3]), timeout=60,
                           what="trial 1 finished and trials 2, 3 training")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    jobs = {n: t.job or "" for n, t in running.items()}
    assert _queued(list(jobs.values())) == {j: "RUNNING" for j in jobs.values()}  # run on
    again = run_orch(["sweep", str(spec)], orch_env(orch_home, script))
    assert again.returncode == 0, again.stdout + again.stderr
    for n in (2, 3):
        assert f"trial {n}: adopted Slurm job {jobs[n]} (RUNNING)" in again.stdout
    t = _trials(orch_home, name)
    assert {x.state for x in t.values()} == {"finished"}
    assert {n: t[n].job for n in (2, 3)} == jobs and t[2].attempts == 1
    assert sorted(s["train.seed"] for s in starts(orch_home)) == ["1", "2", "3", "4"]
    recorded = _recorded(name, [1, 2, 3, 4])
    assert all(len(j) == 1 for j in recorded.values()), recorded  # sbatch never ran twice
    # Each validation is recorded once, though the resume re-read the events from the start.
    history = Ledger(orch_home).history(t[2])
    assert [h.metrics["val_loss"] for h in history] == SLOW["curve"]


def test_ctrl_c_detach_leaves_jobs_running_until_orch_stop(cluster: None, orch_home: Path,
                                                           tmp_path: Path) -> None:
    name = _name()
    spec = _spec(tmp_path, name, [1, 2])
    proc = start_orch(["sweep", str(spec), "--detach"], orch_env(orch_home, {"default": SLOW}))
    running = wait_for(lambda: _training(orch_home, name, [1, 2]), timeout=60,
                       what="two trials training as Slurm jobs")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert "detached: its Slurm jobs run on" in (proc.stdout.read() if proc.stdout else "")
    jobs = [t.job or "" for t in running.values()]
    assert _queued(jobs) == {j: "RUNNING" for j in jobs}
    assert Ledger(orch_home).sweep(name)["state"] == "detached"  # type: ignore[index]
    stop = run_orch(["stop", name], orch_env(orch_home))
    assert stop.returncode == 0 and "cancelled 2 Slurm job(s)" in stop.stdout, stop.stdout
    wait_for(lambda: not _queued(jobs), timeout=30, what="the jobs to be cancelled")
    t = _trials(orch_home, name)
    assert [(t[n].state, t[n].reason) for n in (1, 2)] == [("stopped", INTERRUPTED)] * 2
    again = run_orch(["sweep", str(spec)], orch_env(orch_home, {"default": FAST}))
    assert again.returncode == 0, again.stdout + again.stderr
    assert {x.state for x in _trials(orch_home, name).values()} == {"finished"}


def test_ctrl_c_with_yes_cancels_the_jobs(cluster: None, orch_home: Path,
                                          tmp_path: Path) -> None:
    name = _name()
    proc = start_orch(["sweep", str(_spec(tmp_path, name, [1, 2])), "--yes"],
                      orch_env(orch_home, {"default": SLOW}))
    running = wait_for(lambda: _training(orch_home, name, [1, 2]), timeout=60,
                       what="two trials training as Slurm jobs")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert _queued([t.job or "" for t in running.values()]) == {}
    t = _trials(orch_home, name)
    assert [(t[n].state, t[n].reason) for n in (1, 2)] == [("stopped", INTERRUPTED)] * 2


def test_scancel_from_outside_is_stopped_and_not_retried(cluster: None, orch_home: Path,
                                                         tmp_path: Path) -> None:
    name = _name()
    spec = _spec(tmp_path, name, [1], resources={"retries": 1})
    proc = start_orch(["sweep", str(spec)], orch_env(orch_home, {"default": SLOW}))
    running = wait_for(lambda: _training(orch_home, name, [1]), timeout=60,
                       what="a trial training as a Slurm job")
    subprocess.run(["scancel", running[1].job or ""], check=True)
    assert proc.wait(timeout=60) == 1  # nothing finished
    t = _trials(orch_home, name)[1]
    assert t.state == "stopped" and "cancelled outside orch" in (t.reason or "")
    assert t.attempts == 1 and _recorded(name, [1])[1][0][1].startswith("CANCELLED")


def test_real_trainer_trial_as_a_slurm_job(cluster: None, orch_home: Path, tmp_path: Path,
                                           tiny_titles: Path) -> None:
    name = _name()
    spec = _spec(tmp_path, name, [1], program=f"{sys.executable} -m trainer",
                 overrides={"data.num_titles": 500, "data.path": str(tiny_titles)},
                 launcher={"setup": ['echo "setup ran on $(hostname)"'], "cpus_per_trial": 2})
    proc = run_orch(["sweep", str(spec)], orch_env(orch_home), timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    t = _trials(orch_home, name)[1]
    assert t.state == "finished" and 0 < t.final["val_coverage"] <= 1 and t.step == t.max_steps
    log = (Path(t.run_dir or "") / "trial.log").read_text()
    assert "setup ran on" in log and "validation_step" in log


def test_wandb_agents_as_a_job_array(cluster: None, orch_home: Path, tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "wandb"  # W&B is out of reach here: an agent that says who it is
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "agent $* task=$SLURM_ARRAY_TASK_ID dir=$WANDB_DIR"\n')
    fake.chmod(0o755)
    sweep = f"ent/proj/{_name()}"
    env = orch_env(orch_home, PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    proc = run_orch(["agent", sweep, "--launcher", "slurm", "--count", "3", "--gpus", "none"],
                    env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "as Slurm job array" in proc.stderr
    logs = orch_home / "agents" / sweep.rsplit("/", 1)[1] / "slurm"
    script = (logs / "agents.sh").read_text()
    assert "#SBATCH --array=0-2\n" in script and "--gres" not in script

    def own_line(log: str) -> str | None:
        # The agent's own line; slurmstepd may write its warnings into the same log first.
        return next((x for x in log.splitlines() if x.startswith("agent ")), None)

    def said() -> list[str] | None:
        found = [own_line(p.read_text()) for p in sorted(logs.glob("agent-*.log"))]
        return found if len(found) == 3 and all(found) else None

    lines = wait_for(said, timeout=60, what="three agents' lines in their logs")
    for task, line in enumerate(lines):
        assert line.startswith(f"agent agent --forward-signals --count 1 {sweep} task={task} ")
        assert line.strip().endswith(f"/task-{task}")


def _wrap(tmp_path: Path, command: str) -> Path:
    script = tmp_path / f"wrap-{uuid.uuid4().hex[:6]}.sh"
    script.write_text(f"#!/bin/sh\n#SBATCH --output=/dev/null\n{command}\n")
    return script


# -- without a cluster -----------------------------------------------------------------------------


@pytest.mark.parametrize("state, expected", [
    ("COMPLETED", None), ("FAILED", None),
    ("TIMEOUT", "timeout"), ("OUT_OF_MEMORY", "oom"), ("CANCELLED", "stopped"),
    ("PREEMPTED", "killed"), ("NODE_FAIL", "killed"), ("BOOT_FAIL", "killed")])
def test_slurm_states_map_to_trial_states(state: str, expected: str | None) -> None:
    got = verdict(slurm.JobState("7", state, "by 0" if state == "CANCELLED" else ""))
    assert (got and got[0]) == expected
    if expected == "killed":  # `killed` is retryable: preemption is retried within the budget
        from orchestrator.states import RETRYABLE

        assert expected in RETRYABLE and "retried" in got[1]  # type: ignore[index]


def test_exit_codes_and_time_limits() -> None:
    assert slurm.JobState("1", "FAILED", exit_code=3).code == 3
    assert slurm.JobState("1", "CANCELLED", exit_code=0, signal=15).code == -15
    assert slurm._exit("1:0") == (1, 0) and slurm._exit("0:9") == (0, 9)
    assert slurm_time("90", None, 0) == "90"  # minutes, as sbatch reads it
    assert slurm_time("1h30m", None, 0) == "90"
    assert slurm_time("2-00:00:00", None, 0) == "2-00:00:00"
    assert slurm_time(None, 600, 10) == "12"  # orch's timeout + grace, then a minute to spare
    assert slurm_time(None, None, 10) is None


def test_batch_script_runs_setup_then_execs_the_trial_in_the_container() -> None:
    text = batch_script("t", ["--job-name=orch:s:1", "--comment=orch home=x sweep=s"],
                        ["module load cuda/12", "source /venv/bin/activate"],
                        ["python", "-m", "trainer", "--out", "/runs/a b", 'k="v"'],
                        "apptainer exec --nv img.sif")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash" and "#SBATCH --job-name=orch:s:1" in lines
    assert '#SBATCH --comment="orch home=x sweep=s"' in lines
    assert lines.index("module load cuda/12") > lines.index(next(x for x in lines
                                                                 if x.startswith("set -e")))
    assert lines[-1] == ("exec apptainer exec --nv img.sif python -m trainer --out '/runs/a b' "
                         "'k=\"v\"'")


def test_spec_slurm_section_is_checked() -> None:
    base = {"name": "s", "base": str(BASE_TINY), "method": "grid",
            "parameters": {"train.seed": {"values": [1]}}}
    spec = SweepSpec.model_validate({**base, "launcher": {
        "type": "slurm", "partition": "gpu", "time": "2h", "gpus_per_trial": 1, "mem": "16G",
        "setup": ["module load cuda"], "container_prefix": "apptainer exec --nv x.sif"}})
    assert spec.launcher.partition == "gpu" and spec.launcher.max_concurrent == 4
    with pytest.raises(ValidationError, match="partition: Slurm settings; they need `type: slurm`"):
        SweepSpec.model_validate({**base, "launcher": {"partition": "gpu"}})
    with pytest.raises(ValidationError, match="not a time limit"):
        SweepSpec.model_validate({**base, "launcher": {"type": "slurm", "time": "soon"}})
