"""The one module that talks to the W&B cloud: create a sweep, the agent and sync commands, and
public-API reads. Everything else about W&B sweeps is plain data handled elsewhere and tested.

Only the functions marked `(cloud)` reach the network; they are kept as small as possible
because no test can run them (our machines cannot reach W&B). The API key is never touched
here: wandb reads it from WANDB_API_KEY or the user's `wandb login` (~/.netrc) itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What a failed `wandb sync` / `wandb agent` prints when there is no route to W&B (seen with
# wandb 0.31 offline: "Failed to verify credentials ... did not respond in time").
NO_NETWORK_HINTS = ("did not respond in time", "failed to verify credentials",
                    "connection refused", "name or service not known", "network is unreachable",
                    "temporary failure in name resolution", "max retries exceeded")


class CloudError(Exception):
    """A W&B call failed (no network, no login, no such sweep): one line saying what to do."""


def explain(err: BaseException, doing: str) -> CloudError:
    """A wandb exception as a CloudError whose message says what to try."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if looks_offline(first):
        hint = "W&B is not reachable from here (no network?)"
    elif any(w in first.lower() for w in ("api_key", "api key", "login")):
        hint = "log in first: `wandb login`, or set WANDB_API_KEY in the environment"
    else:
        hint = "see the message above"
    return CloudError(f"could not {doing}: {first} — {hint}")


@dataclass(frozen=True)
class SweepRef:
    """A W&B sweep: `entity/project/id` and its page."""

    entity: str
    project: str
    id: str

    @property
    def path(self) -> str:
        """What `wandb agent` and `Api().sweep()` take."""
        return f"{self.entity}/{self.project}/{self.id}"

    def url(self, app_url: str = "https://wandb.ai") -> str:
        """The sweep's page (W&B's own form: wandb/sdk/wandb_sweep.py `_get_sweep_url`)."""
        return f"{app_url.rstrip('/')}/{self.entity}/{self.project}/sweeps/{self.id}"

    @classmethod
    def parse(cls, text: str) -> SweepRef:
        """`entity/project/id` (also with a `/sweeps/` segment, as in the URL's tail)."""
        parts = [p for p in text.strip().strip("/").split("/") if p and p != "sweeps"]
        if len(parts) != 3:
            raise ValueError(f"{text!r}: give the sweep as ENTITY/PROJECT/SWEEP_ID (orch sweep "
                             "--backend wandb prints it)")
        return cls(*parts)


@dataclass
class RemoteSweep:
    """What the public API says about a sweep: its config, state and runs with histories."""

    ref: SweepRef
    config: dict[str, Any]
    state: str
    runs: list[Any]  # wandb.apis.public.Run
    histories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by run id


def wandb_executable() -> str:
    """`wandb` from PATH, else the one installed beside this interpreter."""
    found = shutil.which("wandb")
    if found:
        return found
    beside = Path(sys.executable).with_name("wandb")
    return str(beside) if beside.exists() else "wandb"


def agent_argv(sweep: SweepRef, count: int | None, wandb: str | None = None) -> list[str]:
    """`wandb agent` for one slot. --forward-signals: our SIGTERM reaches the running trainer,
    which then writes its result and ends its W&B run as failed, not as a silent kill."""
    argv = [wandb or wandb_executable(), "agent", "--forward-signals"]
    if count is not None:
        argv += ["--count", str(count)]
    return [*argv, sweep.path]


def sync_argv(run_dirs: list[Path], sweep: SweepRef | None = None,
              wandb: str | None = None) -> list[str]:
    """`wandb sync` over offline run dirs (wandb/offline-run-*), into the sweep's project."""
    argv = [wandb or wandb_executable(), "sync"]  # runs synced before are skipped by wandb
    if sweep is not None:
        argv += ["--entity", sweep.entity, "--project", sweep.project]
    return [*argv, *map(str, run_dirs)]


def looks_offline(output: str) -> bool:
    """Whether a wandb command's output says W&B could not be reached."""
    low = output.lower()
    return any(hint in low for hint in NO_NETWORK_HINTS)


def run_sync(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """(cloud) Run `wandb sync`; the caller reads the exit code and output."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "WANDB_SILENT": "false"})


def create_sweep(config: dict[str, Any], project: str, entity: str | None) -> SweepRef:
    """(cloud) Create the sweep on W&B; wandb.sweep prints its id and URL itself."""
    import wandb

    sweep_id = wandb.sweep(config, entity=entity, project=project)
    return SweepRef(entity or wandb.Api().default_entity, project, sweep_id)


def fetch_sweep(ref: SweepRef) -> RemoteSweep:
    """(cloud) The sweep's config, state, runs and each run's full logged history."""
    import wandb

    sweep = wandb.Api().sweep(ref.path)
    runs = list(sweep.runs)
    histories = {run.id: [dict(row) for row in run.scan_history()] for run in runs}
    return RemoteSweep(ref, dict(sweep.config), str(sweep.state), runs, histories)
