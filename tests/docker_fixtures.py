"""Fixtures for the Docker tests: a reachable engine, and the trainer image built without a registry.

There is no container registry here, so images start FROM the registry-free Debian + Python base
that ../shared/docker/make-base-image.sh imports. The trainer's dependencies are downloaded on the
host (torch's CPU wheel comes from this machine's disk) into a build context, and installed by a
build with no network. The real Dockerfile then builds on top of that, finding everything already
installed. Images are tagged by what went into them, so later sessions reuse them.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
from orch_helpers import unavailable

REPO = Path(__file__).resolve().parents[1]
SHARED_DOCKER = Path(__file__).resolve().parents[2] / "shared" / "docker"
BASE = "orch-local/python:3.11"
TORCH = "torch==2.13.0"  # the CPU wheel on this machine's disk; a bare `torch` pulls CUDA builds

DEPS_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
COPY wheels /tmp/wheels
RUN python3 -m pip install --no-index --find-links /tmp/wheels {reqs} && rm -rf /tmp/wheels
"""


def trainer_requirements() -> list[str]:
    """The Dockerfile's TRAINER_REQUIREMENTS, torch pinned to the local CPU wheel, numpy < 2."""
    text = (REPO / "Dockerfile").read_text()
    found = re.search(r'ARG TRAINER_REQUIREMENTS="([^"]+)"', text)
    assert found, "the Dockerfile lost its TRAINER_REQUIREMENTS argument"
    reqs = []
    for req in found.group(1).split():
        name = re.split(r"[<>=!~ ]", req, maxsplit=1)[0]
        reqs.append(TORCH if name == "torch" else "numpy<2" if name == "numpy" else req)
    return reqs


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A Docker SDK client whose engine answered a ping."""
    import docker

    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except docker.errors.DockerException as err:
        unavailable(f"no Docker engine reachable at {where} ({str(err)[:120]}); start one with "
                    f"bash {SHARED_DOCKER / 'start-docker.sh'}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: Any) -> str:
    """The registry-free Debian + Python base, imported by make-base-image.sh when missing."""
    import docker

    try:
        docker_client.images.get(BASE)
        return BASE
    except docker.errors.ImageNotFound:
        pass
    script = SHARED_DOCKER / "make-base-image.sh"
    if not script.is_file():
        unavailable(f"{BASE} is missing and {script} is not there to make it")
    proc = subprocess.run(["bash", str(script), BASE], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-3000:]}"
    return BASE


def _build(client: Any, path: Path, tag: str, buildargs: dict[str, str]) -> None:
    log = []
    for chunk in client.api.build(path=str(path), tag=tag, buildargs=buildargs,
                                  network_mode="none", rm=True, forcerm=True, decode=True):
        if "error" in chunk:
            raise AssertionError(f"building {tag} failed: {chunk['error']}\n" + "".join(log))
        log.append(chunk.get("stream") or "")


@pytest.fixture(scope="session")
def deps_image(docker_client: Any, base_image: str) -> str:
    """The base plus the trainer's dependencies, installed offline from host-downloaded wheels."""
    import docker

    reqs = trainer_requirements()
    base_id = docker_client.images.get(base_image).id
    key = hashlib.sha256(f"{base_id} {' '.join(reqs)}".encode()).hexdigest()[:12]
    tag = f"orch-test/trainer-deps:{key}"
    try:
        docker_client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    with tempfile.TemporaryDirectory(prefix="orch-deps-") as ctx:
        wheels = Path(ctx) / "wheels"
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels),
                               "--only-binary=:all:", "--python-version", "3.11", *reqs],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"pip download failed:\n{proc.stderr[-3000:]}"
        quoted = " ".join(f"'{r}'" for r in reqs)
        (Path(ctx) / "Dockerfile").write_text(DEPS_DOCKERFILE.replace("{reqs}", quoted))
        _build(docker_client, Path(ctx), tag, {"BASE": base_image})
    return tag


@pytest.fixture(scope="session")
def trainer_image(docker_client: Any, deps_image: str) -> str:
    """The repository's Dockerfile built on the deps image, with no network (tag by context)."""
    from orchestrator.launch.docker.image import ensure_image

    tag, _ = ensure_image(docker_client, context=REPO, base_image=deps_image, network="none",
                          echo=lambda _line: None)
    return tag


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data cache for every Docker test: the first sweep fills it, later ones hit it."""
    return tmp_path_factory.mktemp("orch-cache")
