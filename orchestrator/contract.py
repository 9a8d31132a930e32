"""What the orchestrator knows about a trial program: the trainer contract, and nothing more.

A program honours the contract (docs/design.md) when it accepts

    PROGRAM --config BASE --out RUN_DIR [key.path=value ...]     train one trial
    PROGRAM schema                                                 JSON Schema of its config
    PROGRAM validate --config BASE --batch                         one verdict per stdin line
    PROGRAM describe                                               what it declares (optional)
    PROGRAM prepare --config BASE [key.path=value ...]             fill its data cache (optional)

writes `RUN_DIR/events.jsonl` and `RUN_DIR/result.json`, and exits with the codes below. Of
the events the orchestrator reads `validation_step` (the metrics), `step`/`max_steps` of any
event (progress) and `device_info`'s `device` (where the program says it runs: `cpu`, `cuda`).

The orchestrator names no key of the program's config: `describe` prints a `Description` (JSON)
saying which keys are data files, which determine the prepared data, which are seeds, which sets
the tracking mode, which metrics it reports and how each is judged, and whether it has `prepare`.
A program without `describe` gets the defaults: no data file, no seeds, no prepare, and the
spec's metric taken as it is.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator import schemacache
from orchestrator.states import TrialState

# Exit codes of the contract (trainer/exitcodes.py), restated because the orchestrator knows the
# trainer only through its command line.
EXIT_FINISHED = 0
EXIT_CRASHED = 1
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_OOM = 5
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

ExitMeaning = Literal["finished", "crashed", "bad_input", "diverged", "oom", "stopped"]
# What `judge` makes of each code; any other non-zero code is a crash (state `failed`).
EXIT_CODES: dict[int, ExitMeaning] = {
    EXIT_FINISHED: "finished", EXIT_CRASHED: "crashed", EXIT_BAD_INPUT: "bad_input",
    EXIT_DIVERGED: "diverged", EXIT_OOM: "oom", EXIT_SIGINT: "stopped", EXIT_SIGTERM: "stopped"}


class ContractError(Exception):
    """The program did not answer a contract command the way the contract says."""


def program_argv(program: str | list[str]) -> list[str]:
    """The program as an argv list; a leading `python` means this interpreter.

    `orch` is often run from a venv that is not activated, where a bare `python` on PATH would
    be another interpreter without the trainer installed.
    """
    try:
        argv = shlex.split(program) if isinstance(program, str) else list(program)
    except ValueError as err:  # an unbalanced quote; the spec's model says so first
        raise ContractError(f"program {program!r} cannot be read as a command line: {err}") \
            from None
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def format_value(value: Any) -> str:
    """A value as the trainer's `key=value` parser (a YAML scalar) reads it back unchanged.

    JSON is a subset of YAML flow syntax, so strings stay strings (quoted) and lists stay lists.
    """
    return json.dumps(value)


def fetch_schema(program: list[str], timeout: float = 120,
                 cache_dir: Path | None = None) -> dict[str, Any]:
    """The program's JSON Schema: from the schema cache, else by running `PROGRAM schema`."""
    key = schemacache.cache_key(program)
    cache_dir = cache_dir or schemacache.default_dir()
    if key is not None and (schema := schemacache.load(cache_dir, key)) is not None:
        return schema
    schema = _ask_schema(program, timeout)
    if key is not None:
        schemacache.store(cache_dir, key, schema)
    return schema


