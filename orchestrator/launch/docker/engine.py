"""The container engine the Docker launcher and the W&B agent containers share.

It holds the Docker client and the trainer image (built or pinned, with its GPU runtime checked),
and runs watched containers: each under a watchdog, its output followed into a log, signalled,
reaped and removed. What goes into a container (mounts, environment, command) is its owner's
business (docker/launcher.py for trials, wandb/agent_containers.py for agents).

Labels `orch.sweep` and `orch.home` (and `orch.agent` on agents) name every container, so a
Ctrl-C, `orch stop` or a resumed sweep finds exactly its own. The watchdog stops the program when
the orchestrator dies (even by kill -9); the exited container stays for the next run to remove.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from signal import Signals
from typing import Any, Callable

from orchestrator.launch.docker.container import KeyFile
from orchestrator.launch.docker.image import (connect, default_context, engine_address,
                                              ensure_image, pinned_image)
from orchestrator.launch.protocol import Launch, LauncherError, Run
from orchestrator.spec.model import LauncherSettings

OOM_TEXT = (b"CUDA out of memory", b"OutOfMemoryError", b"CUBLAS_STATUS_ALLOC_FAILED")

# Runs the program inside the container and ends it when its stdin reaches EOF, which happens
# when the orchestrator's attach closes: the kernel closes it even on kill -9. It is the
# container's counterpart of the local launcher's parent-death signal. Exit codes pass through
# (a signal N as 128 + N, as a shell reports it); SIGTERM and SIGINT are forwarded.
WATCHDOG = """\
import os, signal, subprocess, sys, threading
grace, argv = float(sys.argv[1]), sys.argv[2:]
child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, lambda n, _f: child.send_signal(n))
def orphaned():
    while os.read(0, 65536):  # unbuffered: no stdin lock held at interpreter exit
        pass
    print("[orch] the orchestrator is gone: stopping the trial", file=sys.stderr, flush=True)
    child.terminate()
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        child.kill()
threading.Thread(target=orphaned, daemon=True).start()
code = child.wait()
sys.exit(128 - code if code < 0 else code)
"""


def sweep_labels(sweep: str, home: Path) -> dict[str, str]:
    """The labels that make a container this sweep's (the same name in another ORCH_HOME is not)."""
    return {"orch.sweep": sweep, "orch.home": str(home)}


def remove_containers(client: Any, sweep: str, home: Path, label: str = "orch.sweep") -> int:
    """Force-remove every container of the sweep, running or not; how many there were.
    (`label` orch.agent: the W&B agent containers of the sweep that label names.)"""
    import docker.errors

    found = client.containers.list(all=True, ignore_removed=True, filters={"label": [
        f"{label}={sweep}", f"orch.home={home}"]})  # gone meanwhile: skipped
    for container in found:
        try:
            container.remove(force=True)  # SIGKILL: an orphan's attempt is re-run anyway
        except docker.errors.NotFound:
            pass
    return len(found)


@dataclass(kw_only=True)
class ContainerRun(Run):
    """A live container (a trial, or a W&B agent)."""

    container_id: str
    host_pid: int | None = None
    follower: threading.Thread | None = None
    lifeline: Any = None  # our attach to the container's stdin; the kernel closes it if we die

    @property
    def pid(self) -> int | None:
        """The container's init process as the host sees it (for `orch status`)."""
        return self.host_pid


