"""The sweep spec: a YAML file, its pydantic model, and the checks that run before anything runs.

A spec is W&B's sweep vocabulary (method, metric, parameters, early_terminate, run_cap) plus what
a local sweep needs: the trainer base config, inline overrides, the program, resources, launcher
and tracking. Every problem found is one paragraph naming the file, the YAML line, the field and
what is allowed; `SpecError` carries them all at once so one edit can fix them all. Reading the
file (YAML, lines) is document.py's.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from orchestrator.spec.document import SpecDoc, SpecError, read_spec

DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*"
                      r"(?:(\d+(?:\.\d+)?)\s*s?)?\s*$")


def parse_duration(text: str | int | float | None) -> float | None:
    """Seconds from `90`, `90s`, `30m`, `2h`, `1h30m`; None stays None."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    m = DURATION.match(str(text))
    if not m or not any(m.groups()):
        raise ValueError(f"'{text}' is not a duration: use seconds or e.g. 90s, 30m, 2h, 1h30m")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Metric(BaseModel):
    """The metric the search optimizes (W&B's `metric`)."""

    model_config = ConfigDict(extra="allow")  # W&B's target/impute keys pass through
    name: str = Field("val_loss", description=(
        "A metric the program reports (`PROGRAM describe`); default: the first it declares "
        "(the trainer's: val_loss)."))
    goal: Literal["minimize", "maximize"] = Field("minimize", description=(
        "Default: the goal the program declares for the metric named (`PROGRAM describe`), "
        "else minimize."))


