"""The winner, runnable: the best finished trial's full trainer config, or a spec re-running it.

The config is the trainer's own resolved config where the run left one (result.json's
`config`); otherwise the base config with the trial's overrides set on it, read from the
command line orch launched (trial.json's argv). Either way `PROGRAM --config best.yaml` trains
the same configuration: `check` asks the program's own `validate` for its config hash and
compares it with the trial's.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.contract import (ContractError, Validator, describe_recorded, program_argv,
                                   read_result)
from orchestrator.ledger import Ledger, Trial
from orchestrator.report.results import ResultsError, load
from orchestrator.spec.document import read_yaml
from orchestrator.spec.model import LauncherSettings, Resources, Tracking


@dataclass
class Winner:
    """The best finished trial of a sweep, with its config tree and where that came from."""

    sweep: str
    trial: Trial
    metric: str
    value: float
    config: dict[str, Any]
    source: str  # result.json | base + overrides


def best_trial(ledger: Ledger, name: str) -> tuple[Trial, str, float]:
    """The sweep's best finished trial (per trial, not a mean over seeds), its metric, value."""
    report = load(ledger, [name], per_trial=True)
    row = report.best
    if row is None:
        raise ResultsError(f"sweep {name} has no finished trial with {report.metric} yet")
    trial = next(t for t in ledger.trials(name) if t.number == row.trials[0])
    value = row.value(report.metric)
    assert value is not None
    return trial, report.metric, value


def winner(ledger: Ledger, name: str) -> Winner:
    """The best finished trial of sweep `name` with its full config."""
    trial, metric, value = best_trial(ledger, name)
    config, source = trial_config(trial)
    return Winner(name, trial, metric, value, config, source)


def trial_config(trial: Trial) -> tuple[dict[str, Any], str]:
    """The trial's config tree and its source; ResultsError when its run dir holds neither."""
    run_dir = Path(trial.run_dir) if trial.run_dir else None
    result = read_result(run_dir) if run_dir else None
    if result and isinstance(result.get("config"), dict):
        return result["config"], "result.json"
    launched = run_dir / "trial.json" if run_dir else None
    if launched is None or not launched.is_file():
        raise ResultsError(f"trial {trial.number} of {trial.sweep}: its run dir "
                           f"{trial.run_dir or '(none)'} holds neither result.json with a "
                           f"config nor trial.json; its config cannot be rebuilt")
    argv = json.loads(launched.read_text(encoding="utf-8"))["argv"]
    return _base_plus_overrides(argv), "base + overrides"


def _base_plus_overrides(argv: list[str]) -> dict[str, Any]:
    """The base YAML of a trial's command line with its `key=value` overrides set on it."""
    base = Path(argv[argv.index("--config") + 1])
    try:
        tree = read_yaml(base.read_text(encoding="utf-8")) or {}  # 1e-3 is a float
    except OSError as e:
        raise ResultsError(f"base config {base} of the trial cannot be read: "
                           f"{e.strerror or e}") from None
    for arg in argv[argv.index("--out") + 2:]:
        key, _, text = arg.partition("=")
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(text)  # orch writes each value as JSON (contract.format_value)
    return tree


def train_command(program: str | list[str], config_file: str) -> str:
    """The command line that trains a config file with the sweep's program (as written)."""
    command = program if isinstance(program, str) else shlex.join(program)
    return f"{command} --config {config_file} --out RUN_DIR"


def config_yaml(win: Winner, program: str | list[str]) -> str:
    """The config as YAML, with a header naming the trial it is the config of and the command
    that trains it (the sweep's program, as the spec writes it)."""
    t = win.trial
    head = (f"# Best trial of sweep {win.sweep}: trial {t.number}, {win.metric} "
            f"{win.value:.6g}, config hash {t.config_hash} (from {win.source}).\n"
            f"# Train it: {train_command(program, 'THIS_FILE')}\n")
    return head + yaml.safe_dump(win.config, sort_keys=False)


def check(program: list[str], config_file: Path, expected: str) -> str | None:
    """None when the program resolves `config_file` to the hash `expected`, else why not."""
    validator = Validator(program, config_file)
    try:
        verdict = validator.check([{}])[0]
    except ContractError as e:
        return f"the program refused {config_file}: {e}"
    finally:
        validator.close()
    if not verdict.get("ok"):
        return f"the program refused {config_file}: {verdict.get('error')}"
    if verdict.get("config_hash") != expected:
        return (f"{config_file} resolves to config hash {verdict.get('config_hash')}, not the "
                f"trial's {expected}: its base config changed since the trial ran")
    return None


def program_written(ledger: Ledger, name: str) -> str | list[str]:
    """The sweep's program as its spec writes it."""
    spec = (ledger.sweep(name) or {}).get("spec") or {}
    return spec.get("program") or "python -m trainer"


def program_of(ledger: Ledger, name: str) -> list[str]:
    """The sweep's program as an argv list."""
    return program_argv(program_written(ledger, name))


def seeds_spec(ledger: Ledger, win: Winner, config_file: str, seeds: int) -> dict[str, Any]:
    """A grid spec re-running the winner's config over `seeds` values of the program's first
    declared seed (the trainer's train.seed), starting at its own: its first trial is the
    winner again (the same config hash)."""
    spec = dict((ledger.sweep(win.sweep) or {}).get("spec") or {})
    declared = describe_recorded(spec.get("program")).seeds
    if not declared:
        raise ResultsError(f"the program of sweep {win.sweep} declares no seed key "
                           f"(`PROGRAM describe`): there is nothing to re-run it over")
    key = declared[0]
    node: Any = win.config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    seed = node if isinstance(node, int) and not isinstance(node, bool) else 0
    keep = ("program", "resources", "launcher", "tracking")
    out: dict[str, Any] = {
        "name": f"{win.sweep}-best-seeds",
        "description": f"trial {win.trial.number} of sweep {win.sweep} "
                       f"({win.metric} {win.value:.6g}) over {seeds} seeds",
        "base": config_file, "method": "grid",
        "metric": {"name": win.metric, "goal": (spec.get("metric") or {}).get("goal",
                                                                           "minimize")},
        "parameters": {key: {"values": [seed + i for i in range(seeds)]}},
    }
    for key in keep:
        if spec.get(key):
            out[key] = _non_default(key, spec[key])
    out = {k: v for k, v in out.items() if v != {}}
    return out


def _non_default(key: str, value: Any) -> Any:
    """A spec section less the fields at their defaults (the stored spec holds them all)."""
    model = {"resources": Resources, "launcher": LauncherSettings, "tracking": Tracking}.get(key)
    if model is None or not isinstance(value, dict):
        return value
    defaults = model().model_dump(mode="json")
    return {k: v for k, v in value.items() if defaults.get(k, object()) != v}
