"""The W&B cloud backend, tested for real up to the cloud: the sweep config against W&B's schema
and engine, the trainer started by wandb's own agent code in offline mode, the results import on
stored public-API run objects, and `orch agent` / `orch sync` on a stand-in `wandb` executable.
Only the calls in orchestrator/wandb/cloud.py marked (cloud) are not run: W&B is unreachable."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml
from orch_helpers import old_ledger, orch_env, pid_alive, run_orch, schema_version, wait_for
from wandb_records import offline_run, read_records

from orchestrator.report import results as results_mod
from orchestrator.wandb import backend as wandb_backend
from orchestrator.ledger import Ledger
from orchestrator.spec.plan import build_plan
from orchestrator.spec.document import SpecError
from orchestrator.wandb.cloud import CloudError, RemoteSweep, SweepRef
from orchestrator.wandb.sweep_config import sweep_config

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "wandb_runs_sample.json"
SECRET = "f" * 8 + "0123456789abcdef" * 2  # a fake 40-character W&B API key

# W&B's agent, as `wandb agent` runs each run: wandb/wandb_agent.py Agent._command_run expands
# the sweep's command macros and starts the process with the agent's environment.
AGENT_RUN = """
import json, os, sys
from wandb.wandb_agent import Agent
spec = json.loads(sys.argv[1])
agent = Agent(api=None, queue=None, sweep_id=os.environ["WANDB_SWEEP_ID"])
agent._sweep_command = spec["command"]
agent._command_run({"type": "run", "run_id": spec["run_id"], "program": spec["program"],
                    "args": {k: {"value": v} for k, v in spec["args"].items()}})
