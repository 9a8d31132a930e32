"""From a spec file and command-line overrides to a checked plan, before anything runs.

`build_plan` is a pipeline of stages, each taking what the stages before it made and returning
a small value with its own problems: `load` the spec (its model); `describe_program`, what the
program declares (its data-file, seed and tracking keys, its metrics: `PROGRAM describe`);
`check_spec`, what the spec alone shows (W&B's sweep schema, metric, run_cap, base file, GPUs);
`program_schema`, the program's JSON Schema; `resolve_settings`, the fixed settings (overrides,
tracking, --set, --data); `check_names`, every setting and parameter name and value against
that schema; `check_trial_start`, what every trial would meet at its start (W&B key, data
file); and `check_points`, the grid points (for random and bayes, the fixed part and a seeded
sample of proposals) validated by the program itself. Problems are collected, not raised one
by one: the pipeline stops only where the next stage needs what failed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from orchestrator.contract import (ContractError, Description, Validator, describe, fetch_schema,
                                   program_argv)
from orchestrator.launch.docker.container import api_key
from orchestrator.optuna_search import spec_problems, wandb_view
from orchestrator.run.slots import missing_gpus
from orchestrator.search import param_names, varied
from orchestrator.spec.document import SpecDoc, SpecError, read_spec, read_yaml
from orchestrator.spec.model import SweepSpec, load_spec
from orchestrator.spec.overrides import flatten, parse_set
from orchestrator.spec.params import (Schema, distribution_error, repeated_parameters, resolve,
                                       value_error)
from orchestrator.spec.points import check_points
from orchestrator.spec.rejections import Rejections
from orchestrator.spec.sweeps_schema import sweeps_schema_errors

@dataclass
class Plan:
    """A spec ready to run: absolute base path, program argv, fixed overrides, grid points."""

    spec: SweepSpec
    doc: SpecDoc
    base: Path
    program: list[str]
    fixed: dict[str, Any]
    search: dict[str, Any]
    varied: list[str]
    validator: Validator
    described: Description = field(default_factory=Description)  # what the program declares
    grid: list[tuple[dict[str, Any], str]] | None = None  # (point, config hash), valid only
    invalid: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (point, error)
    # Grid points, or sampled random/bayes proposals, the program rejected, grouped by reason.
    rejected: Rejections | None = None
    notes: list[str] = field(default_factory=list)

    def resolved(self, point: dict[str, Any]) -> dict[str, Any]:
        """Fixed overrides plus one point: every key the trial sets on the base config."""
        return {**self.fixed, **point}

    def close(self) -> None:
        """End the validation co-process."""
        self.validator.close()


def build_plan(spec_path: Path, sets: list[str] = (), data: Path | None = None,
               max_trials: int | None = None, name: str | None = None) -> Plan:
    """Check a spec completely; raise SpecError with every problem, else return the Plan.

    `name` replaces the spec's own (a new sweep, or another one to resume, from one file)."""
    loaded = load(spec_path, name)
    # The validation co-process starts first, so its start-up overlaps the W&B checks and the
    # schema call; together they are the fixed cost of every sweep.
    validator = Validator(loaded.program, loaded.base)
    if loaded.base.is_file():
        with contextlib.suppress(ContractError):  # a program that cannot run: program_schema
            validator.start()                     # says so, as one problem of `program`
    try:
        described = describe_program(loaded)
        loaded = default_metric(loaded, described.described)
        alone = check_spec(loaded, described.described, max_trials)
        if described.problems:  # no declared keys to check the settings with
            raise SpecError([*alone.problems, *described.problems])
        schema = program_schema(loaded)
        if schema.problems:  # nothing to check names against
            raise SpecError([*alone.problems, *schema.problems])
        settings = resolve_settings(loaded, described.described, sets, data)
        names = check_names(loaded, schema.schema, settings, alone.wandb_parameters)
        start = check_trial_start(loaded, described.described, validator, settings)
        _stop_on([*alone.problems, *settings.problems, *names, *start])
        points = check_points(loaded.spec, loaded.doc, validator, settings.fixed)
        _stop_on(points.problems)
        return Plan(spec=loaded.spec, doc=loaded.doc, base=loaded.base, program=loaded.program,
                    fixed=settings.fixed, search=loaded.spec.search_config(),
                    varied=varied(loaded.spec.parameters), validator=validator,
                    described=described.described, grid=points.grid, invalid=points.invalid,
                    rejected=points.rejected,
                    notes=[*alone.notes, *settings.notes, *points.notes])
    except BaseException:
        validator.close()
        raise


