"""A stand-in trial program that honours the trainer contract, in milliseconds.

    python tests/fake_trainer.py schema                       -> the real trainer's schema
    python tests/fake_trainer.py validate --config F --batch  -> the real trainer's validation
    python tests/fake_trainer.py describe                     -> the real trainer's declarations
    python tests/fake_trainer.py prepare --config F k=v ...   -> the real trainer's prepare, for a
                                                                data.path (nothing for the hub)
    python tests/fake_trainer.py --config F --out D k=v ...   -> a scripted "training run"

What a run does is scripted by the environment variable FAKE_SCRIPT (JSON), keyed by the value
of one override so that one sweep can hold crashing, hanging and healthy trials:

    {"key": "train.seed", "default": {"curve": [3, 2, 1]},
     "cases": {"2": {"mode": "crash"}, "3": {"mode": "hang"}}}

`key` may also be a list of keys; a case is then their values joined by commas ("0.001,2").

Behaviour fields: mode (finish | crash | hang | diverge | oom | noresult | badconfig),
curve (val_loss per validation), step_time (seconds per validation), stubborn (ignore SIGTERM),
device (what its device_info event reports, default cpu), pause_after + pause_until (after that
many validations, wait until the file pause_until exists: a fault test's chosen moment).
With FAKE_LOG set, every start appends one line `<overrides as JSON>` to that file. With
FAKE_CONFIG set, result.json also holds the resolved `config`, as the real trainer's does.

    python tests/fake_trainer.py probe --config F k=v ...   -> FAKE_PROBE's stages, then blocks

FAKE_PROBE (JSON): a list of stage objects the probe prints, one line each, flushed; then it
blocks until killed, as a probe of a step slower than any budget does. Without FAKE_PROBE the
fake has no probe. With FAKE_LOG set, a probe start appends `{"probe": true}` to that file.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def _metrics(v: float | None) -> dict:
    if v is None:
        return {"val_loss": None, "val_loss_tok": None, "val_bpb": None, "val_coverage": None}
    return {"val_loss": v, "val_loss_tok": v * 4.0, "val_bpb": v * 1.4427, "val_coverage": 0.9}


def _behaviour(overrides: dict[str, str]) -> dict:
    script = json.loads(os.environ.get("FAKE_SCRIPT") or "{}")
    chosen = dict(script.get("default", {}))
    key = script.get("key")
    if isinstance(key, list):  # several keys: the case is their values joined by commas
        if all(k in overrides for k in key):
            case = ",".join(str(json.loads(overrides[k])) for k in key)
            chosen.update(script.get("cases", {}).get(case, {}))
    elif key and key in overrides:
        chosen.update(script.get("cases", {}).get(str(json.loads(overrides[key])), {}))
    return chosen


def _resolved(argv: list[str]) -> dict:
    """The whole config the run resolved, by the real trainer's rules."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from trainer.config import load_config

    overrides = [a for a in argv if "=" in a and not a.startswith("--")]
    return load_config(Path(argv[argv.index("--config") + 1]), overrides).model_dump(mode="json")


def train(argv: list[str]) -> int:
    """One scripted run: events.jsonl, result.json, and the contract's exit codes."""
    out = Path(argv[argv.index("--out") + 1])
    overrides = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("--"))
    how = _behaviour(overrides)
    if os.environ.get("FAKE_LOG"):
        with open(os.environ["FAKE_LOG"], "a") as f:
            f.write(json.dumps(overrides, sort_keys=True) + "\n")
    mode = how.get("mode", "finish")
    if mode == "badconfig":
        print("error: invalid config", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    curve = how.get("curve", [3.0, 2.0, 1.5])
    steps = 10 * len(curve)
    events = open(out / "events.jsonl", "a")
    config_hash = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:16]
    best: dict = {}

    def log(event: str, **fields: object) -> None:
        events.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")
        events.flush()

    def result(status: str, reason: str, code: int, final: float | None) -> int:
        _write_json(out / "result.json", {
            "status": status, "reason": reason, "exit_code": code, "final": _metrics(final),
            "best": best, "steps": steps, "max_steps": steps, "tokens_per_s": 1000.0,
            "parameters": 1, "wall_time_s": time.time() - start, "config_hash": config_hash,
            **({"config": _resolved(argv)} if os.environ.get("FAKE_CONFIG") else {})})
        return code

    last: list[float | None] = [None]

    def on_signal(signum: int, _frame: object) -> None:
        if how.get("stubborn"):
            return
        log("run_failed", status="stopped", reason=f"signal {signum}")
        sys.exit(result("stopped", f"signal {signum}", 128 + signum, last[0]))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"fake run {overrides} mode={mode}", flush=True)
    log("hyperparameters_configured", **overrides)
    log("device_info", device=how.get("device", "cpu"))
    if mode == "crash":
        print("Traceback: RuntimeError: scripted crash", file=sys.stderr)
        log("run_failed", status="failed", reason="scripted crash")
        return result("failed", "RuntimeError: scripted crash", 1, None)
    if mode == "oom":
        return result("failed", "oom", 5, None)
    for i, value in enumerate(curve):
        time.sleep(float(how.get("step_time", 0.0)))
        step = 10 * (i + 1)
        log("training_step", step=step, max_steps=steps, loss=value, lr=1e-3, elapsed=0.0)
        if mode == "diverge" and i == 1:
            log("run_failed", status="diverged", reason="non-finite loss at step 20")
            return result("diverged", "non-finite loss at step 20", 3, last[0])
        last[0] = value
        if not best or value < best["val_loss"]:
            best = {**_metrics(value), "step": step}
        log("validation_step", step=step, max_steps=steps, epoch=0, elapsed=0.0, **_metrics(value))
        if i + 1 == how.get("pause_after"):
            while not Path(how["pause_until"]).exists():
                time.sleep(0.02)
    if mode == "hang":
        while True:
            time.sleep(3600)
    log("run_finished", status="finished", reason="")
    if mode == "noresult":
        return 0
    return result("finished", "", 0, last[0])


def probe() -> int:
    """A probe that reports FAKE_PROBE's stages and then never finishes."""
    if not os.environ.get("FAKE_PROBE"):
        print("usage: no probe here", file=sys.stderr)
        return 1
    if os.environ.get("FAKE_LOG"):
        with open(os.environ["FAKE_LOG"], "a") as f:
            f.write(json.dumps({"probe": True}) + "\n")
    for stage in json.loads(os.environ["FAKE_PROBE"]):
        print(json.dumps(stage), flush=True)
    signal.pause()  # blocks until the orchestrator stops it at its budget
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["schema"] and os.environ.get("FAKE_SCHEMA_FILE"):
        # A copy of the real schema, saved once per test session: skips a torch import.
        sys.stdout.write(Path(os.environ["FAKE_SCHEMA_FILE"]).read_text())
        return 0
    if argv[:1] in (["schema"], ["validate"], ["prepare"], ["describe"]):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from trainer.__main__ import main as trainer_main
        from trainer.config import ConfigError, load_config

        if argv[:1] == ["prepare"]:  # the real one for a titles file; the hub needs a network
            config = argv[argv.index("--config") + 1]
            try:
                if load_config(Path(config), [a for a in argv if "=" in a]).data.path is None:
                    print("{}")
                    return 0
            except ConfigError:
                pass  # the real prepare reports it
        return trainer_main(argv)
    if argv[:1] == ["probe"]:
        return probe()
    return train(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
