"""From a spec file and command-line overrides to a checked plan, before anything runs.

Order of checks: the spec's own model; the search section against the JSON schema that ships in
W&B's `sweeps` package; every parameter and override name and value against the program's JSON
Schema; then every grid point (for random and bayes, the fixed part and a seeded sample of
proposals) against the program's own validation (`validate --batch`, one process). Problems are
collected, not raised one by one.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.contract import (ContractError, Description, Validator, describe, fetch_schema,
                                   program_argv)
from orchestrator.spec.params import distribution_error, resolve, value_error
from orchestrator.spec.rejections import Rejections, group, render
from orchestrator.search import Engine, param_names, plain_parameter, varied
from orchestrator.run.slots import detect_gpus
from orchestrator.spec.model import (SpecDoc, SpecError, SweepSpec, flatten, load_spec, parse_set,
                                     read_spec, read_yaml)
from orchestrator.launch.docker.container import api_key


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


@functools.cache
def sweeps_validator() -> Any:
    """W&B's sweep config validator (`sweeps.config.schema.validator`), built the same way from
    the schema file its package ships, without importing the package (numpy and requests, most
    of the start-up of `orch validate`)."""
    import jsonschema

    root = importlib.util.find_spec("sweeps").submodule_search_locations[0]
    schema = json.loads((Path(root) / "config" / "schema.json").read_text())
    formats = jsonschema.FormatChecker()
    formats.checks("float")(lambda value: isinstance(value, float))
    formats.checks("integer")(lambda value: isinstance(value, int))
    return jsonschema.Draft7Validator(schema=schema, format_checker=formats)


def _sweeps_schema_errors(doc: SpecDoc,
                          search: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    import jsonschema.exceptions

    validator = sweeps_validator()
    out = []
    for err in validator.iter_errors(search):
        loc = tuple(err.absolute_path)
        best = jsonschema.exceptions.best_match(err.context) if err.context else None
        if loc[:1] == ("parameters",) and len(loc) == 2:
            out.append((loc, doc.error(loc, "not a valid W&B parameter. Allowed forms: {value: V}, "
                                      "{values: [..]}, {min: A, max: B, distribution: D}, "
                                      "{distribution: normal, mu, sigma}, or {parameters: {..}} "
                                      "for nesting" + (f" ({best.message})" if best else ""))))
        else:
            out.append((loc, doc.error(loc, f"{err.message} (W&B sweep config schema)")))
    try:
        extra = _sweeps_violations(search)
    except ValueError as err:
        extra = [str(err)]
    seen = {err.message for err in validator.iter_errors(search)}
    names = sorted(search.get("parameters", {}), key=len, reverse=True)
    for msg in dict.fromkeys(extra):
        if msg in seen:
            continue
        name = next((n for n in names if n in msg), None)
        loc = ("parameters", name) if name else ()
        if not loc or loc not in {l for l, _ in out}:
            out.append((loc, doc.error(loc, msg)))
    return out


def _sweeps_violations(search: dict[str, Any]) -> list[str]:
    """W&B's own checks of a sweep config (`schema_violations_from_proposed_config`).

    Beyond its JSON schema, it checks each parameter (bounds, probabilities, deprecated
    distributions) by building the engine's scipy-based parameters, seconds of every `orch
    validate`; plain parameters pass those checks, so they skip them. A spec's search config
    never has `scheduler` or `metrics`, the function's other checks.
    """
    params = search.get("parameters")
    if isinstance(params, dict) and all(
            plain_parameter(p) or (isinstance(p, dict) and set(p) == {"parameters"})
            for p in params.values()):
        return [err.message for err in sweeps_validator().iter_errors(search)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sweeps import schema_violations_from_proposed_config

    return schema_violations_from_proposed_config(search)


def _raw_parameter_problems(spec_path: Path) -> list[str]:
    """Parameter-name problems of a spec whose model check failed, so one run shows them all."""
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


def build_plan(spec_path: Path, sets: list[str] = (), data: Path | None = None,
               max_trials: int | None = None, name: str | None = None) -> Plan:
    """Check a spec completely; raise SpecError with every problem, else return the Plan.

    `name` replaces the spec's own (a new sweep, or another one to resume, from one file)."""
    try:
        spec, doc = load_spec(spec_path, name)
    except SpecError as err:
        raise SpecError(err.paragraphs + _raw_parameter_problems(spec_path)) from None
    base = (spec_path.parent / spec.base).resolve()
    program = program_argv(spec.program)
    # The validation co-process starts first, so its start-up overlaps the W&B checks and the
    # schema call; together they are the fixed cost of every sweep.
    validator = Validator(program, base)
    if base.is_file():
        validator.start()
    try:
        problems: list[str] = []
        search = spec.search_config()
        wandb_problems = _sweeps_schema_errors(doc, search)
        problems += [text for loc, text in wandb_problems if loc[:1] != ("parameters",)]
        try:
            described = describe(program)
        except ContractError as err:
            raise SpecError([*problems, doc.error(("program",), str(err))]) from None
        metrics = described.metric_names()
        if metrics and spec.metric.name not in metrics:
            problems.append(doc.error(("metric", "name"), f"unknown metric "
                                      f"{spec.metric.name!r}; the program reports "
                                      f"{', '.join(metrics)}"))
        if spec.method != "grid" and spec.run_cap is None and max_trials is None:
            problems.append(doc.error(("method",), f"a {spec.method} search never ends by "
                                      "itself: set `run_cap` (or pass --max-trials)"))
        if not base.is_file():
            problems.append(doc.error(("base",), f"trainer config {base} does not exist; `base` "
                                      "is relative to the spec file"))
        gpu_problems, gpu_notes = _gpu_check(spec, doc)
        problems += gpu_problems
        plan = _static_checks(spec, doc, spec_path, problems, program, base, validator, sets,
                              data, [p for p in wandb_problems if p[0][:1] == ("parameters",)],
                              described)
        plan.notes += gpu_notes
        if spec.tracking.wandb is not None and described.tracking is None:
            plan.notes.append(f"{spec_path}: tracking.wandb is not passed to the trials: the "
                              "program declares no tracking keys (`describe`)")
        if spec.method == "bayes" and "metric" not in doc.data:
            plan.notes.append(f"{spec_path}: a bayes search without `metric` optimizes "
                              f"{spec.metric.name} ({spec.metric.goal}), the default; set "
                              "`metric: {name: ..., goal: ...}` to choose")
        _check_points(plan)
    except BaseException:
        validator.close()
        raise
    return plan


def _gpu_check(spec: SweepSpec, doc: SpecDoc) -> tuple[list[str], list[str]]:
    """(problems, notes) of the GPUs a local sweep lists: each must be one nvidia-smi lists, or
    the trials would say cuda:N while running on the CPU. (Docker checks its engine's GPUs.)"""
    res = spec.resources
    if spec.launcher.type != "local" or not isinstance(res.gpus, list) or not res.gpus:
        return [], []
    found = detect_gpus()
    missing = [g for g in res.gpus if g not in found]
    if not missing:
        return [], []
    seen = f"nvidia-smi lists {', '.join(map(str, found))}" if found else \
        "nvidia-smi finds no usable GPU here"
    listed = ", ".join(map(str, missing))
    if res.cpu_fallback:
        left = [g for g in res.gpus if g in found]
        where = (f"GPU(s) {', '.join(map(str, left))}" if left
                 else f"the CPU ({res.cpu_slots} slot(s))")
        return [], [f"resources.gpus: GPU(s) {listed} not usable ({seen}); "
                    f"resources.cpu_fallback is true, so the trials run on {where}"]
    return [doc.error(("resources", "gpus"), f"GPU(s) {listed} asked for, but {seen}; list "
                      "only GPUs this machine has, set `resources.gpus: null` to run on the "
                      "CPU, or `resources.cpu_fallback: true` to use the CPU when the listed "
                      "GPUs are missing")], []


def _data_file_problem(doc: SpecDoc, validator: Validator, key: str, path: Any,
                       where: tuple[Any, ...] | str) -> list[str]:
    """The program's cheap look at a data file every trial reads (exists, is a file, has a
    known suffix, is not empty): one paragraph instead of one per grid point."""
    try:
        verdict = validator.check([{key: path}])[0]
    except ContractError:
        return []  # a base the program cannot read: reported with the points
    text = str(verdict.get("error", ""))
    if verdict.get("ok") or not text.startswith(key):
        return []  # only the file's own problems; the rest is the points' business
    return [doc.error(where, text) if isinstance(where, tuple) else f"{where}: {text}"]


def _online_key_problem(doc: SpecDoc, base: Path, key: str,
                        fixed_src: dict[str, tuple[Any, tuple[Any, ...] | str]]) -> list[str]:
    """W&B online mode with no API key would fail every trial at its start: refuse it now."""
    mode, where = fixed_src.get(key, (None, ("base",)))
    if key not in fixed_src:
        try:
            mode = read_yaml(base.read_text(encoding="utf-8"))
            for part in key.split("."):
                mode = mode[part]
        except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
            return []  # unreadable bases are the validator's to report
    if mode != "online" or api_key():
        return []
    text = ("W&B online mode, but no W&B API key is available here (WANDB_API_KEY is unset "
            "and no netrc entry holds one), so every trial would fail at its start; run "
            "`wandb login` or export WANDB_API_KEY, or use mode `offline` (sync later with "
            "`wandb sync`) or `disabled`")
    if where == ("base",):
        return [doc.error(where, f"{base} sets {key}: online: {text}")]
    return [doc.error(where, text) if isinstance(where, tuple) else f"{where}: {text}"]


def _static_checks(spec: SweepSpec, doc: SpecDoc, spec_path: Path, problems: list[str],
                   program: list[str], base: Path, validator: Validator, sets: list[str],
                   data: Path | None, wandb_params: list[tuple[tuple[Any, ...], str]],
                   described: Description) -> Plan:
    """Names and values against the program's schema; W&B's parameter errors where no sharper
    one exists for the same parameter."""
    try:
        schema = fetch_schema(program)
    except ContractError as err:
        raise SpecError([*problems, doc.error(("program",), str(err))]) from None

    fixed_src: dict[str, tuple[Any, tuple[Any, ...] | str]] = {}
    for key, value in flatten(spec.overrides).items():
        if (key in described.data_files and value is not None
                and not Path(str(value)).is_absolute()):
            value = str((spec_path.parent / str(value)).resolve())  # relative to the spec
        fixed_src[key] = (value, ("overrides", key))
    tracking = described.tracking
    if spec.tracking.wandb is not None and tracking is not None:
        for key in ("mode", "project", "entity"):
            if (name := getattr(tracking, key)) is not None:
                fixed_src[name] = (getattr(spec.tracking.wandb, key), ("tracking", "wandb", key))
    for text in sets:
        try:
            key, value = parse_set(text)
        except SpecError as err:
            problems += err.paragraphs
            continue
        fixed_src[key] = (value, f"--set {text}")
    if data is not None and not described.data_files:
        problems.append(f"--data {data}: the program declares no data file (its `describe` "
                        "names no data_files), so --data sets nothing; use --set KEY=PATH with "
                        "the program's own key")
    elif data is not None:
        fixed_src[described.data_files[0]] = (str(data.resolve()), f"--data {data}")

    for key, (value, where) in fixed_src.items():
        fields = resolve(key, schema)
        err = fields if isinstance(fields, str) else value_error(value, fields, schema)
        if err:
            problems.append(doc.error(where, err) if isinstance(where, tuple)
                            else f"{where}: {err}")
    flagged = set()
    for name, param, loc in param_names(spec.parameters):
        fields = resolve(name, schema)
        err = fields if isinstance(fields, str) else distribution_error(param, fields, schema)
        if err:
            problems.append(doc.error(loc, err))
            flagged.add(loc)
    problems += [text for loc, text in wandb_params if loc not in flagged]
    if tracking is not None:
        problems += _online_key_problem(doc, base, tracking.mode, fixed_src)
    for key in described.data_files:
        if key in fixed_src and fixed_src[key][0] is not None and base.is_file():
            problems += _data_file_problem(doc, validator, key, *fixed_src[key])
    if problems:
        raise SpecError(problems)

    fixed = {k: v for k, (v, _) in fixed_src.items()}
    return Plan(spec=spec, doc=doc, base=base, program=program, fixed=fixed,
                search=spec.search_config(), varied=varied(spec.parameters),
                validator=validator, described=described)


# Random/bayes proposals drawn to check a search space: a 5% invalid region shows up with
# near certainty, for about a second of sampling and validation.
SAMPLE = 200


def _check_points(plan: Plan) -> None:
    """Validate the trial configs with the program itself; fills plan.grid, plan.invalid and
    plan.rejected. Any invalid point fails the spec unless it sets `skip_invalid`; a space where
    every point is invalid fails it regardless, since nothing could run."""
    doc = plan.doc
    try:
        if plan.spec.method == "grid":
            points = Engine(plan.search).grid()
            verdicts = plan.validator.check([plan.resolved(p) for p in points])
        else:
            fixed = plan.validator.check([plan.fixed])[0]
            if not fixed.get("ok"):  # the base with the overrides: no point can be valid
                raise SpecError([doc.error(("base",), fixed.get("error", "invalid"))])
            points = Engine(plan.search).sample(SAMPLE)
            verdicts = plan.validator.check([plan.resolved(p) for p in points])
    except ContractError as err:
        raise SpecError([doc.error(("base",), str(err))]) from None
    except ValueError as err:  # the engine refuses a space (e.g. a distribution in a grid)
        raise SpecError([doc.error(("parameters",), str(err))]) from None
    bad = [(p, str(v.get("error"))) for p, v in zip(points, verdicts) if not v.get("ok")]
    what = "grid points" if plan.spec.method == "grid" else "sampled proposals"
    plan.rejected = group([(p, e, plan.resolved(p)) for p, e in bad], len(points), what,
                          plan.varied)
    if plan.spec.method == "grid":
        plan.invalid = bad
        _fill_grid(plan, points, verdicts)
    if not bad or (plan.spec.skip_invalid and len(bad) < len(points)):
        return
    if len(bad) == len(points):
        lead = (f"all {len(points)} grid points are invalid for the trainer; nothing could run"
                if plan.spec.method == "grid" else f"all {len(points)} sampled proposals are "
                f"invalid for the trainer: the {plan.spec.method} search would find nothing to "
                "run")
    elif plan.spec.method == "grid":
        lead = (f"{plan.rejected.share()}. Change the parameters so that every combination "
                f"is valid, or set `skip_invalid: true` to run the other "
                f"{len(points) - len(bad)}")
    else:
        lead = (f"{plan.rejected.share()}. Narrow the parameters, or set `skip_invalid: true` "
                "to let the search skip such proposals (they do not count towards run_cap)")
    raise SpecError([render(plan.rejected, doc.error(("parameters",), lead + ". Reasons:"),
                            first=len("error: "))])


def _fill_grid(plan: Plan, points: list[dict[str, Any]], verdicts: list[dict[str, Any]]) -> None:
    """The valid grid points in order, each distinct config once."""
    plan.grid, seen = [], set()
    for point, verdict in zip(points, verdicts):
        if not verdict.get("ok"):
            continue
        if verdict["config_hash"] in seen:
            plan.notes.append(f"grid point {json.dumps(point)} resolves to the same config as an "
                              "earlier point; it runs once")
        else:
            seen.add(verdict["config_hash"])
            plan.grid.append((point, verdict["config_hash"]))
