"""Run-time estimates before a sweep: from the ledger's finished trials, from a probe, or none."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from orch_helpers import BASE_TINY, FAKE, orch_env, run_orch, write_spec
from orchestrator.contract import program_argv
from orchestrator.run.estimate import DAY, LOWER_BOUND, WARM_UP_ONLY, ProbeCache, duration
from orchestrator.ledger import Ledger
from trainer.config import load_config

PROGRAM = f"{sys.executable} {FAKE}"


def _seed_history(home: Path, walls: list[float], device: str = "cpu") -> None:
    """Finished trials of an earlier sweep on the same program, one per wall time; their
    configs differ from the new sweep's only in train.seed, which costs nothing."""
    ledger = Ledger(home)
    ledger.upsert_sweep("earlier", "earlier.yaml", {"program": PROGRAM}, ["train.seed"],
                        "val_loss", "minimize")
    for i, wall in enumerate(walls):
        config = load_config(BASE_TINY, [f"train.seed={100 + i}"]).model_dump(mode="json")
        t = ledger.add_trial("earlier", f"h{i}", {"train.seed": 100 + i})
        ledger.mark_running(t.id, pid=1, pgid=1, run_dir="x", slot=0, started_at=0.0, job=None)
        ledger.set_device(t.id, device)
        ledger.finish(t.id, state="finished", reason="", exit_code=0, ended_at=wall,
                      final={"val_loss": 1.0}, best=None, program_wall=wall, config=config)
    ledger.close()


def test_dry_run_estimates_from_finished_trials_in_the_ledger(orch_home: Path,
                                                              tmp_path: Path) -> None:
    walls = [100.0, 300.0, 700.0]
    _seed_history(orch_home, walls)
    spec = write_spec(tmp_path / "s.yaml", program=PROGRAM,
                      parameters={"train.seed": {"values": [1, 2, 3, 4]}},
                      resources={"gpus": None, "cpu_slots": 2})
    proc = run_orch(["sweep", str(spec), "--dry-run"], orch_env(orch_home))
    assert proc.returncode == 0, proc.stderr
    per = statistics.median(walls)  # 300 s: the same shape, measured three times
    wall = 2 * per  # four trials on two slots
    assert (f"estimate: ~{duration(per)} per trial (ledger, cpu); sweep ~{duration(wall)} on "
            f"2 slot(s)") in proc.stdout, proc.stdout
    assert "probing" not in proc.stderr  # measured already: no probe


def test_history_on_another_device_type_does_not_count(orch_home: Path, tmp_path: Path) -> None:
    _seed_history(orch_home, [100.0], device="cuda:0")
    spec = write_spec(tmp_path / "s.yaml", program=PROGRAM)
    proc = run_orch(["sweep", str(spec), "--dry-run"], orch_env(orch_home))
    assert proc.returncode == 0, proc.stderr
    assert "estimate: no estimate (program has no probe)" in proc.stdout, proc.stdout


