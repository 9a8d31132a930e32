"""W&B agents in containers: with the Docker launcher, `orch agent` runs each slot's
`wandb agent` in a container of the trainer image, pinned to the slot's GPU.

The agent runs the sweep's command (fixed when the sweep was created, see wandb_sweep.py)
inside its container, so the container is laid out the way that command expects:

    /orch/repo    the directory `orch agent` runs in (the checkout root), read-only, as the
                  working dir: the command's relative paths (base config, data) resolve there
    /orch/home    ORCH_HOME: its runs/ is the host's ORCH_HOME/runs (read-write), so
                  `--out ${envvar:ORCH_HOME}/runs/...` writes the host's run dirs
    /orch/cache   the data cache (read-write: the runs W&B hands out fill it as they need it)
    /orch/agent   the slot's agent dir (WANDB_DIR: the agent's sweep config files)
    /tmp/.netrc   the API key as a 0600 netrc entry, read-only (HOME=/tmp): `wandb agent` and
                  the trainers it starts find it as after `wandb login`

The key never enters the container's command, environment or labels (`docker inspect` shows
all three). PYTHONSAFEPATH keeps the checkout's `trainer/` from shadowing the image's. The
network is launcher.online_network (the agent talks to W&B). Labels orch.agent (the sweep's
ENTITY/PROJECT/ID), orch.sweep (its ledger name) and orch.home name the containers, so a
Ctrl-C, `orch stop` or a later `orch agent` removes exactly these; each agent runs under the
trial watchdog, so an `orch` that dies (even by kill -9) stops its agents too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from orchestrator.launch.docker.container import CACHE, WANDB_HOST_ONLY, KeyFile
from orchestrator.launch.docker.engine import ContainerCalls, ContainerEngine, ContainerRun
from orchestrator.launch.protocol import Launch, LauncherError
from orchestrator.ledger import Ledger
from orchestrator.spec.model import LauncherSettings
from orchestrator.wandb.agents import AgentCommand
from orchestrator.wandb.cloud import SweepRef

REPO, HOME, AGENT, NETRC = "/orch/repo", "/orch/home", "/orch/agent", "/tmp/.netrc"


def netrc_entry(key: str) -> str:
    """The netrc line wandb looks the key up by: the netloc of WANDB_BASE_URL (its default)."""
    url = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    return f"machine {urlsplit(url).netloc or 'api.wandb.ai'}\n  login user\n  password {key}\n"


def recorded_launcher(ledger: Ledger, ref: SweepRef) -> tuple[LauncherSettings, str, Path]:
    """(launcher section, ledger name, spec dir) of the spec this W&B sweep was created from;
    defaults (type local, the sweep path, the current directory) when it is not in the ledger."""
    row = ledger.wandb_sweep(ref.path)
    if row is None:
        return LauncherSettings(), ref.path, Path.cwd()
    where = Path(row["spec_path"]).resolve().parent if row.get("spec_path") else Path.cwd()
    defaults = LauncherSettings().model_dump(mode="json")  # the ledger keeps every field
    given = {k: v for k, v in (row["spec"].get("launcher") or {}).items() if defaults.get(k) != v}
    return LauncherSettings.model_validate(given), row["name"], where


class AgentContainers(ContainerCalls):
    """The launcher AgentPool drives to run each agent in its own container, on the container
    engine the Docker launcher uses (engine.py: image, watchdog, signals, reaping)."""

    def __init__(self, settings: LauncherSettings, ref: SweepRef, name: str, home: Path,
                 spec_dir: Path, kill_grace: float, say: Callable[[str], None]) -> None:
        self.engine = ContainerEngine(settings, name, home, spec_dir, kill_grace, say)
        self.settings = settings
        self.sweep = name
        self.home = home
        self.spec_dir = spec_dir
        self.ref = ref
        self.root = Path.cwd().resolve()
        self._key = KeyFile(".netrc", netrc_entry)

    def prepare(self, devices: list[str]) -> None:
        """The image and GPU runtime (as for trials), the key file, and the host dirs."""
        self.engine.prepare(devices)
        if self._key.path(self.engine.uid) is None:
            raise LauncherError("no W&B API key: agents in containers need one; run `wandb "
                                "login` or set WANDB_API_KEY")
        (self.home / "runs").mkdir(parents=True, exist_ok=True)  # else the engine makes it

    def reap_orphans(self, marker: str) -> int:
        """Remove the containers an earlier `orch agent` of this sweep left (found by label)."""
        return self.engine.remove_labelled(self.ref.path, label="orch.agent")

    def _mounts(self, agent_dir: Path) -> dict[str, dict[str, str]]:
        binds = {str(self.root): {"bind": REPO, "mode": "ro"},
                 str((self.home / "runs").resolve()): {"bind": f"{HOME}/runs", "mode": "rw"},
                 str(self.engine.cache_dir): {"bind": CACHE, "mode": "rw"},
                 str(agent_dir.resolve()): {"bind": AGENT, "mode": "rw"}}
        for spec in self.settings.volumes:  # HOST:CONTAINER[:ro|rw], HOST relative to the spec
            host, _, rest = spec.partition(":")
            inside, _, mode = rest.partition(":")
            binds[str((self.spec_dir / host).resolve())] = {"bind": inside, "mode": mode or "rw"}
        key = self._key.path(self.engine.uid)
        if key:
            binds[key] = {"bind": NETRC, "mode": "ro"}
        return binds

    def _env(self, launch: Launch) -> dict[str, str]:
        """The slot's thread counts, the host's W&B settings (no key, no host paths), ours."""
        env = {k: v for k, v in launch.env.items() if k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env.update({k: v for k, v in os.environ.items() if k.startswith("WANDB_")
                    and k not in (*WANDB_HOST_ONLY, "WANDB_API_KEY_FILE")})
        env.update(PYTHONUNBUFFERED="1", PYTHONSAFEPATH="1", ORCH_HOME=HOME, ORCH_CACHE_DIR=CACHE,
                   WANDB_DIR=AGENT, HOME="/tmp", USER="orch", LOGNAME="orch")
        env.update(self.settings.env)
        return env

    def start(self, launch: Launch) -> ContainerRun:
        """Create and start the slot's agent container; its output streams to the agent log."""
        assert isinstance(launch.command, AgentCommand)
        launch.run_dir.mkdir(parents=True, exist_ok=True)
        log = launch.run_dir / "trial.log"
        log.touch()
        labels = {"orch.agent": self.ref.path, "orch.sweep": self.sweep,
                  "orch.home": str(self.home), "orch.slot": str(launch.number),
                  "orch.role": "agent"}
        return self.engine.run(
            launch, launch.command.in_image(), what=f"agent {launch.number}",
            binds=self._mounts(launch.run_dir), env=self._env(launch), labels=labels,
            network=self.settings.online_network, log=log, working_dir=REPO)


def agent_launcher(ledger: Ledger, ref: SweepRef, home: Path, kill_grace: float,
                   say: Callable[[str], None], force: str | None = None) -> Any:
    """AgentContainers when the sweep's recorded spec (or `force`) says docker, else None (the
    agents run as local processes)."""
    settings, name, spec_dir = recorded_launcher(ledger, ref)
    kind = force or settings.type
    if kind != "docker":
        return None
    return AgentContainers(settings.model_copy(update={"type": "docker"}), ref, name, home,
                           spec_dir, kill_grace, say)
