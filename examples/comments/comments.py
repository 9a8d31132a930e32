"""A second contract program, not a GPT: does a Hacker News title draw a discussion?

Logistic regression in numpy, trained by minibatch SGD on hashed words of each title, predicting
whether the post got at least `titles.min_comments` comments. It honours the same contract as
the trainer (DESIGN.md, orchestrator/contract.py), with its own keys, which `describe` declares:

    python comments.py schema                                        JSON Schema of the config
    python comments.py describe                                      what it declares (JSON)
    python comments.py validate --config F [k=v ...] [--batch]       check configs, train nothing
    python comments.py --config F --out RUN_DIR [k=v ...]            train one run

A run writes RUN_DIR/events.jsonl (hyperparameters_configured, device_info, dataset_info,
training_step, validation_step, run_finished / run_failed) and RUN_DIR/result.json.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

FINISHED, CRASHED, BAD_INPUT, DIVERGED, STOPPED_SIGINT, STOPPED_SIGTERM = 0, 1, 2, 3, 130, 143


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Titles(Section):
    csv: Path | None = Field(None, description="CSV with `title` and `num_comments` columns.")
    min_comments: int = Field(5, ge=1, description="A post with this many comments is positive.")
    limit: int | None = Field(None, gt=0, description="Use only the first rows of the file.")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share held out for validation.")


class Features(Section):
    buckets: int = Field(1024, ge=16, le=1 << 20, description="Hashed feature dimension.")
    bigrams: bool = Field(False, description="Hash word pairs too.")


class Fit(Section):
    lr: float = Field(0.5, gt=0, description="SGD learning rate.")
    l2: float = Field(1e-4, ge=0, description="L2 penalty on the weights.")
    epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(64, ge=1)
    seed: int = Field(0, description="Seed of the split and the minibatch order.")


class Config(Section):
    """One run."""

    titles: Titles = Field(default_factory=Titles)
    features: Features = Field(default_factory=Features)
    fit: Fit = Field(default_factory=Fit)

    def hash(self) -> str:
        """A short hash of the whole config (the ledger's trial key)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ConfigError(Exception):
    """A config or data file this program cannot use (exit 2)."""


def describe() -> dict[str, Any]:
    """What an orchestrator needs to know of this program's keys and reports."""
    return {
        "data_files": ["titles.csv"],
        "data_keys": [],
        "seeds": ["fit.seed"],
        "tracking": None,
        "metrics": [{"name": "val_logloss", "goal": "minimize", "unit": "nats per title"},
                    {"name": "val_accuracy", "goal": "maximize", "label": "accuracy",
                     "share": True, "unit": "share of validation titles"}],
        "prepare": False,
        "exit_codes": {str(FINISHED): "finished", str(CRASHED): "crashed",
                       str(BAD_INPUT): "bad_input", str(DIVERGED): "diverged",
                       str(STOPPED_SIGINT): "stopped", str(STOPPED_SIGTERM): "stopped"},
    }


# -- config -----------------------------------------------------------------------------------


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """tree[a][b] = value for key `a.b` (unknown keys are the model's to refuse)."""
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a section")
    node[last] = value


def build(tree: dict[str, Any], source: str) -> Config:
    """Validate a whole config tree; one paragraph naming the fields on failure."""
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load(path: Path, overrides: list[str]) -> tuple[dict[str, Any], Config]:
    """The base YAML plus `key=value` overrides (values read as YAML scalars)."""
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"config file {path}: {err}") from None
    for text in overrides:
        key, sep, value = text.partition("=")
        if not sep:
            raise ConfigError(f"override {text!r} is not of the form key.path=value")
        set_dotted(tree, key, yaml.safe_load(value))
    return tree, build(tree, str(path))