def _stop_on(problems: list[str]) -> None:
    """End the pipeline with every problem found so far, if there is any."""
    if problems:
        raise SpecError(problems)


# -- load -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """A spec that passed its model: where its base config is and what program runs a trial."""

    spec: SweepSpec
    doc: SpecDoc
    base: Path  # absolute; may not exist (check_spec says so)
    program: list[str]


def load(spec_path: Path, name: str | None) -> Loaded:
    """Read and model-check the spec; raise SpecError with the model's problems and the
    parameter names the program does not have, so one run shows them all."""
    try:
        spec, doc = load_spec(spec_path, name)
    except SpecError as err:
        raise SpecError(err.paragraphs + _raw_parameter_problems(spec_path)) from None
    return Loaded(spec=spec, doc=doc, base=(spec_path.parent / spec.base).resolve(),
                  program=program_argv(spec.program))


def _raw_parameter_problems(spec_path: Path) -> list[str]:
    """Parameter-name problems of a spec whose model check failed."""
    try:
        doc = read_spec(spec_path)
        params = doc.data.get("parameters")
        program = doc.data.get("program", "python -m trainer")
        if not isinstance(params, dict) or not isinstance(program, (str, list)):
            return []
        schema = fetch_schema(program_argv(program))
    except (SpecError, ContractError):
        return []
    return [doc.error(loc, err) for name, _, loc in param_names(params)
            if isinstance(err := resolve(name, schema), str)]


# -- what the program declares --------------------------------------------------------------------


@dataclass(frozen=True)
class Described:
    """The program's declarations (`PROGRAM describe`), or why they were refused."""

    described: Description
    problems: list[str]


def describe_program(loaded: Loaded) -> Described:
    """Ask the program (or the schema cache) what it declares; a program without `describe`
    gets the defaults, one whose answer breaks the contract is a problem of `program`."""
    try:
        return Described(described=describe(loaded.program), problems=[])
    except ContractError as err:
        return Described(described=Description(),
                         problems=[loaded.doc.error(("program",), str(err))])


def default_metric(loaded: Loaded, described: Description) -> Loaded:
    """The spec with its metric filled in from the program's declarations where it leaves it
    out: the name, the program's first metric; the goal, the declared goal of the metric named
    (so `metric: {name: val_accuracy}` maximizes). A program that declares no metrics keeps the
    model's defaults (val_loss, minimize)."""
    given = loaded.doc.data.get("metric")
    given = given if isinstance(given, dict) else {}
    if not described.metrics or ("name" in given and "goal" in given):
        return loaded
    name = loaded.spec.metric.name if "name" in given else described.metrics[0].name
    declared = {m.name: m.goal for m in described.metrics}
    goal = loaded.spec.metric.goal if "goal" in given else declared.get(name, "minimize")
    metric = loaded.spec.metric.model_copy(update={"name": name, "goal": goal})
    return replace(loaded, spec=loaded.spec.model_copy(update={"metric": metric}))


# -- the spec alone and the machine ---------------------------------------------------------------


@dataclass(frozen=True)
class SpecCheck:
    """What the spec says alone (W&B's schema, metric, run_cap, base file, GPUs) found."""

    problems: list[str]
    notes: list[str]
    # W&B's complaints about single parameters, shown where the program's schema has none.
    wandb_parameters: list[tuple[tuple[Any, ...], str]]