class Resources(_Strict):
    """Where and how long trials run."""

    gpus: Literal["all"] | list[int] | None = Field(
        "all", description="GPU indices, `all` (auto-detected with nvidia-smi), or null for CPU.")
    cpu_fallback: bool = Field(
        False, description="Local launcher: when the listed GPUs are not usable here "
        "(nvidia-smi does not list them), run on those that are, else on the CPU (cpu_slots), "
        "and say so; false: such a sweep is refused before anything runs.")
    jobs_per_gpu: int = Field(1, ge=1, description="Trials sharing one GPU.")
    cpu_slots: int = Field(1, ge=1, description="Parallel trials when there is no GPU.")
    timeout: float | None = Field(None, gt=0, description="Per-trial limit: seconds, 30m, 2h.")
    kill_grace: float = Field(10.0, ge=0, description="SIGTERM to SIGKILL grace period.")
    retries: int = Field(0, ge=0, description=(
        "Re-runs of a trial that failed, ran out of memory or was killed (not of one that "
        "diverged, timed out, or refused its config: those end the same way again)."))

    @field_validator("gpus", mode="before")
    @classmethod
    def _no_gpus(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.lower() in ("none", "cpu", "") else v

    @field_validator("gpus")
    @classmethod
    def _each_gpu_once(cls, v: Any) -> Any:
        if isinstance(v, list):
            twice = sorted({g for g in v if v.count(g) > 1})
            if twice:
                raise ValueError(f"GPU {', '.join(map(str, twice))} listed more than once; list "
                                 "each GPU once (jobs_per_gpu runs several trials on one GPU)")
        return v

    @field_validator("timeout", "kill_grace", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v


class LauncherSettings(_Strict):
    """How a trial is started: a local process, one Docker container or one Slurm job per trial.

    One flat section: each field names the launcher it is for (Docker:, Slurm:), so `orch docs`
    shows one row per field.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["local", "docker", "slurm", "replay"] = Field(
        "local", description="`local`: a process on this machine; `docker`: a container each; "
        "`slurm`: a Slurm batch job each (on a login node; run dirs on a shared filesystem); "
        "`replay`: no program, each trial answered with the recorded curve of the same point "
        "(`from`).")
    from_: str | None = Field(
        None, alias="from", description="Replay: the recording, a finished sweep of this "
        "ledger or a table file (.json, relative to the spec, e.g. from benchmarks/tables/).")
    image: str | None = Field(
        None, description="Docker: pin the image to run, used as it is (never built; e.g. one "
        "`orch build --base-image X --tag TAG` made); default `orch-trainer:<hash of the build "
        "context>`, built from the repository's Dockerfile.")
    base_image: str | None = Field(
        None, description="Docker: the Dockerfile's BASE_IMAGE (default its CUDA PyTorch image).")
    build: bool = Field(True, description="Docker: build the default image (an unchanged "
                        "context is reused, not rebuilt) before the first trial; false: it must "
                        "exist.")
    build_network: str | None = Field(
        None, description="Docker: network of the build's RUN steps (`none` for an offline "
        "build, `host`); default the engine's.")
    context: str | None = Field(
        None, description="Docker: build context with the Dockerfile, relative to the spec "
        "file; default the repository orch is installed from, else the current directory.")
    shm_size: str = Field("8g", pattern=r"^\d+[bkmgBKMG]?$",
                          description="Docker: /dev/shm size of each container (data loading).")
    user: str | None = Field(
        None, pattern=r"^\d+:\d+$", description="Docker: UID:GID the trials run as; default "
        "the invoking user's, so the files in run dirs are theirs.")
    network: str = Field("none", description="Docker: network of a trial container.")
    online_network: str = Field(
        "host", description="Docker: network of trials with tracking.mode online (W&B).")
    volumes: list[str] = Field(
        default_factory=list, description="Docker: extra bind mounts HOST:CONTAINER[:ro|rw], "
        "HOST relative to the spec file.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Docker: extra environment of every trial (no "
        "secrets: `docker inspect` shows them).")
    partition: str | None = Field(None, description="Slurm: partition (--partition); default "
                                  "the cluster's default.")
    account: str | None = Field(None, description="Slurm: account charged (--account).")
    qos: str | None = Field(None, description="Slurm: quality of service (--qos).")
    time: str | None = Field(
        None, description="Slurm: time limit of a trial job (--time): 30m, 2h, or Slurm's MM, "
        "HH:MM:SS, D-HH:MM:SS (a bare number is minutes, as for sbatch); default "
        "resources.timeout + kill_grace + 1 minute, else the partition's limit.")
    cpus_per_trial: int = Field(1, ge=1, description="Slurm: CPUs per trial job "
                                "(--cpus-per-task; also its OMP_NUM_THREADS).")
    gpus_per_trial: int = Field(0, ge=0, description="Slurm: GPUs per trial job (--gres=gpu:N); "
                                "Slurm sets CUDA_VISIBLE_DEVICES.")
    mem: str | None = Field(None, pattern=r"^\d+[KMGTkmgt]?$", description="Slurm: memory per "
                            "trial job (--mem, e.g. 16G); default the partition's.")
    max_concurrent: int = Field(4, ge=1, description="Slurm: trial jobs in flight (queued or "
                                "running) at once.")
    setup: list[str] = Field(
        default_factory=list, description="Slurm: shell lines run in the job before the trial "
        "(`module load cuda`, `source venv/bin/activate`); with setup or container_prefix the "
        "program runs as written, else with orch's own interpreter.")
    container_prefix: str | None = Field(
        None, description="Slurm: command the trial runs under, e.g. `apptainer exec --nv "
        "IMAGE`.")
    sbatch_args: list[str] = Field(
        default_factory=list, description="Slurm: more sbatch options, one each "
        "(`--constraint=a100`).")
    poll: float = Field(5.0, gt=0, description="Slurm: seconds between squeue calls (one call "
                        "for all the sweep's jobs).")

    @field_validator("time", mode="before")
    @classmethod
    def _slurm_time(cls, v: Any) -> Any:
        if v is None:
            return v
        text = str(v).strip()
        if not re.fullmatch(r"(\d+-)?\d+(:\d{1,2}){0,2}", text):
            try:
                parse_duration(text)
            except ValueError:
                raise ValueError(f"'{text}' is not a time limit: use e.g. 30m, 2h, 1h30m, or "
                                 "Slurm's MM, HH:MM:SS, D-HH:MM:SS") from None
        return text

    @model_validator(mode="after")
    def _slurm_fields_need_slurm(self) -> LauncherSettings:
        slurm_only = {"partition", "account", "qos", "time", "cpus_per_trial", "gpus_per_trial",
                      "mem", "max_concurrent", "setup", "container_prefix", "sbatch_args",
                      "poll"}
        misplaced = sorted(slurm_only & self.model_fields_set)
        if self.type != "slurm" and misplaced:
            raise ValueError(f"{', '.join(misplaced)}: Slurm settings; they need `type: slurm`")
        if (self.type == "replay") != (self.from_ is not None):
            raise ValueError("`type: replay` and `from` (the recorded sweep or table) go "
                             "together: a replay needs its recording, and only a replay has one")
        return self


class WandbSettings(_Strict):
    """W&B settings handed to every trial's `tracking` section."""

    mode: Literal["disabled", "offline", "online"] = "offline"
    project: str = "mainrun"
    entity: str | None = None


Backend = Literal["local", "wandb"]  # where the search runs; also the CLI's --backend choices


class Tracking(_Strict):
    """Where the search runs (`local`: the embedded engine) and the trials' W&B logging."""

    backend: Backend = Field(
        "local", description="`local`: the embedded engine runs the search; `wandb`: a W&B "
        "cloud sweep does, served by `orch agent` on one or more workstations.")
    wandb: WandbSettings | None = None


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # also a run-directory and container-name part
NAME_MAX = 100  # a file-name part (255 bytes at most) with room for what is added to it


class SweepSpec(_Strict):
    """One sweep."""

    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX,
                      description="Sweep name: the ledger key, so running it again resumes.")
    description: str | None = Field(None, description="Free text, shown by `orch ls`.")
    base: str = Field(description="Trainer config YAML, relative to this spec file.")
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="Dotted trainer config keys set for all trials.")
    program: str | list[str] = Field("python -m trainer",
                                     description="Command running one trial (the contract).")
    method: Literal["grid", "random", "bayes", "tpe"] = Field(
        description="Search method: W&B's grid, random, bayes, or Optuna's tpe "
        "(tracking.backend local only).")
    metric: Metric = Field(default_factory=Metric)
    parameters: dict[str, dict[str, Any]] = Field(
        min_length=1, description="W&B parameter specs keyed by dotted trainer config paths: "
        "value, values, min/max, distribution (incl. log_uniform_values), q, mu/sigma, or "
        "nested `parameters`.")
    early_terminate: dict[str, Any] | None = Field(
        None, description="Early termination: W&B's {type: hyperband, min_iter: 3, eta: 3} for "
        "grid/random/bayes, Optuna's {type: asha, min_iter: 1, eta: 3} for tpe; one "
        "iteration is one validation_step.")
    run_cap: int | None = Field(None, gt=0, description="Most trials the sweep runs (random "
                                "and bayes need it, or --max-trials).")
    skip_invalid: bool = Field(
        False, description="Run the points the trainer accepts and skip the rest. Without it, "
        "a grid with any invalid point (or a random/bayes space where a sample of 200 "
        "proposals has one) fails validation, so a combination is never dropped unnoticed.")
    reuse: bool = Field(
        False, description="Reuse results across sweeps: a trial whose program (as written) "
        "and config hash match a finished trial of another sweep in the ledger is recorded as "
        "finished with that trial's metrics and history, marked `reused from SWEEP/N`, and "
        "not run. Off: every trial trains.")
    resources: Resources = Field(default_factory=Resources)
    launcher: LauncherSettings = Field(default_factory=LauncherSettings)
    tracking: Tracking = Field(default_factory=Tracking)

    @field_validator("program")
    @classmethod
    def _a_command(cls, v: str | list[str]) -> str | list[str]:
        try:
            argv = shlex.split(v) if isinstance(v, str) else v
        except ValueError as err:  # e.g. an unbalanced quote
            raise ValueError(f"cannot be read as a command line ({err}); quote as a shell "
                             "would, or give the command as a list") from None
        if not argv or not str(argv[0]).strip():
            raise ValueError("is empty: give the command that runs one trial, e.g. "
                             "`python -m trainer`")
        return v

    def search_config(self) -> dict[str, Any]:
        """The W&B sweep config: what `sweeps.next_runs` and `stop_runs` read."""
        cfg: dict[str, Any] = {"method": self.method, "metric": self.metric.model_dump(),
                               "parameters": self.parameters}
        if self.early_terminate is not None:
            cfg["early_terminate"] = self.early_terminate
        if self.run_cap is not None:
            cfg["run_cap"] = self.run_cap
        return cfg