sys.exit(agent._run_processes[spec["run_id"]].wait())
"""


def _sweeps():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
        from sweeps.config.schema import validator
    return sweeps, validator


def _spec(tmp_path: Path, **fields) -> Path:
    spec = {"name": "wb", "base": str(ROOT / "sweeps" / "base_tiny.yaml"), "method": "grid",
            "metric": {"name": "val_loss", "goal": "minimize"},
            "parameters": {"optim.lr": {"values": [0.001, 0.003]},
                           "model": {"parameters": {"n_layer": {"values": [1, 2]},
                                                    "n_head": {"value": 2}}}},
            "overrides": {"train.max_steps": 3},
            "tracking": {"backend": "wandb", "wandb": {"project": "mainrun"}}, **fields}
    path = tmp_path / "wb.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, titles_csv: Path):
    """The shipped smoke spec, checked by the real trainer, and its W&B sweep config."""
    data = tmp_path_factory.mktemp("data") / "titles.csv"
    lines = titles_csv.read_text(encoding="utf-8").splitlines(keepends=True)
    data.write_text("".join(lines[:2001]), encoding="utf-8")
    plan = build_plan(ROOT / "sweeps" / "smoke.yaml", [], data)
    plan.close()
    return plan, sweep_config(plan, ROOT), data


# --- the sweep config sent to W&B ------------------------------------------------------------

def test_sweep_config_is_valid_for_wandb_and_runs_the_trainer_command(smoke) -> None:
    plan, config, data = smoke
    sweeps, validator = _sweeps()
    assert list(validator.iter_errors(config)) == []
    assert sweeps.schema_violations_from_proposed_config(config) == []
    assert config["program"] == "trainer" and config["name"] == "smoke"
    assert config["command"] == [
        "${env}", "python", "-m", "${program}", "--config", "sweeps/base_tiny.yaml",
        "--out", "${envvar:ORCH_HOME}/runs/smoke/{run_id}", f"data.path={json.dumps(str(data))}",
        "${args_no_hyphens}"]


def test_grid_through_wandb_engine_gives_the_local_plan(tmp_path: Path) -> None:
    plan = build_plan(_spec(tmp_path), [], None)
    plan.close()
    config = sweep_config(plan, ROOT)
    assert "train.max_steps=3" in config["command"]  # base overrides reach the trainer
    assert set(config["parameters"]) == {"optim.lr", "model.n_layer", "model.n_head"}
    sweeps, _ = _sweeps()
    runs, points = [], []
    while (run := sweeps.next_run(config, runs)) is not None:  # as W&B's controller: one by one
        run.state = sweeps.RunState.finished
        runs.append(run)
        points.append({k: v["value"] for k, v in run.config.items()})
    local = [point for point, _ in plan.grid or []]
    assert len(points) == len(local) == 4
    assert sorted(map(json.dumps, points)) == sorted(json.dumps(p, sort_keys=True) for p in local)


def test_values_the_agent_would_garble_are_refused_before_creating(tmp_path: Path) -> None:
    plan = build_plan(_spec(tmp_path, parameters={"optim.grad_clip": {"values": [None, 1.0]}}),
                      [], None)
    plan.close()
    with pytest.raises(SpecError, match="reads back as 'None'"):
        sweep_config(plan, ROOT)


def test_create_records_the_sweep_and_names_resolve(tmp_path: Path) -> None:
    plan = build_plan(_spec(tmp_path), [], None)
    plan.close()
    ledger, said, sent = Ledger(tmp_path / "home"), [], []

    def make(config, project, entity):  # stands in for wandb.sweep
        sent.append((config, project, entity))
        return SweepRef("ent", project, "abc123")

    ref = wandb_backend.create(plan, ledger, said.append, ROOT, make)
    assert sent[0][1:] == ("mainrun", None) and sent[0][0]["name"] == "wb"
    assert ref.path == "ent/mainrun/abc123"
    assert "https://wandb.ai/ent/mainrun/sweeps/abc123" in said[0]
    assert "orch agent ent/mainrun/abc123" in said[0]
    assert wandb_backend.resolve(ledger, "wb") == ref
    assert wandb_backend.resolve(ledger, "ent/mainrun/abc123") == ref
    with pytest.raises(ValueError, match="ENTITY/PROJECT/SWEEP_ID"):
        wandb_backend.resolve(ledger, "abc123")

    def offline(*_):  # what wandb 0.31 raises with no route to W&B
        raise RuntimeError("Failed to verify credentials with https://api.wandb.ai: Failed to "
                           "execute API request: the service process is busy and did not "
                           "respond in time.")

    with pytest.raises(CloudError, match="could not create the W&B sweep: .*no network"):
        wandb_backend.create(plan, Ledger(tmp_path / "other"), said.append, ROOT, offline)
    with pytest.raises(CloudError, match="could not read sweep ent/mainrun/abc123 .*no network"):
        wandb_backend.results(ledger, "wb", tmp_path / "home", fetch=offline)


# --- the trainer as W&B's agent runs it ----------------------------------------------------------

def test_trainer_under_wandb_agent_logs_config_metrics_and_honest_failures(
        smoke, tmp_path: Path) -> None:
    _plan, config, _data = smoke
    home = tmp_path / "home"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SWEEP_ID": "swp123",
           "WANDB_PROJECT": "mainrun", "WANDB_ENTITY": "ent", "WANDB_DIR": str(tmp_path / "ag"),
           "WANDB_API_KEY": SECRET, "ORCH_HOME": str(home), "ORCH_CACHE_DIR": str(tmp_path / "c"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cases = {"good0001": ({"optim.lr": 0.003, "model.n_layer": 1}, 0),
             "bad00002": ({"optim.lr": 1e12, "model.n_layer": 1}, 3)}
    for run_id, (args, code) in cases.items():
        job = {"command": config["command"], "program": config["program"], "run_id": run_id,
               "args": args}
        proc = subprocess.run([sys.executable, "-c", AGENT_RUN, json.dumps(job)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == code, proc.stderr[-3000:]
        assert SECRET not in proc.stdout + proc.stderr
        run_dir = home / "runs" / "smoke" / run_id  # {run_id} expanded by the trainer
        result = json.loads((run_dir / "result.json").read_text())
        logged = offline_run(read_records(next(run_dir.glob("wandb/offline-run-*/*.wandb"))))
        assert (logged["run_id"], logged["sweep_id"]) == (run_id, "swp123")
        assert logged["config"]["optim.lr"] == args["optim.lr"]
        assert logged["config"]["resolved"] == result["config"]  # the full resolved config
        assert logged["summary"]["status"] == result["status"]
        if code == 0:
            assert logged["exit_code"] == 0
            vals = [h for h in logged["history"] if "val_loss" in h]
            assert vals and vals[-1]["val_loss"] == pytest.approx(result["final"]["val_loss"])
            assert any("train_loss" in h for h in logged["history"])
        else:  # never finished on W&B: a non-zero exit marks the run failed, with its reason
            assert logged["exit_code"] != 0 and result["status"] == "diverged"
            assert "step 1" in logged["summary"]["reason"]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_run_id_placeholder_needs_an_agent(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_RUN_ID"}
    proc = subprocess.run([sys.executable, "-m", "trainer", "--config",
                           str(ROOT / "sweeps" / "base_tiny.yaml"), "--out",
                           str(tmp_path / "{run_id}")], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "WANDB_RUN_ID is not set" in proc.stderr


# --- results from the public API -----------------------------------------------------------------

def _remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RemoteSweep:
    from wandb.apis.public import Run

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-api"))  # Run() makes a dir there
    doc = json.loads(SAMPLE.read_text())
    ref = SweepRef.parse(doc["sweep"]["path"])
    runs = [Run(None, ref.entity, ref.project, r["attrs"]["name"], attrs=r["attrs"], lazy=False)
            for r in doc["runs"]]
    histories = {r["attrs"]["name"]: r["history"] for r in doc["runs"]}
    return RemoteSweep(ref, doc["sweep"]["config"], doc["sweep"]["state"], runs, histories)


def test_import_maps_wandb_runs_to_honest_trials(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    remote = _remote(tmp_path, monkeypatch)
    ledger = Ledger(tmp_path / "home")
    for _ in range(2):  # importing again changes nothing
        name = wandb_backend.results(ledger, "ent/mainrun/swp123", tmp_path / "home",
                                     fetch=lambda ref: remote)
    assert name == "smoke"
    trials = {t.config_hash: t for t in ledger.trials(name)}
    assert set(trials) == {"wandb-run0001", "wandb-run0002", "wandb-run0003"}
    good, bad, lost = trials["wandb-run0001"], trials["wandb-run0002"], trials["wandb-run0003"]
    assert good.state == "finished" and good.params == {"optim.lr": 0.003, "model.n_layer": 1}
    assert good.final["val_loss"] == pytest.approx(2.1013724948066153)
    assert good.best["step"] == 43 and good.step == good.max_steps == 43
    hist = [p.metrics for p in ledger.history(good)]
    assert len(hist) == 4 and hist[-1]["val_loss"] == pytest.approx(good.final["val_loss"])
    assert (bad.state, bad.reason) == ("diverged", "validation loss is nan at step 1")
    assert bad.final.get("val_loss") is None  # missing, never 0
    assert lost.state == "failed" and "heartbeats" in (lost.reason or "")
    assert lost.params["optim.lr"] == 0.01 and lost.final["val_loss"] is not None
    report = results_mod.load(ledger, [name], per_trial=True)
    assert [r.states for r in report.rows][0] == {"finished": 1}
    assert ledger.sweep(name)["wandb_sweep"] == "ent/mainrun/swp123"


def test_an_old_ledger_keeps_its_wandb_sweeps(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Ledgers from before the wandb_sweep column kept the reference in the stored spec.
    made = Ledger(tmp_path / "new")
    made.upsert_sweep("smoke", "", {"wandb": {"path": "ent/mainrun/swp123"}}, [], "val_loss",
                      "minimize")
    made.upsert_sweep("local", "local.yaml", {}, [], "val_loss", "minimize")
    made.close()
    path = old_ledger(tmp_path / "new" / "ledger.sqlite", tmp_path / "home" / "ledger.sqlite")
    reader = Ledger(tmp_path / "home", readonly=True)  # migrated in memory, the file untouched
    assert wandb_backend.resolve(reader, "smoke").path == "ent/mainrun/swp123"
    assert schema_version(path) == 0
    ledger = Ledger(tmp_path / "home")
    assert ledger.sweep("smoke")["wandb_sweep"] == "ent/mainrun/swp123"
    assert ledger.sweep("local")["wandb_sweep"] is None
    assert ledger.wandb_sweep("ent/mainrun/swp123")["name"] == "smoke"
    # Results of that W&B sweep land in the sweep recorded for it, found by the column.
    remote = _remote(tmp_path, monkeypatch)
    name = wandb_backend.results(ledger, "ent/mainrun/swp123", tmp_path / "home",
                                 fetch=lambda ref: remote)
    assert name == "smoke" and len(ledger.trials("smoke")) == 3
    assert [s["name"] for s in ledger.sweeps()] == ["smoke", "local"]


# --- orch agent and orch sync on a stand-in `wandb` ------------------------------------------

FAKE_WANDB = """#!{python}
import json, os, sys, time
with open(os.environ["FAKE_WANDB_LOG"], "a") as fh:
    fh.write(json.dumps({{"argv": sys.argv[1:], "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                         "path0": os.environ["PATH"].split(os.pathsep)[0],
                         "home": os.environ.get("ORCH_HOME"),
                         "wandb_dir": os.environ.get("WANDB_DIR")}}) + "\\n")