def check_spec(loaded: Loaded, described: Description, max_trials: int | None) -> SpecCheck:
    """The checks that need neither the program's schema nor the settings."""
    spec, doc = loaded.spec, loaded.doc
    wandb = sweeps_schema_errors(doc, wandb_view(spec.search_config()))
    problems = [text for loc, text in wandb if loc[:1] != ("parameters",)]
    problems += spec_problems(spec, doc)
    problems += repeated_parameters(spec.parameters, doc, grid=spec.method == "grid")
    metrics = described.metric_names()
    if metrics and spec.metric.name not in metrics:
        problems.append(doc.error(("metric", "name"), f"unknown metric "
                                  f"{spec.metric.name!r}; the program reports "
                                  f"{', '.join(metrics)}"))
    if spec.method != "grid" and spec.run_cap is None and max_trials is None:
        problems.append(doc.error(("method",), f"a {spec.method} search never ends by "
                                  "itself: set `run_cap` (or pass --max-trials)"))
    if not loaded.base.is_file():
        what = "is a folder, not a file" if loaded.base.is_dir() else "does not exist"
        problems.append(doc.error(("base",), f"trainer config {loaded.base} {what}; `base` "
                                  "is the program's config file, relative to the spec file"))
    gpu_problems, notes = missing_gpus(spec, doc)
    if spec.method == "bayes" and "metric" not in doc.data:
        notes.append(f"{doc.path}: a bayes search without `metric` optimizes "
                     f"{spec.metric.name} ({spec.metric.goal}), the program's first metric; "
                     "set `metric: {name: ..., goal: ...}` to choose")
    return SpecCheck(problems=problems + gpu_problems, notes=notes,
                       wandb_parameters=[p for p in wandb if p[0][:1] == ("parameters",)])


# -- the program's schema and the settings --------------------------------------------------------


@dataclass(frozen=True)
class ProgramSchema:
    """The JSON Schema of the program's config, or why the program gave none."""

    schema: Schema
    problems: list[str]


def program_schema(loaded: Loaded) -> ProgramSchema:
    """Ask the program (or the schema cache) for its config's JSON Schema."""
    try:
        return ProgramSchema(schema=fetch_schema(loaded.program), problems=[])
    except ContractError as err:
        return ProgramSchema(schema={}, problems=[loaded.doc.error(("program",), str(err))])


class Setting(NamedTuple):
    """A fixed trainer setting and where it was set: a YAML location, or a command-line flag."""

    value: Any
    where: tuple[Any, ...] | str

    def problem(self, doc: SpecDoc, text: str) -> str:
        """One paragraph about this setting, pointing at where it was set."""
        return doc.error(self.where, text) if isinstance(self.where, tuple) \
            else f"{self.where}: {text}"


@dataclass(frozen=True)
class Settings:
    """Every trial's fixed settings by dotted key; a later source replaces an earlier one."""

    values: dict[str, Setting]
    problems: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def fixed(self) -> dict[str, Any]:
        """The settings' values: what every trial sets on the base config."""
        return {key: s.value for key, s in self.values.items()}


def resolve_settings(loaded: Loaded, described: Description, sets: list[str],
                     data: Path | None) -> Settings:
    """The spec's overrides, its `tracking.wandb` section (on the keys the program declares for
    it), then `--set` and `--data` (the program's first data-file key)."""
    spec, spec_dir = loaded.spec, loaded.doc.path.parent
    values: dict[str, Setting] = {}
    problems: list[str] = []
    notes: list[str] = []
    for key, value in flatten(spec.overrides).items():
        if (key in described.data_files and value is not None
                and not Path(str(value)).is_absolute()):
            value = str((spec_dir / str(value)).resolve())  # relative to the spec
        values[key] = Setting(value, ("overrides", key))
    tracking = described.tracking
    if spec.tracking.wandb is not None and tracking is None:
        notes.append(f"{loaded.doc.path}: tracking.wandb is not passed to the trials: the "
                     "program declares no tracking keys (`describe`)")
    elif spec.tracking.wandb is not None:
        for key in ("mode", "project", "entity"):
            if (name := getattr(tracking, key)) is not None:
                values[name] = Setting(getattr(spec.tracking.wandb, key),
                                       ("tracking", "wandb", key))
    for text in sets:
        try:
            key, value = parse_set(text)
        except SpecError as err:
            problems += err.paragraphs
            continue
        values[key] = Setting(value, f"--set {text}")
    if data is not None and not described.data_files:
        problems.append(f"--data {data}: the program declares no data file (its `describe` "
                        "names no data_files), so --data sets nothing; use --set KEY=PATH with "
                        "the program's own key")
    elif data is not None:
        values[described.data_files[0]] = Setting(str(data.resolve()), f"--data {data}")
    problems += _swept_settings(loaded, values)
    return Settings(values=values, problems=problems, notes=notes)


