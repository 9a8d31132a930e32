"""The trainer contract, exercised through its real command line on the real titles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.config import ConfigError, load_config
from trainer.events import read_events

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "sweeps" / "base_tiny.yaml"


def trainer(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """Run `python -m trainer ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=240,
                          **kw)


def train_tiny(out: Path, titles: Path, cache: Path, *overrides: str, **kw):
    return trainer("--config", str(TINY), "--out", str(out), "--cache-dir", str(cache), "--quiet",
                   f"data.path={titles}", *overrides, **kw)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll until predicate() is true; fail after timeout (a deadline, not a synchronising sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- config ------------------------------------------------------------------------------------

def test_overrides_parse_as_yaml_scalars() -> None:
    cfg = load_config(TINY, ["optim.lr=3e-4", "train.compile=true", "optim.betas=[0.8, 0.9]"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.compile is True
    assert cfg.optim.betas == (0.8, 0.9)


@pytest.mark.parametrize("override, field", [
    ("model.n_heads=4", "model.n_heads"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.name=lion", "optim.name"),
    ("model.n_head=5", "model"),
    ("attention.type=dilated", "attention"),
    ("train.precision=fp8", "train.precision"),
])
def test_bad_config_exits_2_naming_the_field(tmp_path: Path, override: str, field: str) -> None:
    res = trainer("--config", str(TINY), "--out", str(tmp_path / "run"), override)
    assert res.returncode == 2
    assert f"`{field}" in res.stderr and str(TINY) in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1  # one paragraph
    assert not (tmp_path / "run").exists()  # nothing was started


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_base_config_is_the_challenge_baseline() -> None:
    cfg = load_config(ROOT / "sweeps" / "base.yaml")
    m, t, o = cfg.model, cfg.train, cfg.optim
    assert (m.d_model, m.n_layer, m.n_head, m.dropout) == (512, 6, 8, 0.1)
    assert (t.context_length, t.batch_size, t.epochs, t.seed) == (128, 64, 7, 1337)
    assert (o.name, o.lr, o.weight_decay, o.grad_clip) == ("sgd", 6e-3, 0.0, 1.0)
    assert cfg.schedule.name == "cosine" and cfg.tokenizer.vocab_size == 16000
    assert (cfg.data.num_titles, cfg.data.seed, cfg.data.val_frac) == (100_000, 1337, 0.1)


def test_schema_command_prints_the_config_schema() -> None:
    res = trainer("schema")
    schema = json.loads(res.stdout)
    assert set(schema["properties"]) >= {"data", "tokenizer", "model", "attention", "optim",
                                         "schedule", "train", "eval", "tracking"}


def test_validate_batch_gives_one_verdict_per_point() -> None:
    points = [{"optim.lr": 0.01}, {"model.n_head": 3}, {"model.n_heads": 2}]
    res = trainer("validate", "--config", str(TINY), "--batch",
                  input="\n".join(json.dumps(p) for p in points))
    verdicts = [json.loads(line) for line in res.stdout.splitlines()]
    assert [v["ok"] for v in verdicts] == [True, False, False]
    assert "n_head" in verdicts[1]["error"] and "n_heads" in verdicts[2]["error"]


# --- runs --------------------------------------------------------------------------------------

def test_a_run_writes_events_and_an_honest_result(tmp_path: Path, tiny_titles: Path) -> None:
    res = train_tiny(tmp_path / "run", tiny_titles, tmp_path / "cache")
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "finished" and result["exit_code"] == 0
    assert result["steps"] == result["max_steps"] > 0
    for key in ("val_loss", "val_loss_tok", "val_bpb", "val_coverage"):
        assert result["final"][key] is not None and result["best"][key] is not None
    assert result["best"]["val_loss"] <= result["final"]["val_loss"]
    assert result["tokens_per_s"] > 0 and result["parameters"] > 0
    names = [e["event"] for e in read_events(tmp_path / "run" / "events.jsonl")]
    for name in ("hyperparameters_configured", "device_info", "dataset_info", "model_configured",
                 "model_info", "training_step", "validation_step", "run_finished"):
        assert name in names
    evals = [e for e in read_events(tmp_path / "run" / "events.jsonl")
             if e["event"] == "validation_step"]
    # The challenge's schedule: step 1, every batches // evals_per_epoch steps, and the end.
    assert evals[0]["step"] == 1 and evals[-1]["step"] == result["max_steps"]


def test_same_config_and_seed_give_identical_losses(tmp_path: Path, tiny_titles: Path) -> None:
    runs = []
    for name in ("a", "b"):
        assert train_tiny(tmp_path / name, tiny_titles, tmp_path / "cache",
                          "model.dropout=0.1").returncode == 0
        runs.append([e["loss"] for e in read_events(tmp_path / name / "events.jsonl")
                     if e["event"] == "training_step"])
    assert runs[0] == runs[1] and len(runs[0]) > 10


def test_a_huge_learning_rate_diverges(tmp_path: Path, tiny_titles: Path) -> None:
    res = train_tiny(tmp_path / "run", tiny_titles, tmp_path / "cache", "optim.name=sgd",
                     "optim.lr=1e12", "optim.grad_clip=null")
    assert res.returncode == 3
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "diverged" and "step" in result["reason"]


def test_bad_data_file_fails_cleanly(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    res = train_tiny(tmp_path / "run", empty, tmp_path / "cache")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_and_writes_its_result(tmp_path: Path, tiny_titles: Path,
                                                      signum: int, code: int) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", "--config", str(TINY), "--out", str(out), "--quiet",
         "--cache-dir", str(tmp_path / "cache"), f"data.path={tiny_titles}", "train.epochs=200"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    events = out / "events.jsonl"
    wait_for(lambda: any(e["event"] == "training_step" for e in read_events(events)),
             what="the first training step")
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == code
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "stopped" and result["steps"] < result["max_steps"]
    assert read_events(events)[-1]["event"] == "run_failed"


def test_wandb_offline_logs_the_run_and_never_the_key(tmp_path: Path, tiny_titles: Path) -> None:
    secret = "abcd" * 10  # W&B keys are 40 characters
    res = train_tiny(tmp_path / "run", tiny_titles, tmp_path / "cache", "tracking.mode=offline",
                     env={"WANDB_API_KEY": secret, "WANDB_SILENT": "true"})
    assert res.returncode == 0, res.stderr
    offline_runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("*.wandb"))
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in res.stdout + res.stderr


def test_prepare_builds_the_cache_a_run_then_hits(tmp_path: Path, tiny_titles: Path) -> None:
    args = ["prepare", "--config", str(TINY), "--cache-dir", str(tmp_path / "cache"),
            f"data.path={tiny_titles}"]
    first, second = json.loads(trainer(*args).stdout), json.loads(trainer(*args).stdout)
    assert (first["cache_hit"], second["cache_hit"]) == (False, True)
    assert first["cache_key"] == second["cache_key"]
    res = train_tiny(tmp_path / "run", tiny_titles, tmp_path / "cache")
    info = next(e for e in read_events(tmp_path / "run" / "events.jsonl")
                if e["event"] == "dataset_info")
    assert info["cache_hit"] is True and info["cache_key"] == first["cache_key"]
