"""The Docker launcher: one container per trial attempt, on the shared container engine.

What a trial container is given (paths, mounts, command, environment, the API key as a file)
is container.py's business; the shared engine (engine.py) runs it: image, start, logs, signals,
reap.

The data cache is filled by a `PROGRAM prepare` container of the same image (the cache key
includes the tokenizers version, so only the image's own build of it is sure to hit), run once
per distinct data config with the cache read-write; trials then mount it read-only.

Labels `orch.sweep`, `orch.home` and `orch.trial` name every container, so a Ctrl-C, `orch stop`
or a resumed sweep finds exactly this sweep's containers. A watchdog in each trial container
stops the trial when the orchestrator dies (even by kill -9); the exited container stays for
the resumed sweep to reap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from pathlib import Path
from typing import Any, Callable

from orchestrator.launch.command import TrialCommand, written
from orchestrator.launch.dataprep import refusal
from orchestrator.launch.docker.container import CACHE, KEY_FILE, RUN, KeyFile, Layout
from orchestrator.launch.docker.engine import (ContainerCalls, ContainerEngine, ContainerRun,
                                               sweep_labels)
from orchestrator.launch.protocol import Launch
from orchestrator.spec.plan import Plan


class DockerLauncher(ContainerCalls):
    """Runs each trial attempt in its own container of the trainer image."""

    def __init__(self, plan: Plan, home: Path, say: Callable[[str], None]) -> None:
        self.engine = ContainerEngine(plan.spec.launcher, plan.spec.name, home,
                                      plan.doc.path.resolve().parent,
                                      plan.spec.resources.kill_grace, say)
        self.settings = plan.spec.launcher
        self.sweep = plan.spec.name
        self.home = home
        self.program = written(plan.spec.program)
        self.layout = Layout(self.settings, self.engine.spec_dir, self.engine.cache_dir,
                             plan.described)
        self._prepared: set[str] = set()
        self._key = KeyFile()

    # -- before the first trial -----------------------------------------------------------------

    def prepare(self, devices: list[str]) -> None:
        """Reach the engine, build or reuse the image, and check the GPU runtime if GPUs run."""
        self.engine.prepare(devices)

    def reap_orphans(self, marker: str) -> int:
        """Remove containers a dead orchestrator of this sweep left (found by label)."""
        return self.engine.remove_labelled(self.sweep)

    # -- one trial --------------------------------------------------------------------------------

    def _labels(self, launch: Launch, role: str) -> dict[str, str]:
        return {**sweep_labels(self.sweep, self.home), "orch.trial": str(launch.number),
                "orch.attempt": str(launch.attempt), "orch.role": role}

    def _name(self, launch: Launch, role: str) -> str:
        home = hashlib.sha256(str(self.home).encode()).hexdigest()[:6]
        return f"orch-{self.sweep}-{launch.number}-a{launch.attempt}-{role}-{home}"

    def prepare_data(self, spec_path: Path, base: Path, settings: list[dict[str, Any]]) -> None:
        """Fill the cache for each data setting before the first trial, each in a `prepare`
        container of the trial image; a refusal raises (dataprep.refusal), nothing launched."""
        log = self.home / "runs" / self.sweep / "prepare.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        for sets in settings:
            launch = Launch(trial_id=0, number=0, attempt=0,
                            command=TrialCommand(self.program, base, log.parent, sets),
                            run_dir=log.parent, env={}, marker="", device="cpu")
            volumes, point = self.layout.mounts(launch)
            found = self._prepare_data(launch, point, volumes, log)
            if found is not None and found[0] != 0:
                code, output = found
                for key in self.layout.described.data_files:  # the user knows host paths
                    if (host := self.layout.setting(launch, key)) is not None:
                        output = output.replace(point[key], str(Path(str(host)).resolve()))
                raise refusal(spec_path, sets, code, output)

    def _prepare_data(self, launch: Launch, point: dict[str, Any], volumes: dict[str, Any],
                      log: Path) -> tuple[int, str] | None:
        """Fill the cache for this trial's data config once, in a container with it writable:
        (exit code, output), or None when this config was prepared before."""
        described = self.layout.described
        if not described.prepare:
            return None
        sets = {k: v for k, v in point.items() if described.is_data_key(k)}
        key = json.dumps(sets, sort_keys=True, default=str)
        if key in self._prepared:
            return None
        self._prepared.add(key)
        binds = {h: m for h, m in volumes.items() if m["bind"] != RUN}
        binds[str(self.engine.cache_dir)] = {"bind": CACHE, "mode": "rw"}
        # No data file: the program fetches its data (the trainer: from the hub), by network.
        hub = all(self.layout.setting(launch, k) is None for k in described.data_files)
        argv = self.layout.prepare_argv(launch, sets)
        started = time.time()
        container = self.engine.client.containers.create(
            self.engine.image, argv, user=self.engine.me, volumes=binds,
            labels=self._labels(launch, "prepare"),
            environment={"ORCH_CACHE_DIR": CACHE, "HOME": "/tmp", "HF_HOME": "/tmp/hf",
                         "PYTHONUNBUFFERED": "1"}, init=True,
            network_mode=self.settings.online_network if hub else "none")
        try:
            container.start()
            code = container.wait()["StatusCode"]
            output = container.logs()
        finally:
            container.remove(force=True)
        with open(log, "ab") as fh:
            fh.write(f"[orch] data cache: `{shlex.join(argv)}` exited {code} in "
                     f"{time.time() - started:.1f} s\n".encode() + output)
        if code != 0 and launch.number:
            self.engine.say(f"trial {launch.number}: preparing the data cache failed (exit "
                            f"{code}); see {log}")
        return code, output.decode(errors="replace")

    def start(self, launch: Launch) -> ContainerRun:
        """Create and start the trial's container; its output streams to RUN_DIR/trial.log."""
        run_dir = launch.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        log = run_dir / "trial.log"
        log.touch()
        uid, gid = (int(x) for x in self.engine.user.split(":"))
        if uid != os.getuid():  # the container's user must own its run dir to write there
            for path in (run_dir, *run_dir.iterdir()):
                os.chown(path, uid, gid)
        volumes, point = self.layout.mounts(launch)
        self._prepare_data(launch, point, volumes, log)
        tracking = self.layout.described.tracking
        mode = self.layout.setting(launch, tracking.mode) if tracking else None
        online = mode == "online"
        env = self.layout.env(launch, online)
        if mode in ("online", "offline") and (secret := self._key.path(uid)):
            volumes[secret] = {"bind": KEY_FILE, "mode": "ro"}
            env["WANDB_API_KEY_FILE"] = KEY_FILE
        argv = self.layout.argv(launch, point)
        return self.engine.run(
            launch, argv, what=f"trial {launch.number}", binds=volumes, env=env,
            labels=self._labels(launch, "trial"), log=log, name=self._name(launch, "trial"),
            network=self.settings.online_network if online else self.settings.network)