def _swept_settings(loaded: Loaded, values: dict[str, Setting]) -> list[str]:
    """A fixed setting of a key the sweep's parameters also set would be silently replaced
    by the parameter's values in every trial: say so instead."""
    swept = {name: loc for name, _, loc in param_names(loaded.spec.parameters)}
    problems = []
    for key, setting in values.items():
        hit = next((n for n in swept if key == n or key.startswith(n + ".")
                    or n.startswith(key + ".")), None)
        if hit is not None:
            where = f"{loaded.doc.where(swept[hit])}, `{'.'.join(map(str, swept[hit]))}`"
            problems.append(setting.problem(loaded.doc, (
                f"{key} is also a parameter of this sweep ({where}), and every trial takes "
                "the parameter's values, so this setting would be ignored; set it in one "
                "place (change the parameter's values, or drop this setting)")))
    return problems


def check_names(loaded: Loaded, schema: Schema, settings: Settings,
                wandb_parameters: list[tuple[tuple[Any, ...], str]]) -> list[str]:
    """Every setting and parameter, name and value, against the program's schema; W&B's
    parameter errors where no sharper one exists for the same parameter."""
    problems = []
    for key, setting in settings.values.items():
        fields = resolve(key, schema)
        err = fields if isinstance(fields, str) else value_error(setting.value, fields, schema)
        if err:
            problems.append(setting.problem(loaded.doc, err))
    flagged = set()
    for name, param, loc in param_names(loaded.spec.parameters):
        fields = resolve(name, schema)
        err = fields if isinstance(fields, str) else distribution_error(param, fields, schema)
        if err:
            problems.append(loaded.doc.error(loc, err))
            flagged.add(loc)
    return problems + [text for loc, text in wandb_parameters if loc not in flagged]


# -- what every trial meets at its start ----------------------------------------------------------


def check_trial_start(loaded: Loaded, described: Description, validator: Validator,
                      settings: Settings) -> list[str]:
    """What would fail every trial at its start: W&B online without a key, a bad data file."""
    problems = []
    if described.tracking is not None:
        problems += _online_key_problem(loaded, described.tracking.mode, settings)
    for key in described.data_files:
        data = settings.values.get(key)
        if data is not None and data.value is not None and loaded.base.is_file():
            problems += _data_file_problem(loaded.doc, validator, key, data)
    return problems


def _online_key_problem(loaded: Loaded, key: str, settings: Settings) -> list[str]:
    """W&B online mode (the program's tracking-mode `key`) with no API key would fail every
    trial at its start: refuse it now."""
    doc, base = loaded.doc, loaded.base
    mode = settings.values.get(key)
    if mode is None:
        try:
            node = read_yaml(base.read_text(encoding="utf-8"))
            for part in key.split("."):
                node = node[part]
            mode = Setting(node, ("base",))
        except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
            return []  # unreadable bases are the validator's to report
    if mode.value != "online" or api_key():
        return []
    text = ("W&B online mode, but no W&B API key is available here (WANDB_API_KEY is unset "
            "and no netrc entry holds one), so every trial would fail at its start; run "
            "`wandb login` or export WANDB_API_KEY, or use mode `offline` (sync later with "
            "`wandb sync`) or `disabled`")
    if mode.where == ("base",):
        return [doc.error(mode.where, f"{base} sets {key}: online: {text}")]
    return [mode.problem(doc, text)]


def _data_file_problem(doc: SpecDoc, validator: Validator, key: str,
                       data: Setting) -> list[str]:
    """The program's cheap look at a data file every trial reads (exists, is a file, has a
    known suffix, is not empty): one paragraph instead of one per grid point."""
    try:
        verdict = validator.check([{key: data.value}])[0]
    except ContractError:
        return []  # a base the program cannot read: reported with the points
    text = str(verdict.get("error", ""))
    if verdict.get("ok") or not text.startswith(key):
        return []  # only the file's own problems; the rest is the points' business
    return [data.problem(doc, text)]
