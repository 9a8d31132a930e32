"""The trainer image: reaching the Docker engine, building the repository's Dockerfile, and
checking for an image the spec pins.

The default tag is `orch-trainer:<hash>`, where the hash covers every file the build context
sends (after `.dockerignore`) plus the build arguments. An unchanged tree therefore names an image
that already exists, and `ensure_image` returns at once instead of asking the engine to build.
An image the spec names (`launcher.image`) is used as it is, never built.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any, Callable

from orchestrator.launch.protocol import LauncherError

REPO_NAME = "orch-trainer"
FIX_ENGINE = ("start it (`sudo systemctl start docker`; without systemd, `bash "
              "../shared/docker/start-docker.sh`) or point DOCKER_HOST at a running engine")


def engine_address() -> str:
    """Where the SDK will look for the engine: DOCKER_HOST, else the default socket."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def connect(timeout: float = 120) -> Any:
    """A `docker.DockerClient` that answered a ping; LauncherError (one line) when none does."""
    try:
        import docker
        import docker.errors
    except ImportError:
        raise LauncherError("the Docker SDK for Python is missing: `pip install 'docker>=7'`") \
            from None
    where = engine_address()
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except docker.errors.DockerException as err:
        reason = _short(err)
        raise LauncherError(f"cannot reach the Docker engine at {where} ({reason}); "
                            f"{FIX_ENGINE}") from None
    return client


def _short(err: BaseException) -> str:
    """The innermost reason of a connection error, without urllib3's nesting."""
    text = str(err)
    for needle in ("No such file or directory", "Connection refused", "Permission denied",
                   "timed out", "Name or service not known"):
        if needle in text:
            return needle.lower()
    return text.splitlines()[0][:160] if text else type(err).__name__


def default_context() -> Path:
    """The repository orch runs from (editable install), else the current directory."""
    repo = Path(__file__).resolve().parents[1]
    return repo if (repo / "Dockerfile").is_file() else Path.cwd()


def context_files(context: Path, dockerfile: str = "Dockerfile") -> list[str]:
    """The files a build of `context` sends, as the SDK decides it (`.dockerignore` honoured)."""
    from docker.utils.build import exclude_paths

    ignore = context / ".dockerignore"
    patterns: list[str] = []
    if ignore.is_file():
        patterns = [line.strip() for line in ignore.read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    files = exclude_paths(str(context), patterns, dockerfile=dockerfile)
    return sorted(f for f in files if (context / f).is_file() and not (context / f).is_symlink())


def context_hash(context: Path, buildargs: dict[str, str]) -> str:
    """A hash of the context's files (names, contents, the executable bit) and the build args."""
    digest = hashlib.sha256()
    for rel in context_files(context):
        path = context / rel
        digest.update(rel.encode() + b"\0")
        digest.update(b"x" if path.stat().st_mode & stat.S_IXUSR else b"-")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for key in sorted(buildargs):
        digest.update(f"\0{key}={buildargs[key]}".encode())
    return digest.hexdigest()[:16]


def default_tag(context: Path, base_image: str | None) -> str:
    """`orch-trainer:<hash>` for this context and base image."""
    return f"{REPO_NAME}:{context_hash(context, _buildargs(base_image))}"


def _buildargs(base_image: str | None) -> dict[str, str]:
    return {"BASE_IMAGE": base_image} if base_image else {}


def ensure_image(client: Any, *, context: Path | None = None, tag: str | None = None,
                 base_image: str | None = None, network: str | None = None,
                 build: bool = True, echo: Callable[[str], None] = print) -> tuple[str, bool]:
    """(tag, built): reuse the image when the engine has it, else build it with a live log.

    The default tag is derived from the context, so an existing one is reused; an explicit tag
    is rebuilt. With `build` false a missing image is an error instead of a build.
    """
    import docker.errors

    context = (context or default_context()).resolve()
    if build and not (context / "Dockerfile").is_file():
        raise LauncherError(f"no Dockerfile in {context}; set launcher.context (or --context) to "
                            "the repository holding the trainer's Dockerfile")
    derived = tag is None
    tag = tag or default_tag(context, base_image)
    # A derived tag names its content, so it existing means it is current; a tag the user
    # chose may name an older tree, so it is rebuilt (the engine's layer cache makes that quick).
    if derived or not build:
        try:
            client.images.get(tag)
            return tag, False
        except docker.errors.ImageNotFound:
            if not build:
                raise LauncherError(f"image {tag} is not on the engine at {engine_address()}; "
                                    "build it with `orch build` or set launcher.build: true") \
                    from None
        except docker.errors.APIError as err:
            raise LauncherError(f"the Docker engine failed to look up image {tag}: "
                                f"{err.explanation or err}") from None
    echo(f"building image {tag} from {context}"
         + (f" on {base_image}" if base_image else ""))
    build_image(client, context, tag, base_image, network, echo)
    return tag, True


def pinned_image(client: Any, tag: str) -> str:
    """The image `launcher.image` pins, used as it is (never built: it may come from another
    base or a registry); LauncherError (one line, how to build it) when the engine lacks it."""
    import docker.errors

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        raise LauncherError(f"image {tag} (launcher.image) is not on the engine at "
                            f"{engine_address()}; build it with `orch build --tag {tag}` (and "
                            "--base-image for another base), or drop launcher.image to build "
                            "the repository's Dockerfile") from None
    except docker.errors.APIError as err:
        raise LauncherError(f"the Docker engine failed to look up image {tag}: "
                            f"{err.explanation or err}") from None
    return tag


def build_image(client: Any, context: Path, tag: str, base_image: str | None,
                network: str | None, echo: Callable[[str], None]) -> None:
    """Build through the low-level API so that every log line is shown as it arrives."""
    import docker.errors

    label = {"orch.context": context_hash(context, _buildargs(base_image))}
    try:
        stream = client.api.build(path=str(context), tag=tag, buildargs=_buildargs(base_image),
                                  network_mode=network, labels=label, rm=True, forcerm=True,
                                  decode=True)
        for chunk in stream:
            if "error" in chunk:
                detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                raise LauncherError(f"building {tag} failed: {detail.strip()}")
            text = chunk.get("stream") or chunk.get("status")
            if text and text.strip():
                echo(text.rstrip("\n"))
    except docker.errors.APIError as err:
        raise LauncherError(f"building {tag} failed: {err.explanation or err}") from None
    except KeyboardInterrupt:
        # The engine cancels a build whose client went away; nothing is tagged.
        raise LauncherError(f"build of {tag} interrupted") from None