def test_a_program_without_probe_gets_no_estimate(orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", program=PROGRAM)
    proc = run_orch(["sweep", str(spec), "--dry-run"], orch_env(orch_home))
    assert proc.returncode == 0, proc.stderr
    assert "estimate: no estimate (program has no probe)" in proc.stdout, proc.stdout
    assert " per trial" not in proc.stdout


def test_a_sweep_longer_than_a_day_is_warned_about(orch_home: Path, tmp_path: Path) -> None:
    key = load_config(BASE_TINY, ["train.seed=1"]).cost_key()  # seeds share one cost key
    cache = ProbeCache(orch_home)
    cache.put(cache.key(program_argv(PROGRAM), key, "cpu"),
              {"seconds_per_trial": 40_000.0, "setup_seconds": 10.0})
    spec = write_spec(tmp_path / "s.yaml", program=PROGRAM)  # 3 trials, 1 slot
    proc = run_orch(["sweep", str(spec), "--dry-run"], orch_env(orch_home))
    assert proc.returncode == 0, proc.stderr
    assert (f"~{duration(40_000)} per trial (probe, cpu); sweep ~{duration(120_000)} on 1 slot"
            in proc.stdout), proc.stdout
    assert "more than a day" in proc.stderr
    quick = run_orch(["sweep", str(spec), "--dry-run", "--max-trials", "2"], orch_env(orch_home))
    assert "2 trial(s) would run" in quick.stdout  # --max-trials caps what would run
    assert "more than a day" not in quick.stderr  # 80,000 s: under a day


def _probe_starts(home: Path) -> int:
    """How many times the fake program's probe started."""
    log = home / "starts.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return sum(json.loads(line) == {"probe": True} for line in lines)


def _cached(home: Path) -> dict:
    """The one answer in the probe cache (the fake sweep has one cost key)."""
    answers = list(json.loads((home / "estimates.json").read_text()).values())
    assert len(answers) == 1, answers
    return answers[0]


def test_a_probe_stopped_after_its_warm_up_step_estimates_from_it(orch_home: Path,
                                                                  tmp_path: Path) -> None:
    setup = {"stage": "setup", "steps": 1000, "evals": 5, "setup_seconds": 5.0}
    stages = [setup, {**setup, "stage": "warm-up", "warmup_seconds": 2.0}]
    env = orch_env(orch_home, FAKE_PROBE=json.dumps(stages))
    spec = write_spec(tmp_path / "s.yaml", program=PROGRAM)  # 3 trials, one cost key, 1 slot
    proc = run_orch(["sweep", str(spec), "--dry-run", "--probe-budget", "2"], env)
    assert proc.returncode == 0, proc.stderr
    per = 5.0 + 1000 * 2.0  # setup + steps x the warm-up step
    line = (f"estimate: ~{duration(per)} per trial ({WARM_UP_ONLY}, cpu); sweep "
            f"~{duration(3 * per)} on 1 slot(s)")
    assert line in proc.stdout, proc.stdout
    assert "--probe-budget" in proc.stderr  # says how to get a better number
    assert _probe_starts(orch_home) == 1
    answer = _cached(orch_home)
    assert answer["partial"] == "warm-up" and answer["seconds_per_trial"] == per
    again = run_orch(["sweep", str(spec), "--dry-run"], env)  # cached: instant, no probe
    assert line in again.stdout, again.stdout
    assert "probing" not in again.stderr and _probe_starts(orch_home) == 1
    longer = run_orch(["sweep", str(spec), "--dry-run", "--probe-budget", "1"], env)
    assert longer.returncode == 0, longer.stderr
    assert _probe_starts(orch_home) == 2  # an explicit budget probes the partial shape again


def test_a_probe_stopped_before_its_first_step_ended_gives_a_lower_bound(
        orch_home: Path, tmp_path: Path) -> None:
    # Ten million steps: even a few milliseconds each are more than a day.
    stages = [{"stage": "setup", "steps": 10_000_000, "evals": 5, "setup_seconds": 1.0}]
    env = orch_env(orch_home, FAKE_PROBE=json.dumps(stages))
    spec = write_spec(tmp_path / "s.yaml", program=PROGRAM)
    proc = run_orch(["sweep", str(spec), "--dry-run", "--probe-budget", "2"], env)
    assert proc.returncode == 0, proc.stderr
    answer = _cached(orch_home)
    assert answer["partial"] == "lower bound" and answer["seconds_per_trial"] > DAY
    bound = answer["seconds_per_trial"]
    line = (f"estimate: more than {duration(bound)} per trial ({LOWER_BOUND}, cpu); sweep "
            f"more than {duration(3 * bound)} on 1 slot(s)")
    assert line in proc.stdout, proc.stdout
    assert f"would take more than {duration(3 * bound)}" in proc.stderr, proc.stderr
    again = run_orch(["sweep", str(spec), "--dry-run"], env)
    assert line in again.stdout and "more than a day" in again.stderr, again.stdout
    assert _probe_starts(orch_home) == 1  # the second dry run used the cache


def test_cost_key_ignores_what_does_not_change_the_time() -> None:
    base = load_config(BASE_TINY).cost_key()
    assert load_config(BASE_TINY, ["optim.lr=0.1", "train.seed=5", "data.seed=3",
                                   "schedule.name=linear"]).cost_key() == base
    assert load_config(BASE_TINY, ["model.d_model=128"]).cost_key() != base
    assert load_config(BASE_TINY, ["train.batch_size=8"]).cost_key() != base
    assert load_config(BASE_TINY, ["train.epochs=2"]).cost_key() != base


def test_probe_times_real_steps_of_the_run(tiny_titles: Path, tmp_path: Path) -> None:
    env_cache = ["--cache-dir", str(tmp_path / "cache")]
    sets = [f"data.path={tiny_titles}"]
    run_dir = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "trainer", "--config", str(BASE_TINY), "--out",
                    str(run_dir), "--quiet", *env_cache, *sets], check=True, timeout=300)
    result = json.loads((run_dir / "result.json").read_text())
    evals = sum(json.loads(line)["event"] == "validation_step"
                for line in (run_dir / "events.jsonl").read_text().splitlines())
    proc = subprocess.run([sys.executable, "-m", "trainer", "probe", "--config", str(BASE_TINY),
                           *env_cache, *sets], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stages = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [s["stage"] for s in stages] == ["setup", "warm-up", "done"]  # as it goes
    answer = stages[-1]
    assert stages[0]["steps"] == answer["steps"] and stages[1]["warmup_seconds"] > 0
    assert answer["seconds_per_step"] > 0 and answer["eval_seconds"] > 0
    assert answer["steps"] == result["max_steps"]  # the run's own step count
    assert answer["evals"] == evals
    assert answer["seconds_per_trial"] > answer["steps"] * answer["seconds_per_step"]
    assert answer["cost_key"] == load_config(BASE_TINY, sets).cost_key()


def test_probe_resolves_precision_auto(tiny_titles: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "trainer", "probe", "--config", str(BASE_TINY),
                           "--cache-dir", str(tmp_path), f"data.path={tiny_titles}",
                           "train.precision=auto"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout.splitlines()[-1])
    assert answer["precision"] in ("fp32", "bf16") and answer["seconds_per_trial"] > 0


def test_probe_of_bad_data_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "trainer", "probe", "--config", str(BASE_TINY),
                           "--cache-dir", str(tmp_path), f"data.path={tmp_path / 'none.csv'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_random_search_counts_its_interrupted_trial_as_to_run(orch_home: Path,
                                                                 tmp_path: Path) -> None:
    """run_cap 3, two finished and one interrupted: one trial runs again (it said 0 and then
    re-ran it)."""
    from orchestrator.run.estimate import points_to_run
    from orchestrator.spec.plan import build_plan

    spec = write_spec(tmp_path / "r.yaml", method="random", run_cap=3,
                      parameters={"optim.lr": {"min": 0.001, "max": 0.01}})
    ledger = Ledger(orch_home)
    ledger.upsert_sweep("t", str(spec), {}, ["optim.lr"], "val_loss", "minimize")
    for i, state in enumerate(["finished", "finished", "stopped"]):
        t = ledger.add_trial("t", f"h{i}", {"optim.lr": 0.001 * (i + 1)})
        ledger.mark_running(t.id, pid=1, pgid=1, run_dir="r", slot=0, started_at=0.0)
        ledger.finish(t.id, state=state, reason="interrupted" if state == "stopped" else None,
                      exit_code=0, ended_at=1.0, final=None, best=None, program_wall=1.0)
    plan = build_plan(spec)
    try:
        assert len(points_to_run(plan, ledger.trials("t"), None)) == 1
    finally:
        plan.close()