def check_file(cfg: Config) -> None:
    """What can be said of titles.csv from its name and its header line (so that `validate`
    refuses a file without the columns before any run starts)."""
    path = cfg.titles.csv
    if path is None:
        raise ConfigError("titles.csv: no titles file set; give a CSV with `title` and "
                          "`num_comments` columns")
    if not path.is_file():
        raise ConfigError(f"titles.csv: {path} is not a file")
    if path.suffix != ".csv":
        raise ConfigError(f"titles.csv: {path} is not a .csv file")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"titles.csv: cannot read {path} as UTF-8 CSV ({err})") from None
    if not {"title", "num_comments"} <= set(header):
        raise ConfigError(f"titles.csv: {path} has no `title` and `num_comments` columns "
                          f"(its header: {', '.join(header[:8]) or 'empty'})")


# -- data and model -------------------------------------------------------------------------------


def read_titles(cfg: Config) -> tuple[list[str], np.ndarray]:
    """Titles and 0/1 labels (at least min_comments comments)."""
    titles, labels = [], []
    with open(cfg.titles.csv, newline="", encoding="utf-8") as fh:  # type: ignore[arg-type]
        reader = csv.DictReader(fh)
        if not {"title", "num_comments"} <= set(reader.fieldnames or []):
            raise ConfigError(f"titles.csv: {cfg.titles.csv} has no `title` and "
                              "`num_comments` columns")
        for row in reader:
            if cfg.titles.limit is not None and len(titles) >= cfg.titles.limit:
                break
            try:
                labels.append(int(row["num_comments"]) >= cfg.titles.min_comments)
            except (TypeError, ValueError):
                continue
            titles.append(row["title"] or "")
    if len(titles) < 10:
        raise ConfigError(f"titles.csv: {cfg.titles.csv} has {len(titles)} usable rows; "
                          "at least 10 are needed")
    return titles, np.array(labels, dtype=np.float64)


