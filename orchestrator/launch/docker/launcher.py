"""The Docker launcher: one container per trial attempt, driven through the Docker SDK.

What a trial container is given (paths, mounts, environment, the API key as a file) is
`trial_container`'s business; this module drives the engine: image, start, logs, stop, reap.

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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator.launch.dataprep import refusal
from orchestrator.launch.docker.image import (connect, default_context, engine_address,
                                              ensure_image, pinned_image)
from orchestrator.launch.protocol import Launch, LauncherError, Run
from orchestrator.spec.plan import Plan
from orchestrator.spec.model import LauncherSettings
from orchestrator.launch.docker.container import CACHE, KEY_FILE, RUN, WATCHDOG, KeyFile, Layout

OOM_TEXT = (b"CUDA out of memory", b"OutOfMemoryError", b"CUBLAS_STATUS_ALLOC_FAILED")


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
    """A live trial container."""

    container_id: str
    host_pid: int | None = None
    follower: threading.Thread | None = None
    lifeline: Any = None  # our attach to the container's stdin; the kernel closes it if we die
    kill_sent: bool = False
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        """The container's init process as the host sees it (for `orch status`)."""
        return self.host_pid


class DockerLauncher:
    """Runs each trial attempt in its own container of the trainer image."""

    def __init__(self, plan: Plan, home: Path, say: Callable[[str], None]) -> None:
        self._setup(plan.spec.launcher, plan.spec.name, home, plan.doc.path.resolve().parent,
                    plan.spec.resources.kill_grace, say)
        program = plan.spec.program
        self.layout = Layout(self.settings, self.spec_dir, self.cache_dir,
                             shlex.split(program) if isinstance(program, str) else list(program),
                             plan.described)

    def _setup(self, settings: LauncherSettings, sweep: str, home: Path, spec_dir: Path,
               kill_grace: float, say: Callable[[str], None]) -> None:
        """The engine-side state (also of the W&B agent containers, agent_containers.py)."""
        self.settings = settings
        self.sweep = sweep
        self.home = home
        self.spec_dir = spec_dir
        self.kill_grace = kill_grace
        self.say = say
        self.cache_dir = Path(os.environ.get("ORCH_CACHE_DIR") or home / "cache").resolve()
        me = f"{os.getuid()}:{os.getgid()}"
        self.user = self.settings.user or me
        self.me = me
        self.client: Any = None
        self.image = ""
        self._prepared: set[str] = set()
        self._runs: dict[str, ContainerRun] = {}
        self._ended = threading.Event()
        self._key = KeyFile()

    # -- before the first trial -----------------------------------------------------------------

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

    def reap_orphans(self, marker: str) -> int:
        """Remove containers a dead orchestrator of this sweep left (found by label)."""
        return remove_containers(self.client, self.sweep, self.home)

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
            launch = Launch(trial_id=0, number=0, attempt=0, argv=[], run_dir=log.parent, env={},
                            timeout=None, marker="", base=base, point=sets, device="cpu")
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
        binds[str(self.cache_dir)] = {"bind": CACHE, "mode": "rw"}
        # No data file: the program fetches its data (the trainer: from the hub), by network.
        hub = all(self.layout.setting(launch, k) is None for k in described.data_files)
        argv = self.layout.prepare_argv(launch, sets)
        started = time.time()
        container = self.client.containers.create(
            self.image, argv, user=self.me, volumes=binds, labels=self._labels(launch, "prepare"),
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
            self.say(f"trial {launch.number}: preparing the data cache failed (exit {code}); "
                     f"see {log}")
        return code, output.decode(errors="replace")

    def start(self, launch: Launch) -> ContainerRun:
        """Create and start the trial's container; its output streams to RUN_DIR/trial.log."""
        import docker.errors
        from docker.types import DeviceRequest

        run_dir = launch.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        log = run_dir / "trial.log"
        log.touch()
        uid, gid = (int(x) for x in self.user.split(":"))
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
        gpu = launch.device.split(":", 1)[1] if launch.device.startswith("cuda:") else None
        api = self.client.api
        host = api.create_host_config(
            binds=volumes, network_mode=self.settings.online_network if online
            else self.settings.network, shm_size=self.settings.shm_size,
            init=True,  # tini as pid 1: signals reach the watchdog, zombies are reaped
            device_requests=[DeviceRequest(device_ids=[gpu], capabilities=[["gpu"]])]
            if gpu is not None else None)
        config = api.create_container_config(
            self.image, ["python", "-c", WATCHDOG, str(self.kill_grace), *argv], user=self.user,
            environment=env, labels=self._labels(launch, "trial"), stdin_open=True,
            host_config=host)
        config["StdinOnce"] = True  # our attach closing (we died) closes the trial's stdin
        name = self._name(launch, "trial")
        try:
            container_id = api.create_container_from_config(config, name)["Id"]
        except docker.errors.APIError as err:
            if err.status_code != 409:
                raise LauncherError(f"creating the container of trial {launch.number} failed: "
                                    f"{err.explanation or err}") from None
            api.remove_container(name, force=True)  # a stale namesake
            container_id = api.create_container_from_config(config, name)["Id"]
        return self._start_watched(container_id, launch, run_dir, log, argv)

    def _start_watched(self, container_id: str, launch: Launch, run_dir: Path, log: Path,
                       argv: list[str]) -> ContainerRun:
        """Attach our lifeline to the created container's stdin, start it and follow its log."""
        api = self.client.api
        lifeline = api.attach_socket(container_id, params={"stdin": 1, "stream": 1})
        api.start(container_id)
        now = time.time()
        pid = api.inspect_container(container_id)["State"].get("Pid")
        run = ContainerRun(trial_id=launch.trial_id, run_dir=run_dir, started=now,
                           deadline=now + launch.timeout if launch.timeout else None, log=log,
                           container_id=container_id, host_pid=pid or None, argv=argv,
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

    def _kill(self, run: ContainerRun, sig: str) -> None:
        import docker.errors

        try:
            self.client.api.kill(run.container_id, signal=sig)
        except docker.errors.APIError:
            pass  # already ended (409) or gone (404): reap() tells

    def terminate(self, run: Run, reason: str | None = None, timed_out: bool = False) -> None:
        """SIGTERM to the container (once); SIGKILL follows after the grace period."""
        assert isinstance(run, ContainerRun)
        if run.request_stop(reason, timed_out):
            self._kill(run, "SIGTERM")

    def enforce(self, run: Run, now: float) -> None:
        """Apply the timeout and the SIGKILL after grace (sent once)."""
        assert isinstance(run, ContainerRun)
        if run.deadline is not None and now >= run.deadline and run.term_sent is None:
            self.terminate(run, timed_out=True)
        if run.term_sent is not None and now - run.term_sent >= self.kill_grace \
                and not run.kill_sent:
            run.kill_sent = True
            self._kill(run, "SIGKILL")

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
        """Remove any container still known (none after a normal end) and the key file."""
        for container_id in list(self._runs):
            self._remove(container_id)
        self._key.remove()
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