def _ask_schema(program: list[str], timeout: float) -> dict[str, Any]:
    try:
        proc = subprocess.run([*program, "schema"], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ContractError(f"`{shlex.join(program)} schema` could not run: {err}") from None
    if proc.returncode != 0:
        raise ContractError(f"`{shlex.join(program)} schema` exited {proc.returncode}: "
                            f"{proc.stderr.strip()[-800:]}")
    try:
        schema = json.loads(proc.stdout)
    except json.JSONDecodeError as err:
        raise ContractError(f"`{shlex.join(program)} schema` printed no JSON: {err}") from None
    if not isinstance(schema, dict):
        raise ContractError(f"`{shlex.join(program)} schema` printed JSON that is not an object")
    return schema


class Metric(BaseModel):
    """One metric the program reports in validation_step events and result.json."""

    name: str
    goal: Literal["minimize", "maximize"]
    label: str | None = Field(None, description="Short column header (default: the name).")
    share: bool = Field(False, description="A fraction in [0, 1], shown as a percentage.")
    unit: str | None = Field(None, description=(
        "What one unit of it is, for axis titles (e.g. `nats per character`)."))


class Tracking(BaseModel):
    """The config keys of the program's W&B tracking (values are W&B's modes)."""

    mode: str = Field(description="The key that sets the mode.")
    modes: list[Literal["online", "offline", "disabled"]]
    project: str | None = Field(None, description="The key of the W&B project.")
    entity: str | None = Field(None, description="The key of the W&B entity.")


class Description(BaseModel):
    """What `PROGRAM describe` declares; the defaults are those of a program without it.

    Keys are dotted config keys; in `data_keys` a key ending in `.` stands for its section.
    """

    model_config = ConfigDict(extra="ignore")  # a newer program may declare more

    data_files: list[str] = Field(default_factory=list, description=(
        "Keys whose values are paths of files a trial reads: resolved against the spec's "
        "directory, mounted into containers, checked once before the points."))
    data_keys: list[str] = Field(default_factory=list, description=(
        "Keys that determine the prepared data: one `prepare` per distinct setting of them."))
    seeds: list[str] = Field(default_factory=list, description=(
        "Keys that are seeds: varied, but not what a configuration is (tables aggregate them)."))
    tracking: Tracking | None = None
    metrics: list[Metric] = Field(default_factory=list, description=(
        "The metrics it reports, in the order tables show them; none: the spec's metric."))
    prepare: bool = Field(False, description="Whether it has `PROGRAM prepare`.")
    exit_codes: dict[int, ExitMeaning] = Field(default_factory=dict, description=(
        "Its exit codes and their meanings; each must be the contract's (EXIT_CODES)."))

    def metric_names(self) -> list[str]:
        """The declared metric names (empty: whatever the spec names)."""
        return [m.name for m in self.metrics]

    def is_data_key(self, key: str) -> bool:
        """Whether `key` determines the prepared data."""
        return any(key == k or (k.endswith(".") and key.startswith(k)) for k in self.data_keys)


def describe(program: list[str], timeout: float = 60,
             cache_dir: Path | None = None) -> Description:
    """What the program declares: from the cache, else by running `PROGRAM describe`.

    A program that exits non-zero (it has no `describe`) gets the defaults; one that answers
    with something that is not a Description raises ContractError.
    """
    argv = [*program, "describe"]
    key = schemacache.cache_key(argv)
    cache_dir = cache_dir or schemacache.default_dir()
    if key is not None and (cached := schemacache.load(cache_dir, key)) is not None:
        return Description.model_validate(cached)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return Description()  # `schema` runs next and says what is wrong with the program
    found = Description() if proc.returncode != 0 else _parse_description(argv, proc.stdout)
    if key is not None:
        schemacache.store(cache_dir, key, found.model_dump(mode="json"))
    return found


def describe_recorded(program: str | list[str] | None) -> Description:
    """What a recorded sweep's program declares (cached); the defaults when it cannot say (none
    recorded, one gone since, one without `describe`): a report never fails for it."""
    try:
        return describe(program_argv(program)) if program else Description()
    except ContractError:
        return Description()


def _parse_description(argv: list[str], text: str) -> Description:
    try:
        found = Description.model_validate_json(text)
    except ValidationError as err:  # one line per problem, without pydantic's links
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'the output'}: {e['msg']}" for e in err.errors())
        shown = text.strip()[:60] or "nothing"
        raise ContractError(f"`{shlex.join(argv)}` printed no valid description (a JSON object, "
                            f"see Description in orchestrator/contract.py): {problems[:500]}; "
                            f"it printed {shown!r}") from None
    wrong = [f"{code} means {EXIT_CODES[code]}, not {meaning}"
             for code, meaning in found.exit_codes.items()
             if EXIT_CODES.get(code, "crashed") != meaning]
    if wrong:
        raise ContractError(f"`{shlex.join(argv)}` declares exit codes the contract reads "
                            f"otherwise: {'; '.join(wrong)}")
    return found


