"""`orch agent` with the Docker launcher on a real engine (no SDK mocks): one container of the
trainer image per slot, with a stand-in `wandb` first on the container's PATH (the spec's
launcher.volumes and launcher.env put it there) that records what it was given and blocks.

Locally these skip with a reason when no engine answers; in CI (CI=true) they fail instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from docker_fixtures import base_image, deps_image, docker_client, trainer_image  # noqa: F401
from orch_helpers import BASE_TINY, orch_env, run_orch, wait_for

from orchestrator.wandb import backend as wandb_backend
from orchestrator.ledger import Ledger
from orchestrator.spec.plan import build_plan
from orchestrator.wandb.cloud import SweepRef

FAKE_KEY = "fakekey-0123456789abcdef0123456789abcdef01234567"
SWEEP = "ent/mainrun/abc123"

# The container's `wandb`: records argv, environment, working dir and what it can read and
# write, then waits for ORCH_HOME/runs/release (SIGTERM ends it at once).
FAKE_WANDB = """#!/usr/bin/env python
import hashlib, json, netrc, os, sys, time
runs = os.path.join(os.environ["ORCH_HOME"], "runs")
entry = netrc.netrc().authenticators("api.wandb.ai")  # ~/.netrc: owner and 0600 checked
try:
    open("written-here", "w").close()
    repo_writable = True
except OSError:
    repo_writable = False
record = {"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd(),
          "repo": sorted(os.listdir(".")), "repo_writable": repo_writable,
          "uid": f"{os.getuid()}:{os.getgid()}",
          "key_sha": hashlib.sha256(entry[2].encode()).hexdigest() if entry else None,
          "id": os.urandom(6).hex()}
# Written whole, then renamed: the test polls for these files and must never read half of one.
path = os.path.join(runs, f"fake-{record['id']}.json")
with open(path + ".tmp", "w") as fh:
    json.dump(record, fh)
os.replace(path + ".tmp", path)
print("2026-01-01 00:00:00,000 - wandb.wandb_agent - INFO - About to run command: x", flush=True)
while not os.path.exists(os.path.join(runs, "release")):
    time.sleep(0.1)
"""


@pytest.fixture
def sweep(tmp_path: Path, trainer_image: str, docker_client: Any) -> dict[str, Any]:  # noqa: F811
    """A W&B sweep recorded in the ledger (created through a stand-in for wandb.sweep) whose
    spec says launcher docker, a checkout dir to run `orch agent` in, and its environment."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "wandb").write_text(FAKE_WANDB)
    (fake / "wandb").chmod(0o755)
    image_env = dict(e.split("=", 1) for e in
                     docker_client.images.get(trainer_image).attrs["Config"]["Env"] or [])
    path = image_env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    spec = {"name": "wb", "base": str(BASE_TINY), "method": "grid",
            "metric": {"name": "val_loss", "goal": "minimize"},
            "parameters": {"optim.lr": {"values": [0.001, 0.003]}},
            "tracking": {"backend": "wandb", "wandb": {"project": "mainrun"}},
            "resources": {"gpus": None, "cpu_slots": 2, "kill_grace": "3s"},
            "launcher": {"type": "docker", "image": trainer_image, "build": False,
                         "volumes": ["fakebin:/orch/fake:ro"],
                         "env": {"PATH": f"/orch/fake:{path}"}}}
    spec_path = tmp_path / "wb.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    home = tmp_path / "home"
    plan = build_plan(spec_path, [], None)
    plan.close()
    wandb_backend.create(plan, Ledger(home), lambda _m: None, tmp_path,
                         lambda _c, project, _e: SweepRef("ent", project, "abc123"))
    checkout = tmp_path / "checkout"
    (checkout / "configs").mkdir(parents=True)
    (checkout / "configs" / "base.yaml").write_text("{}\n")
    env = orch_env(home, WANDB_API_KEY=FAKE_KEY, ORCH_CACHE_DIR=str(tmp_path / "cache"))
    return {"home": home, "checkout": checkout, "env": env}


def _agents(client: Any, home: Path) -> list[Any]:
    return client.containers.list(all=True, ignore_removed=True, filters={
        "label": [f"orch.agent={SWEEP}", f"orch.home={home}"]})


def _records(home: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((home / "runs").glob("fake-*.json"))]


def _started(proc: subprocess.Popen[str], home: Path) -> bool:
    """Both agents have recorded what they were given (an `orch` that ended early fails)."""
    if proc.poll() is not None:
        raise AssertionError(f"orch agent exited {proc.returncode}:\n{proc.communicate()[0]}")
    return len(_records(home)) == 2