mode = os.environ.get("FAKE_WANDB_MODE", "ok")
if mode == "hang":  # an agent with a run in its own process group, as wandb's agent starts it
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                             process_group=0)
    with open(os.environ["FAKE_WANDB_LOG"] + ".child", "w") as fh:
        fh.write(str(child.pid))
    time.sleep(300)
if mode == "offline":
    print("Error: Failed to verify credentials with https://api.wandb.ai: the service "
          "process is busy and did not respond in time.", file=sys.stderr)
    sys.exit(1)
print("2026-01-01 00:00:00,000 - wandb.wandb_agent - INFO - About to run command: x")
"""


@pytest.fixture
def fake_wandb(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "wandb"
    exe.write_text(FAKE_WANDB.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    home = tmp_path / "home"
    return orch_env(home, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                    FAKE_WANDB_LOG=str(tmp_path / "wandb.log"), WANDB_API_KEY=SECRET)


def _calls(env: dict[str, str]) -> list[dict]:
    """The stand-in's calls so far; a line still being written (no newline yet) is not one."""
    text = Path(env["FAKE_WANDB_LOG"]).read_text()
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines()]


def test_agent_runs_one_pinned_agent_per_slot(fake_wandb: dict[str, str]) -> None:
    proc = run_orch(["agent", "ent/mainrun/abc123", "--gpus", "0,1", "--jobs-per-gpu", "2",
                     "--count", "5"], fake_wandb)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = sorted(_calls(fake_wandb), key=lambda c: c["wandb_dir"])
    assert [c["cuda"] for c in calls] == ["0", "1", "0", "1"]
    assert [c["argv"] for c in calls] == [
        ["agent", "--forward-signals", "--count", n, "ent/mainrun/abc123"]
        for n in ("2", "1", "1", "1")]
    home = fake_wandb["ORCH_HOME"]
    assert all(c["home"] == home and c["path0"] == str(Path(sys.executable).parent)
               for c in calls)
    assert "About to run command" in proc.stderr and "agent 3 ended (exit 0)" in proc.stderr
    for path in Path(home).rglob("*"):  # orch wrote the key nowhere
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_agent_timeout_and_ctrl_c_leave_nothing_running(fake_wandb: dict[str, str]) -> None:
    env = {**fake_wandb, "FAKE_WANDB_MODE": "hang"}
    started = time.time()
    proc = run_orch(["agent", "ent/mainrun/abc123", "--gpus", "none", "--timeout", "2s"], env)
    assert proc.returncode == 1 and "stopped by --timeout" in proc.stderr
    assert time.time() - started < 60
    child = int(Path(env["FAKE_WANDB_LOG"] + ".child").read_text())
    assert not pid_alive(child)  # the run the agent left in its own group was ended too
    Path(env["FAKE_WANDB_LOG"] + ".child").unlink()
    live = subprocess.Popen([sys.executable, "-m", "orchestrator", "agent", "ent/mainrun/abc123",
                             "--gpus", "none", "--cpu-slots", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    child_file = Path(env["FAKE_WANDB_LOG"] + ".child")
    # The pid file is written by the stand-in as it runs: wait until it holds the whole pid.
    wait_for(lambda: len(_calls(env)) == 3 and child_file.exists()
             and child_file.read_text().strip().isdigit(), what="two agents started")
    live.send_signal(signal.SIGINT)
    assert live.wait(timeout=60) == 130
    assert not pid_alive(int(Path(env["FAKE_WANDB_LOG"] + ".child").read_text()))


def test_sync_uploads_offline_runs_or_says_there_is_no_network(fake_wandb: dict[str, str],
                                                               tmp_path: Path) -> None:
    home = Path(fake_wandb["ORCH_HOME"])
    ledger = Ledger(home)
    ledger.upsert_sweep("smoke", "", {}, [], "val_loss", "minimize",
                        wandb_sweep="ent/mainrun/swp123")
    runs = [home / "runs" / "smoke" / r / "wandb" / f"offline-run-20260101_000000-{r}"
            for r in ("run0001", "run0002")]
    for r in runs:
        r.mkdir(parents=True)
    proc = run_orch(["sync", "smoke"], fake_wandb)
    assert proc.returncode == 0 and "synced 2 run(s)" in proc.stderr, proc.stderr
    assert _calls(fake_wandb)[-1]["argv"] == ["sync", "--entity", "ent", "--project", "mainrun",
                                              *map(str, runs)]
    proc = run_orch(["sync", "smoke"], {**fake_wandb, "FAKE_WANDB_MODE": "offline"})
    assert proc.returncode == 1 and "W&B is not reachable" in proc.stderr
    proc = run_orch(["sync", "nothing-here"], fake_wandb)
    assert proc.returncode == 2 and "no offline W&B runs" in proc.stderr
