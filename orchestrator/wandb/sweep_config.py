"""A checked Plan as a W&B cloud sweep config: the search section plus the agents' command.

The command every W&B agent runs, on any workstation, is fixed when the sweep is created:

    ${env} python -m ${program} --config BASE --out ${envvar:ORCH_HOME}/runs/NAME/{run_id}
           FIXED_OVERRIDES... ${args_no_hyphens}

Macro choice (expanded by the agent, wandb/wandb_agent.py `_command_run`):
- `${env}` is `/usr/bin/env`, so `python` is looked up on the agent's PATH: `orch agent` puts
  its own interpreter's directory first, so each workstation uses its own venv, wherever it is.
  (`${interpreter}` is also a bare `python`, so it would add nothing.)
- `${program}` is the sweep's `program` (`trainer`), shown as such in the W&B UI.
- `${args_no_hyphens}` expands to `key.path=value` per parameter: exactly the trainer's override
  form. `${args}` would give `--key.path=value`, which the trainer rejects; `${args_json}` would
  need another parser. The agent formats values with Python's `str()`, so the pre-launch check
  below refuses values that would not read back as themselves (`None`, dicts).
- `${envvar:ORCH_HOME}`: the agent substitutes environment variables (`orch agent` always sets
  ORCH_HOME), so run dirs land in each workstation's own ORCH_HOME.
- `{run_id}` is no W&B macro (W&B has none for the run id): the trainer replaces it with
  WANDB_RUN_ID, which the agent sets for each run, so every run has its own dir.

Paths in the command (BASE, data files) are relative to the directory `orch sweep` runs in when
they lie inside it, so `orch agent` run from the same checkout root on another workstation
finds them; paths outside stay absolute and must exist there too.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from orchestrator.contract import format_value
from orchestrator.spec.plan import Plan
from orchestrator.search import param_names
from orchestrator.spec.document import SpecError
from orchestrator.spec.overrides import parse_set

ARGS_MACRO = "${args_no_hyphens}"
HOME_MACRO = "${envvar:ORCH_HOME}"


def flat_parameters(parameters: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """W&B-nested `parameters` as dotted leaves: the agent then passes `model.n_head=4`, not
    `model={'n_head': 4}`, which would replace the whole `model` section of the base config."""
    return {name: param for name, param, _ in param_names(parameters)}


def portable(path: str | Path, root: Path) -> str:
    """`path` relative to `root` when inside it (the same on every checkout), else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(root.resolve()))
    except ValueError:
        return str(p)


def program_and_head(program: str | list[str]) -> tuple[str, list[str]]:
    """The sweep's `program` and the command before `--config`.

    `python -m MODULE` becomes `${env} python -m ${program}` with program MODULE; any other
    program runs as written behind `${env}`.
    """
    argv = shlex.split(program) if isinstance(program, str) else list(program)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = "python"  # never this machine's interpreter path: agents run elsewhere too
        if len(argv) >= 3 and argv[1] == "-m":
            return argv[2], ["${env}", "python", "-m", "${program}", *argv[3:]]
    return shlex.join(argv), ["${env}", *argv]


def agent_arg_problems(plan: Plan) -> list[str]:
    """Parameter values that would not survive the agent's `key=value` formatting (`str()`)."""
    problems = []
    for name, param, loc in param_names(plan.spec.parameters):
        values = param.get("values", [param["value"]] if "value" in param else [])
        for value in values:
            _, back = parse_set(f"{name}={value}")
            if back != value or type(back) is not type(value):
                problems.append(plan.doc.error(loc, f"W&B's agent passes {value!r} as the text "
                                               f"`{name}={value}`, which reads back as {back!r}; "
                                               "use a value that reads back unchanged"))
    return problems


def sweep_config(plan: Plan, root: Path | None = None) -> dict[str, Any]:
    """The config sent to `wandb.sweep`: the spec's search section plus program and command."""
    root = root or Path.cwd()
    spec = plan.spec
    problems = agent_arg_problems(plan)
    if problems:
        raise SpecError(problems)
    parameters = flat_parameters(spec.parameters)
    fixed = []
    for key, value in plan.fixed.items():
        if key in parameters:
            continue  # the agent passes it
        if key in plan.described.data_files and isinstance(value, str) and os.path.isabs(value):
            value = portable(value, root)
        fixed.append(f"{key}={format_value(value)}")
    program, head = program_and_head(spec.program)
    command = [*head, "--config", portable(plan.base, root),
               "--out", f"{HOME_MACRO}/runs/{spec.name}/{{run_id}}", *fixed, ARGS_MACRO]
    config: dict[str, Any] = {"name": spec.name, "program": program, "method": spec.method,
                              "metric": spec.metric.model_dump(), "parameters": parameters,
                              "command": command}
    if spec.description:
        config["description"] = spec.description
    if spec.early_terminate is not None:
        config["early_terminate"] = spec.early_terminate
    if spec.run_cap is not None:
        config["run_cap"] = spec.run_cap
    return config