class ContainerEngine:
    """One sweep's Docker client, image and watched containers."""

    def __init__(self, settings: LauncherSettings, sweep: str, home: Path, spec_dir: Path,
                 kill_grace: float, say: Callable[[str], None]) -> None:
        self.settings = settings
        self.sweep = sweep
        self.home = home
        self.spec_dir = spec_dir
        self.kill_grace = kill_grace  # the watchdog's, when the orchestrator is gone
        self.say = say
        self.cache_dir = Path(os.environ.get("ORCH_CACHE_DIR") or home / "cache").resolve()
        self.me = f"{os.getuid()}:{os.getgid()}"
        self.user = settings.user or self.me
        self.client: Any = None
        self.image = ""
        self._runs: dict[str, ContainerRun] = {}
        self._ended = threading.Event()

    @property
    def uid(self) -> int:
        """The uid containers run as."""
        return int(self.user.split(":")[0])

    # -- before the first container -------------------------------------------------------------

    def prepare(self, devices: list[str]) -> None:
        """Reach the engine, build or reuse the image, and check the GPU runtime if GPUs run."""
        if self.user != self.me and os.getuid() != 0:
            raise LauncherError(f"launcher.user {self.user} is not you ({self.me}): only root can "
                                "hand another user the run dirs; drop launcher.user to run as you")
        self.client = connect()
        s = self.settings
        if s.image:
            self.image = pinned_image(self.client, s.image)
        else:
            context = (self.spec_dir / s.context).resolve() if s.context else default_context()
            self.image, _ = ensure_image(self.client, context=context, base_image=s.base_image,
                                         network=s.build_network, build=s.build, echo=self.say)
        gpus = sorted({d.split(":", 1)[1] for d in devices if d.startswith("cuda:")})
        if gpus:
            self._check_gpu_runtime(gpus)
        self.cache_dir.mkdir(parents=True, exist_ok=True)  # else the engine makes it, root-owned
        if self.user != self.me:  # trials run as another uid: it must be able to read entries
            mode = self.cache_dir.stat().st_mode
            if mode & 0o005 != 0o005:
                self.cache_dir.chmod(mode | 0o055)

    def _check_gpu_runtime(self, gpus: list[str]) -> None:
        """A GPU container that starts proves the runtime; the engine's error names the gap."""
        import docker.errors
        from docker.types import DeviceRequest

        if "nvidia" in (self.client.info().get("Runtimes") or {}):
            return
        probe = self.client.containers.create(
            self.image, ["true"], network_mode="none",
            device_requests=[DeviceRequest(device_ids=gpus[:1], capabilities=[["gpu"]])],
            labels={**sweep_labels(self.sweep, self.home), "orch.role": "gpu-check"})
        try:
            probe.start()  # the engine resolves the GPU request here, not at create
        except docker.errors.APIError as err:
            why = (err.explanation or str(err)).strip().splitlines()[0][:200]
            raise LauncherError(
                f"GPU(s) {','.join(gpus)} requested but the Docker engine at {engine_address()} "
                f"cannot give containers a GPU ({why}); install the NVIDIA Container Toolkit "
                "(`nvidia-ctk runtime configure --runtime=docker`, then restart dockerd) or set "
                "resources.gpus: null to run on CPU") from None
        finally:
            probe.remove(force=True)

    def remove_labelled(self, value: str, label: str = "orch.sweep") -> int:
        """Remove the containers an earlier run left (remove_containers); how many."""
        return remove_containers(self.client, value, self.home, label)

    # -- one container ----------------------------------------------------------------------------

    def run(self, launch: Launch, argv: list[str], *, what: str, binds: dict[str, Any],
            env: dict[str, str], labels: dict[str, str], network: str, log: Path,
            name: str | None = None, working_dir: str | None = None) -> ContainerRun:
        """Create and start a container running `argv` under the watchdog, pinned to the
        launch's GPU if it has one; its output streams to `log`. `what` names it in errors
        ("trial 3"); a stale container of the same `name` is replaced."""
        import docker.errors
        from docker.types import DeviceRequest

        gpu = launch.device.split(":", 1)[1] if launch.device.startswith("cuda:") else None
        api = self.client.api
        host = api.create_host_config(
            binds=binds, network_mode=network, shm_size=self.settings.shm_size,
            init=True,  # tini as pid 1: signals reach the watchdog, zombies are reaped
            device_requests=[DeviceRequest(device_ids=[gpu], capabilities=[["gpu"]])]
            if gpu is not None else None)
        config = api.create_container_config(
            self.image, ["python", "-c", WATCHDOG, str(self.kill_grace), *argv], user=self.user,
            environment=env, labels=labels, working_dir=working_dir, stdin_open=True,
            host_config=host)
        config["StdinOnce"] = True  # our attach closing (we died) closes the watchdog's stdin
        try:
            container_id = api.create_container_from_config(config, name)["Id"]
        except docker.errors.APIError as err:  # a bad mount, image or network; a namesake
            if name is None or err.status_code != 409:
                raise LauncherError(f"creating the container of {what} failed: "
                                    f"{err.explanation or err}") from None
            api.remove_container(name, force=True)  # a stale namesake
            container_id = api.create_container_from_config(config, name)["Id"]
        return self._start_watched(container_id, launch, log)

    def _start_watched(self, container_id: str, launch: Launch, log: Path) -> ContainerRun:
        """Attach our lifeline to the created container's stdin, start it and follow its log."""
        api = self.client.api
        lifeline = api.attach_socket(container_id, params={"stdin": 1, "stream": 1})
        api.start(container_id)
        now = time.time()
        pid = api.inspect_container(container_id)["State"].get("Pid")
        run = ContainerRun(trial_id=launch.trial_id, run_dir=launch.run_dir, started=now,
                           begun=now, log=log, container_id=container_id, host_pid=pid or None,
                           lifeline=lifeline)
        self._follow(run)
        self._runs[container_id] = run
        return run

    def _follow(self, run: ContainerRun, since: int | None = None) -> None:
        """Copy the container's output to the log as it comes; the end of it wakes the loop."""
        def copy() -> None:
            try:
                stream = self.client.api.logs(run.container_id, stream=True, follow=True,
                                              since=since)
                with open(run.log, "ab") as out:
                    for chunk in stream:
                        out.write(chunk)
                        out.flush()
            except Exception:  # noqa: BLE001 - a lost stream only ends the copy; reap checks
                pass
            finally:
                self._ended.set()

        run.follower = threading.Thread(target=copy, daemon=True,
                                        name=f"logs-{run.container_id[:12]}")
        run.follower.start()

    # -- the loop's calls -----------------------------------------------------------------------

    def wait_any(self, timeout: float) -> None:
        """Sleep until a container's log stream ends (it exited) or `timeout` seconds pass."""
        self._ended.wait(timeout)
        self._ended.clear()

    def signal(self, run: Run, sig: Signals) -> None:
        """Send `sig` to the container's watchdog (which forwards SIGTERM to the program)."""
        import docker.errors

        assert isinstance(run, ContainerRun)
        try:
            self.client.api.kill(run.container_id, signal=sig.name)
        except docker.errors.APIError:
            pass  # already ended (409) or gone (404): reap() tells

    def reap(self, run: Run) -> int | None:
        """The exit code once the container ended (then it is removed), else None."""
        import docker.errors

        assert isinstance(run, ContainerRun)
        if run.follower is not None and run.follower.is_alive():
            return None
        try:
            state = self.client.api.inspect_container(run.container_id)["State"]
        except docker.errors.NotFound:
            self._remove(run.container_id)
            return -9  # removed behind our back: nothing ran to the end
        if state.get("Running"):
            self._follow(run, since=int(time.time()))  # the stream broke, not the container
            return None
        code = int(state.get("ExitCode", -1))
        if state.get("OOMKilled"):
            run.oom = "the container was OOM-killed (host memory)"
        elif code != 0 and _log_says_oom(run.log):
            run.oom = "CUDA out of memory (see trial.log)"
        self._remove(run.container_id)
        # 137 is how a container reports SIGKILL; the contract never exits 137 on its own.
        return -9 if code == 137 else code

    def _remove(self, container_id: str) -> None:
        import docker.errors

        run = self._runs.pop(container_id, None)
        if run is not None and run.lifeline is not None:
            _close(run.lifeline)
        try:
            self.client.api.remove_container(container_id, force=True)
        except docker.errors.APIError:
            pass

    def close(self) -> None:
        """Remove any container still known (none after a normal end) and let go of the engine."""
        for container_id in list(self._runs):
            self._remove(container_id)
        if self.client is not None:
            self.client.close()