def _pydantic_paragraphs(doc: SpecDoc, err: ValidationError) -> list[str]:
    merged: dict[tuple[Any, ...], list[str]] = {}
    for loc, msg in _pydantic_items(err):
        merged.setdefault(loc, []).append(msg)
    # A union field fails once per member: one paragraph saying what each member wanted.
    return [doc.error(loc, " or ".join(dict.fromkeys(msgs))) for loc, msgs in merged.items()]


def _pydantic_items(err: ValidationError) -> list[tuple[tuple[Any, ...], str]]:
    out = []
    for e in err.errors():
        # Unions put the member name in the loc (`str`, `list[int]`); drop those parts.
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and (
            "[" in p or p in {"str", "int", "float", "list", "literal", "none"}
            or p.startswith("function-"))))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            section = loc[:-1]
            model = _model_at(section)
            allowed = ", ".join(model.model_fields) if model else "see `orch schema`"
            msg = f"unknown field; allowed here: {allowed}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif "input" in e and not isinstance(e["input"], dict):
            got = repr(e["input"])
            msg += f" (got {got if len(got) <= 80 else got[:60] + '…'})"
        out.append((loc, msg))
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = SweepSpec
    for part in loc:
        info = model.model_fields.get(str(part))
        sub = getattr(info, "annotation", None) if info else None
        candidates = [sub, *getattr(sub, "__args__", ())]
        found = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not found:
            return None
        model = found[0]
    return model


def load_spec(path: Path, name: str | None = None) -> tuple[SweepSpec, SpecDoc]:
    """Read and model-check a spec, under `name` instead of its own when given (`--name`);
    raise SpecError with every problem found."""
    if name is not None and (not re.match(NAME_PATTERN, name) or len(name) > NAME_MAX):
        raise SpecError([f"--name {name!r}: a sweep name is letters, digits, '.', '_' and '-', "
                         f"starting with a letter or digit, at most {NAME_MAX} characters; "
                         f"{path} was not run"])
    doc = read_spec(path)
    if name is not None and isinstance(doc.data, dict):
        doc.data["name"] = name
    try:
        spec = SweepSpec.model_validate(doc.data)
    except ValidationError as err:
        raise SpecError(_pydantic_paragraphs(doc, err)) from None
    return spec, doc