class Validator:
    """A `PROGRAM validate --config BASE --batch` co-process: one process per sweep, many points.

    Each point is a {dotted.key: value} dict applied on top of the base config; the verdict is
    {ok, config_hash} or {ok: false, error}. Kept open so random and bayes proposals are checked
    as they come, without paying the program's start-up per trial.
    """

    def __init__(self, program: list[str], base: Path) -> None:
        self._argv = [*program, "validate", "--config", str(base), "--batch"]
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> subprocess.Popen[str]:
        """Start the co-process now (it is also started on first use); ContractError when the
        program cannot be started at all (not found, not executable)."""
        if self._proc is None:
            try:
                self._proc = subprocess.Popen(self._argv, stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              text=True, bufsize=1)
            except OSError as err:
                raise ContractError(f"`{shlex.join(self._argv)}` could not run: {err}") from None
        return self._proc

    def check(self, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Verdicts for `points`, in order."""
        if not points:
            return []
        proc = self.start()
        assert proc.stdin is not None and proc.stdout is not None
        verdicts = []
        try:
            # Write and read one at a time: a big grid could otherwise fill both pipes.
            for point in points:
                proc.stdin.write(json.dumps(point) + "\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                if not line:
                    raise BrokenPipeError
                verdicts.append(json.loads(line))
        except (BrokenPipeError, json.JSONDecodeError):
            proc.kill()
            err = proc.stderr.read().strip() if proc.stderr else ""
            code = proc.wait()
            self._proc = None
            if code == EXIT_BAD_INPUT and err:  # the program's own one-paragraph refusal
                raise ContractError(err.removeprefix("error: ")[-1500:]) from None
            raise ContractError(f"`{shlex.join(self._argv)}` exited {code}: "
                                f"{err[-1500:] or 'no verdict printed'}") from None
        return verdicts

    def close(self) -> None:
        """End the co-process."""
        if self._proc is not None:
            if self._proc.stdin:
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """`result.json`, or None when missing or unreadable (a killed run writes none)."""
    try:
        data = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def finite(value: Any) -> float | None:
    """A metric value as a float, or None when missing or not finite (never 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class EventTail:
    """Reads `events.jsonl` incrementally: only the bytes appended since the last call."""

    path: Path
    offset: int = 0
    step: int | None = None
    max_steps: int | None = None
    device: str | None = None  # what the program reports it runs on (device_info), not the slot
    validations: list[dict[str, Any]] = field(default_factory=list)

    def poll(self) -> list[dict[str, Any]]:
        """New validation_step events since the last poll (progress fields are updated too)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return []
        # Only whole lines: the writer may be mid-line; the rest is read next time.
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        new = []
        for raw in chunk[: end + 1].splitlines():
            try:
                event = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if not isinstance(event, dict):
                continue
            if isinstance(event.get("step"), int):
                self.step = event["step"]
            if isinstance(event.get("max_steps"), int):
                self.max_steps = event["max_steps"]
            if event.get("event") == "validation_step":
                new.append(event)
            elif event.get("event") == "device_info" and isinstance(event.get("device"), str):
                self.device = event["device"]
        self.validations.extend(new)
        return new


def reported_metrics(result: dict[str, Any], tail: EventTail, names: list[str]
            ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(final, best) from result.json; without a usable one, the last validation event's
    `names` (the metrics the program declares) are the final. The run loop and the ledger
    rebuild both record a run's metrics this way."""
    final = result.get("final") if isinstance(result.get("final"), dict) else None
    best = result.get("best") if isinstance(result.get("best"), dict) else None
    if final is None and tail.validations:  # no result.json: the events still tell
        last = tail.validations[-1]
        final = {k: last.get(k) for k in names}
    return final, best


@dataclass
class Outcome:
    """The honest end state of one trial attempt."""

    state: TrialState
    reason: str
    result: dict[str, Any] | None


def judge(exit_code: int | None, run_dir: Path, *, timed_out: bool = False,
          stop_reason: str | None = None) -> Outcome:
    """Map an exit code plus `result.json` to a trial state.

    `finished` needs both: exit 0 and a result.json that says finished. What the orchestrator
    itself did (a timeout, an early stop) wins over what the program reports after the signal.
    """
    result = read_result(run_dir)
    said = result.get("status") if result else None
    why = (result or {}).get("reason") or ""
    if exit_code == EXIT_FINISHED and said == "finished":
        return Outcome(TrialState.FINISHED, why, result)  # it finished before our signal landed
    if timed_out:
        return Outcome(TrialState.TIMEOUT, "exceeded resources.timeout", result)
    if stop_reason is not None:
        return Outcome(TrialState.STOPPED, stop_reason, result)
    if exit_code is None:
        return Outcome(TrialState.KILLED, "no exit code", result)
    if exit_code < 0:
        return Outcome(TrialState.KILLED, f"killed by signal {-exit_code}", result)
    if exit_code == EXIT_FINISHED:
        if said == "finished":
            return Outcome(TrialState.FINISHED, why, result)
        shown = f"result.json says {said!r}" if result else "no result.json"
        return Outcome(TrialState.FAILED, f"exit 0 but {shown}", result)
    if exit_code == EXIT_DIVERGED or said == "diverged":
        return Outcome(TrialState.DIVERGED, why or "non-finite loss", result)
    if exit_code == EXIT_OOM:
        return Outcome(TrialState.OOM, why or "out of memory", result)
    if exit_code == EXIT_BAD_INPUT:
        return Outcome(TrialState.FAILED, why or "bad config or data (exit 2)", result)
    if exit_code in (EXIT_SIGINT, EXIT_SIGTERM):
        why = f"stopped by a signal from outside (exit {exit_code})"
        return Outcome(TrialState.KILLED, why, result)
    return Outcome(TrialState.FAILED, why or f"exit {exit_code}", result)