def _log_says_oom(log: Path, tail: int = 64 * 1024) -> bool:
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - tail))
            text = fh.read()
    except OSError:
        return False
    return any(needle in text for needle in OOM_TEXT)


def _close(sock: Any) -> None:
    """Close an attach socket (the SDK hands back a SocketIO or a raw socket)."""
    for obj in (sock, getattr(sock, "_sock", None)):
        try:
            if obj is not None:
                obj.close()
        except OSError:
            pass


class ContainerCalls:
    """The launcher protocol's calls on running containers, answered by `self.engine`: shared
    by the trial launcher and the W&B agent containers, which differ only in what they start.
    `self._key` is the API key file their containers mount, removed on close."""

    engine: ContainerEngine
    _key: KeyFile

    def wait_any(self, timeout: float) -> None:
        """Sleep until a container ends (its log stream closes) or `timeout` seconds pass."""
        self.engine.wait_any(timeout)

    def signal(self, run: Run, sig: Signals) -> None:
        """Send `sig` to the run's container (an agent forwards it to its trainer)."""
        self.engine.signal(run, sig)

    def reap(self, run: Run) -> int | None:
        """The exit code once the container ended (then it is removed), else None."""
        return self.engine.reap(run)

    def close(self) -> None:
        """Remove any container still known (none after a normal end) and the key file."""
        self.engine.close()
        self._key.remove()