def featurize(titles: list[str], features: Features) -> np.ndarray:
    """Hashed bag of lower-cased words (and word pairs), L2-normalised rows."""
    x = np.zeros((len(titles), features.buckets), dtype=np.float32)
    for i, title in enumerate(titles):
        words = re.findall(r"[a-z0-9']+", title.lower())
        grams = words + ([f"{a} {b}" for a, b in zip(words, words[1:])] if features.bigrams
                         else [])
        for gram in grams:
            h = int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=4).digest(), "little")
            x[i, h % features.buckets] += 1.0
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def scores(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Mean log loss and accuracy of the model on (x, y)."""
    p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
    eps = 1e-12
    loss = -np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))
    return {"val_logloss": float(loss), "val_accuracy": float(np.mean((p >= 0.5) == y))}


# -- a run ----------------------------------------------------------------------------------------


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def train(cfg: Config, out: Path) -> int:
    """One run: events.jsonl as it goes, result.json at the end; the exit code."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    events = open(out / "events.jsonl", "a", encoding="utf-8")

    def log(event: str, **fields: Any) -> None:
        events.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")
        events.flush()

    def on_signal(signum: int, _frame: Any) -> None:
        raise Stop(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    state: dict[str, Any] = {"step": 0, "max_steps": None, "final": None, "best": None}
    status, reason, code = "finished", None, FINISHED
    try:
        log("hyperparameters_configured", config=cfg.model_dump(mode="json"),
            config_hash=cfg.hash())
        log("device_info", device="cpu")
        fit(cfg, log, state)
    except Stop as stop:
        status, reason = "stopped", f"received {stop}"
        code = STOPPED_SIGINT if stop.signum == signal.SIGINT else STOPPED_SIGTERM
    except FloatingPointError as err:
        status, reason, code = "diverged", str(err), DIVERGED
    except ConfigError as err:
        status, reason, code = "failed", str(err), BAD_INPUT
        print(f"error: {err}", file=sys.stderr)
    except Exception as err:  # a crash: reported, never as finished
        status, reason, code = "failed", f"{type(err).__name__}: {err}", CRASHED
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    log("run_finished" if status == "finished" else "run_failed", status=status, reason=reason)
    events.close()
    names = [m["name"] for m in describe()["metrics"]]
    result = {"status": status, "reason": reason, "exit_code": code, "steps": state["step"],
              "max_steps": state["max_steps"],
              "final": state["final"] or {m: None for m in names}, "best": state["best"],
              "parameters": cfg.features.buckets + 1, "wall_time_s": time.time() - started,
              "config_hash": cfg.hash(), "config": cfg.model_dump(mode="json"),
              "versions": {"python": sys.version.split()[0], "numpy": np.__version__}}
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    os.replace(tmp, out / "result.json")  # atomic: a reader never sees half of it
    return code


def fit(cfg: Config, log: Any, state: dict[str, Any]) -> None:
    """Split, featurize, then SGD epochs with a validation after each."""
    titles, y = read_titles(cfg)
    rng = np.random.default_rng(cfg.fit.seed)
    order = rng.permutation(len(titles))
    n_val = max(1, int(len(titles) * cfg.titles.val_fraction))
    val, tr = order[:n_val], order[n_val:]
    x = featurize(titles, cfg.features)
    log("dataset_info", train_rows=len(tr), val_rows=len(val), positive_share=float(y.mean()))
    w, b = np.zeros(cfg.features.buckets), 0.0
    per_epoch = math.ceil(len(tr) / cfg.fit.batch_size)
    state["max_steps"] = per_epoch * cfg.fit.epochs
    for _ in range(cfg.fit.epochs):
        batches = rng.permutation(tr)
        for start in range(0, len(batches), cfg.fit.batch_size):
            idx = batches[start: start + cfg.fit.batch_size]
            with np.errstate(over="ignore"):
                p = 1.0 / (1.0 + np.exp(-(x[idx] @ w + b)))
            grad = p - y[idx]
            w -= cfg.fit.lr * (x[idx].T @ grad / len(idx) + cfg.fit.l2 * w)
            b -= cfg.fit.lr * float(grad.mean())
            state["step"] += 1
            if not (np.isfinite(b) and np.all(np.isfinite(w))):
                raise FloatingPointError(f"non-finite weights at step {state['step']}")
        with np.errstate(over="ignore", divide="ignore"):
            found = scores(w, b, x[val], y[val])
        step = state["step"]
        log("training_step", step=step, max_steps=state["max_steps"])
        log("validation_step", step=step, max_steps=state["max_steps"], **found)
        state["final"] = found
        if state["best"] is None or found["val_logloss"] < state["best"]["val_logloss"]:
            state["best"] = {**found, "step": step}


# -- command line ---------------------------------------------------------------------------------


def validate(argv: list[str]) -> int:
    """One verdict per stdin line with --batch, else `ok HASH` for the config."""
    p = argparse.ArgumentParser(prog="comments.py validate")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--batch", action="store_true")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    tree, base = load(args.config, args.overrides)
    if not args.batch:
        check_file(base)
        print(f"ok {base.hash()}")
        return FINISHED
    for line in sys.stdin:
        if not line.strip():
            continue
        point = json.loads(line)
        trial = json.loads(json.dumps(tree))
        try:
            for key, value in point.items():
                set_dotted(trial, key, value)
            cfg = build(trial, f"{args.config} at {json.dumps(point, sort_keys=True)}")
            check_file(cfg)
            print(json.dumps({"ok": True, "config_hash": cfg.hash()}), flush=True)
        except ConfigError as err:
            print(json.dumps({"ok": False, "error": str(err)}), flush=True)
    return FINISHED


def main(argv: list[str]) -> int:
    """Dispatch; a bad config exits 2 with one paragraph, no traceback."""
    try:
        if argv[:1] == ["schema"]:
            print(json.dumps(Config.model_json_schema(), indent=2))
            return FINISHED
        if argv[:1] == ["describe"]:
            print(json.dumps(describe(), indent=2))
            return FINISHED
        if argv[:1] == ["validate"]:
            return validate(argv[1:])
        p = argparse.ArgumentParser(prog="comments.py", description="Train one run.")
        p.add_argument("--config", type=Path, required=True)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("overrides", nargs="*")
        args = p.parse_args(argv)
        _, cfg = load(args.config, args.overrides)
        check_file(cfg)
        return train(cfg, args.out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return BAD_INPUT


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
