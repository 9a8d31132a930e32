"""What a container costs per trial, and what an image build costs warm and cold.

    .venv/bin/python benchmarks/docker_overhead.py [--base-image IMG] [--trials 9] [--repeat 2]

Per-trial overhead: the same trivial contract program (writes one validation event and
result.json, then exits) runs as a sweep of N trials on one slot under `launcher: local` and
`launcher: docker`; the ledger's start times give the cycle from one trial's start to the next
(create, start, run, stop, remove for a container), without the sweep's fixed costs. Goal: the
docker launcher adds at most 1.5 s per trial.

Image build: `orch build` semantics through `ensure_image` on the repository's Dockerfile:
warm (context unchanged: a hash and a lookup), a one-file source change (the dependency layer is
reused), and cold (no layer cache). The base defaults to the test suite's offline deps image
(orch-test/trainer-deps:*, made by tests/docker_fixtures.py); pass --base-image otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from trivial_sweep import trivial_spec  # benchmarks/ is on sys.path when run

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROGRAM = '''\
"""A trivial contract program: schema/validate from the real trainer, a run in milliseconds."""
import json, os, sys, time
from pathlib import Path
argv = sys.argv[1:]
if argv[:1] in (["schema"], ["validate"]):
    sys.path.insert(0, REPO)
    from trainer.__main__ import main
    sys.exit(main(argv))
if argv[:1] == ["prepare"]:
    sys.exit(0)
out = Path(argv[argv.index("--out") + 1])
out.mkdir(parents=True, exist_ok=True)
m = {"val_loss": 1.0, "val_loss_tok": 4.0, "val_bpb": 1.4, "val_coverage": 0.9}
with open(out / "events.jsonl", "a") as f:
    f.write(json.dumps({"event": "validation_step", "step": 1, "max_steps": 1, **m}) + "\\n")
(out / "result.json").write_text(json.dumps({"status": "finished", "final": m, "best": m}))
'''


def cycle_seconds(workdir: Path, launcher: dict, trials: int, base_image: str | None) -> float:
    """Seconds from one trial's start to the next's in a one-slot sweep of trivial trials.

    One cycle is a whole trial as the orchestrator pays for it: start, run, reap, ledger, the
    search's next suggestion. The sweep's fixed costs (spec checks, image lookup, the data-cache
    step) fall outside, so a sweep of a few trials measures it without their noise.
    """
    from orchestrator.ledger import Ledger

    home = Path(tempfile.mkdtemp(prefix="orch-bench-home-", dir=workdir))
    prog = workdir / "trial.py"
    spec = trivial_spec(prog, trials, launcher)
    if launcher.get("type") == "docker":
        # The program sits at the same path inside, so one `program` serves host and container.
        spec["launcher"] = {**launcher, "volumes": [f"{workdir}:{workdir}:ro"],
                            "base_image": base_image, "build_network": "none"}
    path = home / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "ORCH_HOME": str(home), "COLUMNS": "160"}
    env.pop("ORCH_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(path)], env=env,
                          capture_output=True, text=True, cwd=REPO)
    done = Ledger(home).trials("bench")
    if proc.returncode != 0 or [t.state for t in done] != ["finished"] * trials:
        raise SystemExit(f"sweep failed ({launcher}):\n{proc.stdout}\n{proc.stderr}")
    starts = sorted(t.started_at or 0.0 for t in done)
    shutil.rmtree(home, ignore_errors=True)
    return (starts[-1] - starts[0]) / (trials - 1)


def per_trial(workdir: Path, launcher: dict, n: int, repeat: int,
              base_image: str | None) -> tuple[float, list[float]]:
    """(median, all) seconds per trial cycle over `repeat` sweeps of n trials."""
    cycles = [cycle_seconds(workdir, launcher, n, base_image) for _ in range(repeat)]
    return statistics.median(cycles), cycles


def build_figures(base_image: str) -> dict[str, float]:
    """Seconds for a warm (unchanged), a one-file-change and a cold (no cache) build."""
    import docker

    from orchestrator.launch.docker.image import ensure_image

    client = docker.from_env(timeout=600)
    quiet = lambda _line: None  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="orch-bench-ctx-") as tmp:
        ctx = Path(tmp)
        shutil.copytree(REPO / "trainer", ctx / "trainer",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("Dockerfile", ".dockerignore"):
            shutil.copy(REPO / name, ctx / name)
        (ctx / "trainer" / "bench.txt").write_text(tmp)
        def timed_ensure() -> tuple[str, bool, float]:
            t = time.perf_counter()
            tag, built = ensure_image(client, context=ctx, base_image=base_image,
                                      network="none", echo=quiet)
            return tag, built, time.perf_counter() - t

        first_tag, built, first = timed_ensure()
        _, rebuilt, warm = timed_ensure()
        assert built and not rebuilt
        (ctx / "trainer" / "bench.txt").write_text(tmp + " changed")
        changed_tag, _, changed = timed_ensure()
        tags = [first_tag, changed_tag]
        t = time.perf_counter()
        for chunk in client.api.build(path=str(ctx), tag="orch-bench:cold", nocache=True, rm=True,
                                      buildargs={"BASE_IMAGE": base_image}, network_mode="none",
                                      decode=True):
            if "error" in chunk:
                raise SystemExit(chunk["error"])
        cold = time.perf_counter() - t
        tags.append("orch-bench:cold")
        for tag in tags:
            client.images.remove(tag, noprune=False)
    return {"first build (deps layer cached)": first, "warm: unchanged context": warm,
            "one source file changed": changed, "cold: no layer cache": cold}


def default_base() -> str | None:
    """The newest offline deps image the Docker tests built, if any."""
    out = subprocess.run(["docker", "images", "orch-test/trainer-deps", "--format",
                          "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True)
    return (out.stdout.split() or [None])[0]


def main() -> None:
    """Measure and print the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-image", default=None)
    p.add_argument("--trials", type=int, default=9)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    base = args.base_image or default_base()
    if not base:
        raise SystemExit("no base image: run tests/test_docker.py once, or pass --base-image")
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "trial.py").write_text(PROGRAM.replace("REPO", json.dumps(str(REPO))))
        local, lall = per_trial(workdir, {"type": "local"}, args.trials, args.repeat, None)
        dock, dall = per_trial(workdir, {"type": "docker"}, args.trials, args.repeat, base)
    print(f"seconds per trial (start to next start), trivial program, 1 slot, sweeps of "
          f"{args.trials}, median of {args.repeat}:")
    print(f"  local : {local:6.3f}   (runs: {', '.join(f'{x:.3f}' for x in lall)})")
    print(f"  docker: {dock:6.3f}   (runs: {', '.join(f'{x:.3f}' for x in dall)})")
    print(f"  docker extra: {dock - local:+.3f} s per trial (goal <= 1.5 s); "
          f"ratio docker/local {dock / local:.1f}x")
    print(f"image build on {base}:")
    for name, secs in build_figures(base).items():
        print(f"  {name:34s} {secs:7.2f} s")


if __name__ == "__main__":
    main()