def _start(args: list[str], sweep: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], env=sweep["env"],
                            cwd=sweep["checkout"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_agents_run_in_containers_pinned_and_keyless(sweep: dict[str, Any],
                                                     docker_client: Any) -> None:  # noqa: F811
    home = sweep["home"]
    proc = _start(["agent", "wb", "--gpus", "none", "--cpu-slots", "2", "--count", "2"], sweep)
    try:
        wait_for(lambda: _started(proc, home), timeout=120, what="two agent containers")
        containers = _agents(docker_client, home)
        assert len(containers) == 2
        secrets = set()
        for c in containers:
            info = docker_client.api.inspect_container(c.id)
            labels = info["Config"]["Labels"]
            assert (labels["orch.agent"], labels["orch.sweep"], labels["orch.role"]) == \
                (SWEEP, "wb", "agent")
            assert info["HostConfig"]["NetworkMode"] == "host"
            assert not info["HostConfig"].get("DeviceRequests")  # CPU slots: no GPU
            assert info["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
            assert info["Config"]["WorkingDir"] == "/orch/repo"
            env = dict(e.split("=", 1) for e in info["Config"]["Env"])
            assert "WANDB_API_KEY" not in env and env["ORCH_HOME"] == "/orch/home"
            mounts = {m["Destination"]: m for m in info["Mounts"]}
            assert not mounts["/tmp/.netrc"]["RW"] and not mounts["/orch/repo"]["RW"]
            assert mounts["/orch/home/runs"]["RW"] and mounts["/orch/cache"]["RW"]
            assert Path(mounts["/orch/repo"]["Source"]) == sweep["checkout"].resolve()
            secrets.add(Path(mounts["/tmp/.netrc"]["Source"]))
            assert FAKE_KEY not in json.dumps(info)
        assert len(secrets) == 1 and oct((next(iter(secrets))).stat().st_mode & 0o777) == "0o600"
        Path(home / "runs" / "release").touch()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    records = _records(home)
    assert sorted(r["argv"] for r in records) == [
        ["agent", "--forward-signals", "--count", "1", SWEEP]] * 2
    for r in records:
        assert r["key_sha"] == hashlib.sha256(FAKE_KEY.encode()).hexdigest()  # via ~/.netrc
        assert "WANDB_API_KEY" not in r["env"] and r["env"]["HOME"] == "/tmp"
        assert r["cwd"] == "/orch/repo" and r["repo"] == ["configs"] and not r["repo_writable"]
        assert r["uid"] == f"{os.getuid()}:{os.getgid()}"
        assert r["env"]["WANDB_DIR"] == "/orch/agent"
    assert "About to run command" in out and "agent 1 ended (exit 0)" in out
    assert _agents(docker_client, home) == []
    assert not any(p.exists() for p in secrets)  # the key's netrc copy is gone too
    assert FAKE_KEY not in out
    for path in home.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path


def test_ctrl_c_orch_stop_and_a_later_agent_remove_exactly_the_agents(
        sweep: dict[str, Any], trainer_image: str, docker_client: Any) -> None:  # noqa: F811
    home = sweep["home"]

    def stray(where: Path) -> Any:
        return docker_client.containers.run(
            trainer_image, ["sleep", "120"], detach=True, network_mode="none",
            labels={"orch.agent": SWEEP, "orch.sweep": "wb", "orch.home": str(where)})

    bystander = stray(home.parent / "elsewhere")  # the same sweep under another ORCH_HOME
    try:
        stray(home)
        proc = run_orch(["stop", "wb"], sweep["env"])  # no `orch agent` watches it
        assert proc.returncode == 0 and "removed 1 container" in proc.stdout, proc.stdout
        stray(home)  # left by an earlier `orch agent` killed before it could remove it
        live = _start(["agent", SWEEP, "--launcher", "docker", "--gpus", "none",
                       "--cpu-slots", "2"], sweep)
        try:
            wait_for(lambda: _started(live, home), timeout=120, what="two agents")
            assert len(_agents(docker_client, home)) == 2
            live.send_signal(signal.SIGINT)
            out, _ = live.communicate(timeout=60)
        finally:
            if live.poll() is None:
                live.kill()
        assert live.returncode == 130, out
        assert "ended 1 agent(s) left by an earlier `orch agent`" in out
        assert _agents(docker_client, home) == []
        bystander.reload()
        assert bystander.status == "running"
    finally:
        bystander.remove(force=True)
