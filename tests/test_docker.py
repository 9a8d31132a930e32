"""The Docker launcher on a real engine (no SDK mocks): image, containers, secrets, cleanup.

Locally these skip with a reason when no engine answers; in CI (CI=true) they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import yaml
from docker_fixtures import (base_image, deps_image, docker_client, shared_cache,  # noqa: F401
                             trainer_image)
from orch_helpers import (BASE_TINY, REPO, message_lines, orch_env, run_orch, start_orch,
                          wait_for)

from orchestrator.launch.docker.image import context_hash, default_tag
from orchestrator.ledger import Ledger

FAKE_KEY = "fakekey-0123456789abcdef0123456789abcdef01234567"
SLOW = 100  # epochs: a trial that runs until it is stopped


def _spec(path: Path, deps: str, titles: Path, **fields: Any) -> Path:
    spec: dict[str, Any] = {
        "name": "d", "base": str(BASE_TINY), "method": "grid",
        "overrides": {"data.path": str(titles)},
        "parameters": {"train.seed": {"values": [1, 2]}},
        "resources": {"gpus": None, "cpu_slots": 2, "kill_grace": "3s"},
        "launcher": {"type": "docker", "base_image": deps, "build_network": "none"}}
    for key, value in fields.items():
        spec[key] = {**spec[key], **value} if key in ("resources", "launcher") else value
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _containers(client: Any, home: Path, sweep: str = "d") -> list[Any]:
    return client.containers.list(all=True, ignore_removed=True, filters={
        "label": [f"orch.sweep={sweep}", f"orch.home={home}"]})


def _trials(home: Path, sweep: str = "d") -> dict[int, Any]:
    return {t.number: t for t in Ledger(home).trials(sweep)}


def _training(home: Path, numbers: list[int]) -> bool:
    """Whether each of these trials has logged a training step (its signal handlers are set)."""
    trials = _trials(home)
    for n in numbers:
        t = trials.get(n)
        if t is None or t.state != "running" or not t.run_dir:
            return False
        events = Path(t.run_dir) / "events.jsonl"
        if not events.exists() or b"training_step" not in events.read_bytes():
            return False
    return True


@pytest.fixture
def home(tmp_path: Path, shared_cache: Path, trainer_image: str) -> Path:  # noqa: F811
    """ORCH_HOME for one Docker test (the trainer image exists before its sweep starts)."""
    return tmp_path / "orch-home"


def _env(home: Path, cache: Path, **extra: str) -> dict[str, str]:
    return orch_env(home, ORCH_CACHE_DIR=str(cache), **extra)


def test_two_trials_in_containers_as_another_user(home: Path, tmp_path: Path, titles_csv: Path,
                                                 deps_image: str, docker_client: Any,  # noqa: F811
                                                 shared_cache: Path) -> None:  # noqa: F811
    spec = _spec(tmp_path / "s.yaml", deps_image, titles_csv,
                 parameters={"tracking.mode": {"values": ["disabled", "offline"]}},
                 launcher={"user": "1234:1234"})
    proc = start_orch(["sweep", str(spec)], _env(home, shared_cache, WANDB_API_KEY=FAKE_KEY))
    seen: dict[str, dict[str, Any]] = {}
    while proc.poll() is None:  # inspect each trial container while it exists
        for c in _containers(docker_client, home):
            if c.labels.get("orch.role") == "trial" and c.id not in seen:
                try:
                    seen[c.id] = docker_client.api.inspect_container(c.id)
                except docker.errors.NotFound:
                    pass  # ended and removed between the listing and now
        time.sleep(0.1)
    output = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0, output
    trials = _trials(home)
    assert [t.state for t in trials.values()] == ["finished", "finished"], output
    assert all(0 < t.final["val_loss"] < 10 for t in trials.values())
    assert _containers(docker_client, home) == []  # every container removed

    assert sorted(i["Config"]["Labels"]["orch.trial"] for i in seen.values()) == ["1", "2"]
    for info in seen.values():
        assert info["Config"]["Labels"]["orch.sweep"] == "d"
        assert info["Config"]["User"] == "1234:1234"
        assert info["HostConfig"]["NetworkMode"] == "none"
        mounts = {m["Destination"]: m for m in info["Mounts"]}
        assert mounts["/orch/run"]["RW"] and not mounts["/orch/cache"]["RW"]
        assert not mounts["/orch/data"]["RW"]
        assert mounts["/orch/data"]["Source"] == str(titles_csv.parent)
        assert f"data.path=\"/orch/data/{titles_csv.name}\"" in info["Config"]["Cmd"]
        # The key is nowhere in what `docker inspect` shows: not in env, command or labels.
        assert FAKE_KEY not in json.dumps(info)
        env = dict(e.split("=", 1) for e in info["Config"]["Env"])
        assert "WANDB_API_KEY" not in env
        if "tracking.mode=\"offline\"" in info["Config"]["Cmd"]:  # W&B on: the key as a file
            assert env["WANDB_API_KEY_FILE"] == "/orch/secrets/wandb_api_key"
            assert not mounts["/orch/secrets/wandb_api_key"]["RW"]
        else:
            assert "/orch/secrets/wandb_api_key" not in mounts

    for t in trials.values():
        run_dir = Path(t.run_dir)
        for name in ("events.jsonl", "result.json"):  # written in the container, owned by its uid
            assert (run_dir / name).stat().st_uid == 1234
        for path in run_dir.rglob("*"):  # trial.log holds the container's output: no key there
            if path.is_file():
                assert FAKE_KEY.encode() not in path.read_bytes(), path
    offline = next(t for t in trials.values() if t.params["tracking.mode"] == "offline")
    assert any(Path(offline.run_dir, "wandb").glob("offline-run-*"))
    assert FAKE_KEY not in output


@pytest.mark.parametrize("how", ["ctrl-c", "orch stop"])
def test_ctrl_c_and_orch_stop_remove_exactly_the_sweeps_containers(
        how: str, home: Path, tmp_path: Path, titles_csv: Path, deps_image: str,
        docker_client: Any, shared_cache: Path) -> None:  # noqa: F811
    spec = _spec(tmp_path / "s.yaml", deps_image, titles_csv,
                 overrides={"data.path": str(titles_csv), "train.epochs": SLOW})
    # Another sweep's container (same name, another ORCH_HOME) must survive this one's stop.
    bystander = docker_client.containers.run(
        deps_image, ["sleep", "120"], detach=True, network_mode="none",
        labels={"orch.sweep": "d", "orch.home": str(tmp_path / "elsewhere")})
    proc = start_orch(["sweep", str(spec)], _env(home, shared_cache))
    try:
        wait_for(lambda: _training(home, [1, 2]), timeout=120, what="two trials training")
        assert len(_containers(docker_client, home)) == 2
        sent = time.time()
        if how == "ctrl-c":
            proc.send_signal(signal.SIGINT)
        else:
            assert run_orch(["stop", "d"], _env(home, shared_cache)).returncode == 0
        code = proc.wait(timeout=30)
        elapsed = time.time() - sent
        bystander.reload()
        assert bystander.status == "running"
    finally:
        bystander.remove(force=True)
        if proc.poll() is None:
            proc.kill()
    assert code == 130, proc.stdout.read() if proc.stdout else ""
    assert _containers(docker_client, home) == []
    assert elapsed <= 10, f"stopping took {elapsed:.1f} s"
    trials = _trials(home)
    assert [t.state for t in trials.values()] == ["stopped", "stopped"]
    for t in trials.values():  # default user: the invoking one owns what the container wrote
        assert (Path(t.run_dir) / "events.jsonl").stat().st_uid == os.getuid()


def test_timeout_stops_the_container(home: Path, tmp_path: Path, titles_csv: Path,
                                     deps_image: str, docker_client: Any,  # noqa: F811
                                     shared_cache: Path) -> None:  # noqa: F811
    spec = _spec(tmp_path / "s.yaml", deps_image, titles_csv,
                 parameters={"train.seed": {"values": [1]}},
                 overrides={"data.path": str(titles_csv), "train.epochs": SLOW},
                 resources={"timeout": "8s"})
    proc = run_orch(["sweep", str(spec)], _env(home, shared_cache))
    trial = _trials(home)[1]
    assert trial.state == "timeout", proc.stdout + proc.stderr
    assert trial.step is not None and trial.step > 0  # it did run before the limit
    assert _containers(docker_client, home) == []


def test_resume_after_kill_9_reaps_orphaned_containers(home: Path, tmp_path: Path,
                                                       titles_csv: Path, deps_image: str,
                                                       docker_client: Any,  # noqa: F811
                                                       shared_cache: Path) -> None:  # noqa: F811
    spec = _spec(tmp_path / "s.yaml", deps_image, titles_csv,
                 parameters={"train.epochs": {"values": [1, SLOW]}})
    env = _env(home, shared_cache)
    proc = start_orch(["sweep", str(spec)], env)
    try:
        wait_for(lambda: _trials(home).get(1) and _trials(home)[1].state == "finished"
                 and _training(home, [2]), timeout=120, what="trial 1 done, trial 2 training")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The orphan notices that its orchestrator is gone (its stdin closes) and stops itself;
    # the exited container stays, labelled, for the resume to find.
    orphans = _containers(docker_client, home)
    assert [c.labels["orch.trial"] for c in orphans] == ["2"]

    def orphan_exited() -> bool:
        orphans[0].reload()  # it stays until reaped: nothing else removes it
        return orphans[0].status == "exited"

    wait_for(orphan_exited, timeout=20, what="the orphaned container to stop by itself")
    assert b"the orchestrator is gone" in orphans[0].logs()
    again = start_orch(["sweep", str(spec)], env)
    try:
        def rerun_started() -> bool:
            now = _containers(docker_client, home)
            return bool(now) and orphans[0].id not in {c.id for c in now} \
                and _training(home, [2])

        wait_for(rerun_started, timeout=120, what="the orphan reaped and trial 2 re-run")
        again.send_signal(signal.SIGINT)
        assert again.wait(timeout=30) == 130
    finally:
        if again.poll() is None:
            again.kill()
    output = again.stdout.read() if again.stdout else ""
    assert "ended 1 leftover trial(s) of a dead orchestrator" in output
    assert "trial 2: re-run (left running by a dead orchestrator)" in output
    trials = _trials(home)
    assert trials[1].state == "finished" and trials[1].attempts == 1  # never re-run
    assert _containers(docker_client, home) == []


def test_gpu_requested_without_nvidia_runtime_is_one_clear_line(
        home: Path, tmp_path: Path, titles_csv: Path, deps_image: str,
        docker_client: Any, shared_cache: Path) -> None:  # noqa: F811
    if "nvidia" in (docker_client.info().get("Runtimes") or {}):
        pytest.skip("this engine has the NVIDIA runtime")
    spec = _spec(tmp_path / "s.yaml", deps_image, titles_csv, resources={"gpus": [0]})
    proc = run_orch(["sweep", str(spec)], _env(home, shared_cache))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = message_lines(proc.stderr)
    assert len(lines) == 1 and "GPU(s) 0 requested" in lines[0], proc.stderr
    assert "NVIDIA Container Toolkit" in lines[0]
    assert Ledger(home).sweep("d") is None  # nothing launched, nothing recorded
    assert _containers(docker_client, home) == []


def test_unreachable_engine_is_one_clear_line(tmp_path: Path, titles_csv: Path) -> None:
    """Needs no engine: DOCKER_HOST points at a socket that does not exist."""
    home = tmp_path / "orch-home"
    spec = _spec(tmp_path / "s.yaml", "unused", titles_csv)
    sock = f"unix://{tmp_path}/no-docker.sock"
    proc = run_orch(["sweep", str(spec)], orch_env(home, DOCKER_HOST=sock))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = message_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert f"cannot reach the Docker engine at {sock}" in lines[0]
    assert "DOCKER_HOST" in lines[0] and "start" in lines[0]
    assert not (home / "runs").exists() and Ledger(home).sweep("d") is None


def test_build_streams_then_reuses_an_unchanged_context(tmp_path: Path, deps_image: str,
                                                        docker_client: Any) -> None:  # noqa: F811
    # A snapshot of the context, so that edits to the repository meanwhile do not matter.
    ctx = tmp_path / "ctx"
    shutil.copytree(REPO / "trainer", ctx / "trainer",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Dockerfile", ".dockerignore"):
        shutil.copy(REPO / name, ctx / name)
    (ctx / "trainer" / "snapshot.txt").write_text(str(tmp_path))  # a context new to the engine
    args = ["build", "--context", str(ctx), "--base-image", deps_image, "--network", "none"]
    first = run_orch(args, orch_env(tmp_path / "h"), timeout=600)
    assert first.returncode == 0, first.stderr
    tag = first.stdout.strip()
    assert tag == default_tag(ctx, deps_image) and tag.startswith("orch-trainer:")
    assert "Step 1/" in first.stderr  # the build log, shown as it ran
    second = run_orch(args, orch_env(tmp_path / "h"))
    assert second.returncode == 0 and second.stdout.strip() == tag
    assert "up to date" in second.stderr and "Step 1/" not in second.stderr
    docker_client.images.remove(tag)
    # Runs, caches, the venv and the orchestrator are not in the context: the hash stays...
    before = context_hash(ctx, {"BASE_IMAGE": deps_image})
    for junk in (".orch/ledger.sqlite", "runs/x/trial.log", ".venv/x.py", "orchestrator/y.py",
                 ".git/HEAD", "wandb/run/x", "trainer/__pycache__/x.pyc"):
        (ctx / junk).parent.mkdir(parents=True, exist_ok=True)
        (ctx / junk).write_text("x")
    assert context_hash(ctx, {"BASE_IMAGE": deps_image}) == before
    # ... while the trainer's source and the base image change it.
    (ctx / "trainer" / "model.py").write_text("# changed\n", encoding="utf-8")
    assert context_hash(ctx, {"BASE_IMAGE": deps_image}) != before
    assert context_hash(ctx, {"BASE_IMAGE": "other"}) != context_hash(ctx, {})


def test_a_pinned_image_is_used_as_it_is(home: Path, tmp_path: Path, titles_csv: Path,
                                         deps_image: str, docker_client: Any,  # noqa: F811
                                         shared_cache: Path) -> None:
    """`launcher.image: TAG` names an image `orch build --base-image X --tag TAG` made: the
    sweep runs its trials in it, without building it again from the Dockerfile's default base
    (a build that, with no network and no CUDA base here, would fail)."""
    tag = f"orch-test/pinned:{uuid.uuid4().hex[:12]}"  # new to the engine
    built = run_orch(["build", "--base-image", deps_image, "--network", "none", "--tag", tag],
                     orch_env(tmp_path / "h"), timeout=600)
    assert built.returncode == 0 and built.stdout.strip() == tag, built.stderr
    image_id = docker_client.images.get(tag).id
    try:
        spec = _spec(tmp_path / "s.yaml", deps_image, titles_csv)
        text = yaml.safe_load(spec.read_text())
        text["launcher"] = {"type": "docker", "image": tag}  # no base image, network: default
        spec.write_text(yaml.safe_dump(text))
        since = int(time.time()) - 1
        proc = run_orch(["sweep", str(spec)], _env(home, shared_cache), timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "building image" not in proc.stderr and "Step 1/" not in proc.stderr
        assert docker_client.images.get(tag).id == image_id  # not rebuilt, not retagged
        assert [t.state for t in _trials(home).values()] == ["finished", "finished"]
        created = docker_client.events(since=since, until=int(time.time()) + 1, decode=True,
                                       filters={"type": "container", "event": "create",
                                                "label": f"orch.home={home}"})
        images = [e["Actor"]["Attributes"]["image"] for e in created]
        assert images and set(images) == {tag}, images  # every container ran the pinned image
    finally:
        docker_client.images.remove(tag)


def test_a_missing_pinned_image_is_one_line_naming_orch_build(
        home: Path, tmp_path: Path, titles_csv: Path, deps_image: str,
        docker_client: Any, shared_cache: Path) -> None:  # noqa: F811
    tag = f"orch-test/absent:{uuid.uuid4().hex[:12]}"  # on no engine
    spec = _spec(tmp_path / "s.yaml", deps_image, titles_csv, launcher={"image": tag})
    proc = run_orch(["sweep", str(spec)], _env(home, shared_cache))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = message_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert f"image {tag} (launcher.image) is not on the engine" in lines[0]
    assert f"`orch build --tag {tag}`" in lines[0]
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(tag)  # nothing built in its name
    assert not (home / "runs").exists() and Ledger(home).sweep("d") is None
    assert _containers(docker_client, home) == []
