"""What goes into one trial's container: paths, mounts, command, environment, the API key file.

A trial container sees only what it needs, at fixed paths:

    /orch/run      the trial's run dir (read-write; files owned by the user it runs as)
    /orch/cache    the sweep's data cache (read-only; filled before, by a `prepare` container)
    /orch/config/  the trainer base config (read-only)
    /orch/data/    the data file's directory (read-only; the program's data file key, from
                   `describe`, rewritten to point here; a second file's at /orch/data-2/, ...)
    /orch/secrets/ the W&B API key as a 0600 file, only when there is a key and W&B is on

The API key never enters a command, label or environment variable (`docker inspect` shows all
three): the container gets WANDB_API_KEY_FILE, a path, and the trainer reads the file.
"""

from __future__ import annotations

import netrc
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import yaml

from orchestrator.contract import Description
from orchestrator.launch.command import TrialCommand, prepare_command
from orchestrator.launch.protocol import Launch
from orchestrator.spec.document import read_yaml
from orchestrator.spec.model import LauncherSettings

RUN, CACHE, CONFIG, DATA, SECRETS = ("/orch/run", "/orch/cache", "/orch/config", "/orch/data",
                                     "/orch/secrets")
KEY_FILE = f"{SECRETS}/wandb_api_key"
# W&B variables that hold host paths (meaningless in a container) or the secret itself.
WANDB_HOST_ONLY = ("WANDB_API_KEY", "WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR",
                   "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR")

def api_key() -> str | None:
    """The W&B API key of the invoking user: WANDB_API_KEY, else their netrc entry."""
    key = os.environ.get("WANDB_API_KEY")
    if key:
        return key
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        entry = netrc.netrc().authenticators(host or "api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry and entry[2] else None


class KeyFile:
    """A private copy of the API key for bind mounts: a 0600 file in a 0700 temp dir.
    (`name`, `render`: the agent containers' `.netrc` holding the key as a netrc entry.)"""

    def __init__(self, name: str = "wandb_api_key", render: Callable[[str], str] = str) -> None:
        self._dir: Path | None = None
        self.name = name
        self.render = render

    def path(self, uid: int) -> str | None:
        """The file (made on first use, readable by `uid`), or None when there is no key."""
        key = api_key()
        if not key:
            return None
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="orch-secrets-"))
            path = self._dir / self.name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.render(key))
            if uid != os.getuid():
                try:
                    os.chown(path, uid, -1)  # readable by the container's user only
                except PermissionError:
                    os.chmod(path, 0o644)  # still private: its directory is 0700 on the host
        return str(self._dir / self.name)

    def remove(self) -> None:
        """Delete the copy."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class Layout:
    """Maps a trial's host paths and settings to what its container is given."""

    def __init__(self, settings: LauncherSettings, spec_dir: Path, cache_dir: Path,
                 described: Description | None = None) -> None:
        self.settings = settings
        self.spec_dir = spec_dir
        self.cache_dir = cache_dir
        self.described = described or Description()
        self._bases: dict[Path, dict[str, Any]] = {}

    def _base(self, base: Path) -> dict[str, Any]:
        if base not in self._bases:
            try:
                tree = read_yaml(base.read_text()) or {}
            except (OSError, ValueError, yaml.YAMLError):
                tree = {}
            self._bases[base] = tree if isinstance(tree, dict) else {}
        return self._bases[base]

    def setting(self, launch: Launch, key: str) -> Any:
        """A dotted config value as the trial will see it: its overrides, else the base file."""
        command = trial(launch)
        if key in command.overrides:
            return command.overrides[key]
        node: Any = self._base(command.config)
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def mounts(self, launch: Launch) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
        """(binds, point): the trial's bind mounts, and its overrides with in-container paths."""
        command = trial(launch)
        binds = {str(launch.run_dir.resolve()): {"bind": RUN, "mode": "rw"},
                 str(self.cache_dir): {"bind": CACHE, "mode": "ro"},
                 str(command.config.resolve()): {"bind": self.config(launch), "mode": "ro"}}
        point = dict(command.overrides)
        for i, key in enumerate(self.described.data_files):
            data = self.setting(launch, key)
            if data is None:
                continue
            # Relative to where orch runs, as a local trial (started there) would read it.
            path = Path(str(data))
            path = (path if path.is_absolute() else Path.cwd() / path).resolve()
            inside = DATA if i == 0 else f"{DATA}-{i + 1}"
            binds[str(path.parent)] = {"bind": inside, "mode": "ro"}
            point[key] = f"{inside}/{path.name}"
        for spec in self.settings.volumes:
            host, _, rest = spec.partition(":")
            inside, _, mode = rest.partition(":")
            binds[str((self.spec_dir / host).resolve())] = {"bind": inside, "mode": mode or "rw"}
        return binds, point

    def config(self, launch: Launch) -> str:
        """The base config's path inside the container."""
        return f"{CONFIG}/{trial(launch).config.name}"

    def argv(self, launch: Launch, point: dict[str, Any]) -> list[str]:
        """The trial's command inside the container: its program as written, container paths."""
        command = trial(launch)
        return command.render(command.program, self.config(launch), RUN, point)

    def prepare_argv(self, launch: Launch, sets: dict[str, Any]) -> list[str]:
        """`PROGRAM prepare`: fill the data cache for these data and tokenizer settings."""
        return prepare_command(trial(launch).program, self.config(launch), sets)

    def env(self, launch: Launch, online: bool) -> dict[str, str]:
        """Thread counts of the slot, the host's W&B settings (no key, no host paths), ours."""
        env = {k: v for k, v in launch.env.items() if k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env.update({k: v for k, v in os.environ.items()
                    if k.startswith("WANDB_") and k not in WANDB_HOST_ONLY})
        env.update(PYTHONUNBUFFERED="1", ORCH_CACHE_DIR=CACHE, WANDB_DIR=RUN,
                   HOME="/tmp", USER="orch", LOGNAME="orch")  # the uid may have no passwd entry
        if not online and env.get("WANDB_MODE") not in ("disabled", "offline"):
            env["WANDB_MODE"] = "offline"  # no network: W&B must not try to reach its servers
        env.update(self.settings.env)
        return env


def trial(launch: Launch) -> TrialCommand:
    """The trial command of a launch (the Docker launcher runs trials only)."""
    assert isinstance(launch.command, TrialCommand)
    return launch.command
