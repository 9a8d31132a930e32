"""The GitHub workflows: actionlint passes on both, and they keep their structural promises.

A broken workflow fails here, not on GitHub. actionlint comes from the `dev` extra (a PyPI
wheel that ships the binary); it runs shellcheck on the `run:` scripts too where shellcheck is
installed (GitHub's Ubuntu runners have it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
SWEEP = WORKFLOWS / "sweep.yml"
GPU_LABELS = ["self-hosted", "linux", "x64", "gpu"]
# `gpu` is our own runner label: actionlint is told so by the repository's config file.
ACTIONLINT_CONFIG = ROOT / ".github" / "actionlint.yaml"


def actionlint_bin() -> str:
    """The actionlint installed beside this Python (the venv), else the one on PATH."""
    here = Path(sys.executable).parent / "actionlint"
    found = str(here) if here.exists() else shutil.which("actionlint")
    if found is None:
        pytest.fail("actionlint is not installed: pip install -e '.[dev]'")
    return found


def actionlint(*files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([actionlint_bin(), "-no-color", "-config-file", str(ACTIONLINT_CONFIG),
                           *map(str, files)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def load(path: Path) -> dict:
    # PyYAML reads the key `on` as True (YAML 1.1); put it back under its name.
    doc = yaml.safe_load(path.read_text())
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def steps(doc: dict) -> list[dict]:
    return [s for job in doc["jobs"].values() for s in job.get("steps", [])]


def walk(node, path=()):
    """Every (path, key, value) in a YAML tree; path is the keys and indexes above it."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, k, v
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield path, i, v
            yield from walk(v, path + (i,))


# --- lint ---------------------------------------------------------------------------------


def test_actionlint_passes_on_both_workflows(tmp_path):
    proc = actionlint(CI, SWEEP)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_fails_on_a_broken_workflow(tmp_path):
    """The lint test can fail: an unknown key, a bad expression and a missing runs-on."""
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(SWEEP.read_text()
                      .replace("timeout-minutes:", "timeout-minute:", 1)
                      .replace("${{ inputs.spec ||", "${{ inputs.no_such_input ||", 1))
    proc = actionlint(broken)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "timeout-minute" in proc.stdout
    assert "no_such_input" in proc.stdout

    missing = tmp_path / ".github" / "workflows" / "missing.yml"
    missing.write_text("on: push\njobs:\n  x:\n    steps:\n      - run: true\n")
    proc = actionlint(missing)
    assert proc.returncode == 1 and "runs-on" in proc.stdout, proc.stdout + proc.stderr


# --- both workflows -----------------------------------------------------------------------


@pytest.mark.parametrize("path", [CI, SWEEP], ids=lambda p: p.name)
def test_least_privilege_permissions(path):
    doc = load(path)
    assert doc["permissions"] == {"contents": "read"}
    for name, job in doc["jobs"].items():
        assert job.get("permissions", {"contents": "read"}) == {"contents": "read"}, name


@pytest.mark.parametrize("path", [CI, SWEEP], ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit(path):
    uses = [s["uses"] for s in steps(load(path)) if "uses" in s]
    assert uses
    for ref in uses:
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), ref
    # The version the SHA stands for is written beside it, for readers and updaters.
    for line in path.read_text().splitlines():
        if re.match(r"\s*(- )?uses:", line):
            assert re.search(r"@[0-9a-f]{40} # v\d", line), line


@pytest.mark.parametrize("path", [CI, SWEEP], ids=lambda p: p.name)
def test_every_job_has_a_timeout(path):
    for name, job in load(path)["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int), name


@pytest.mark.parametrize("path", [CI, SWEEP], ids=lambda p: p.name)
def test_no_host_paths_or_identities(path):
    text = path.read_text()
    # No absolute path of a machine (a home, a mount, a workstation folder): a path that
    # starts a word with "/", outside URLs and comments; /dev/null is no host path. Paths are
    # built from the runner's own variables instead.
    for line in text.splitlines():
        line = re.sub(r"https?://\S+", "", line.split(" #", 1)[0])
        for m in re.finditer(r"(?:^|(?<=[\s'\"=:(\[,]))(/[\w.-]+)+", line):
            assert m.group() == "/dev/null", line
    assert not re.search(r"~/|\$HOME\b|\$\{HOME\}|/home/|/Users/", text)
    # No identities: user names, e-mail addresses, docker run with hand-placed GPUs.
    assert not re.search(r"[\w.+-]+@[\w-]+\.[\w.]+", re.sub(r"@[0-9a-f]{40}", "", text))
    assert "docker run" not in text and "--gpus" not in text
    assert "git reset" not in text


@pytest.mark.parametrize("path", [CI, SWEEP], ids=lambda p: p.name)
def test_wandb_key_only_in_env_blocks_from_secrets(path):
    seen = []
    for where, key, value in walk(load(path)):
        if key == "WANDB_API_KEY":
            assert where and where[-1] == "env", where
            assert isinstance(value, str) and "secrets.WANDB_API_KEY" in value, value
            seen.append(where)
        elif isinstance(value, str) and "WANDB_API_KEY" in value:
            # Only as the value of an env entry named WANDB_API_KEY (handled above).
            assert key == "WANDB_API_KEY", (where, key)
    # No job-level or workflow-level env carries it: only the steps that need it.
    for where in seen:
        assert "steps" in where, where


# --- ci.yml -------------------------------------------------------------------------------


def test_ci_runs_on_push_and_pull_request_on_a_hosted_runner():
    doc = load(CI)
    assert set(doc["on"]) == {"push", "pull_request"}
    (job,) = doc["jobs"].values()
    assert isinstance(job["runs-on"], str) and job["runs-on"].startswith("ubuntu-")


def test_ci_installs_starts_docker_tests_and_uploads_reports():
    doc = load(CI)
    runs = "\n".join(s.get("run", "") for s in steps(doc))
    assert "python3 -m venv .venv" in runs
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in runs
    assert "-e '.[dev]'" in runs
    assert "docker version" in runs
    assert "../shared/data/hacker_news.csv" in runs
    test = next(s for s in steps(doc) if "pytest" in s.get("run", ""))
    m = re.search(r"--junitxml[= ](\S+)", test["run"])
    assert m, test["run"]
    setup = next(s for s in steps(doc) if s.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["python-version"] == "3.11"
    upload = next(s for s in steps(doc) if s.get("uses", "").startswith(
        "actions/upload-artifact@"))
    assert upload["if"] == "${{ always() }}"
    assert Path(m.group(1)).parts[0] in upload["with"]["path"]


# --- sweep.yml ----------------------------------------------------------------------------


def test_sweep_triggers_and_inputs():
    on = load(SWEEP)["on"]
    assert set(on) == {"schedule", "workflow_dispatch"}
    assert on["schedule"] and all(len(c["cron"].split()) == 5 for c in on["schedule"])
    inputs = on["workflow_dispatch"]["inputs"]
    assert {"spec", "backend", "max_trials", "max_regression"} <= set(inputs)
    assert inputs["backend"]["type"] == "choice"
    assert inputs["backend"]["options"] == ["local", "wandb"]
    for optional in ("max_trials", "max_regression", "fail_if_worse_than"):
        assert not inputs[optional].get("required", False) and inputs[optional]["default"] == ""


def test_sweep_runs_alone_on_the_gpu_runner():
    doc = load(SWEEP)
    assert doc["concurrency"]["cancel-in-progress"] is False
    group = doc["concurrency"]["group"]
    assert "github.ref" not in group and "run_id" not in group  # one queue for all branches
    (job,) = doc["jobs"].values()
    assert job["runs-on"] == GPU_LABELS


def test_sweep_steps_in_order():
    runs = [s.get("run", "") for s in steps(load(SWEEP))]
    order = ["orch build", "orch sweep", "orch results", "orch plot"]
    at = [next(i for i, r in enumerate(runs) if cmd in r) for cmd in order]
    assert at == sorted(at), at
    text = "\n".join(runs)
    assert "--compare" in text and "--max-regression" in text and "--fail-if-worse-than" in text
    assert "--backend wandb" in text and "--max-trials" in text
    uploads = [s for s in steps(load(SWEEP)) if s.get("uses", "").startswith(
        "actions/upload-artifact@")]
    assert uploads and all("always()" in s["if"] for s in uploads)


def test_sweep_gates_are_not_masked():
    """The sweep and results steps must fail the job: no continue-on-error, no `|| true`."""
    for s in steps(load(SWEEP)):
        assert not s.get("continue-on-error"), s.get("name")
        run = s.get("run", "")
        for line in run.splitlines():
            if re.search(r"\borch (sweep|results)\b", line) and "--format csv" not in line \
                    and "--format json" not in line:
                assert "|| true" not in line, line


def test_sweep_inputs_never_spliced_into_scripts():
    """Inputs go through env; `${{ }}` inside a run script is a shell injection risk."""
    for s in steps(load(SWEEP)):
        assert "${{" not in s.get("run", ""), s.get("name")


def test_orch_home_persists_outside_checkout_and_runner_temp():
    prep = next(s for s in steps(load(SWEEP)) if "ORCH_HOME=" in s.get("run", ""))
    run = prep["run"]
    assert "RUNNER_TEMP" not in run.split("ORCH_HOME=")[0].splitlines()[-1]
    assert 'ORCH_STATE_DIR:-$(dirname "$GITHUB_WORKSPACE")' in run


def test_sweep_prepare_step_checks_input_names_the_sweep_and_keys_the_home(tmp_path):
    """Run the prepare step's own shell and Python (all but the install) on a copy of a spec."""
    run = next(s for s in steps(load(SWEEP)) if s.get("id") == "prep")["run"]
    checks = run.split("python3 -m venv")[0]
    env = {**os.environ, "SPEC": "sweeps/smoke.yaml", "MAX_TRIALS": "0",
           "ORCH_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.run(["bash", "-e", "-c", checks], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "max_trials must be a positive integer" in proc.stdout
    env["MAX_TRIALS"] = "3"
    proc = subprocess.run(["bash", "-e", "-c", checks + 'echo "home=$home"'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"home={tmp_path}/state/sweeps_smoke"

    # The sweep's name: the spec's own plus the run number, given to `orch sweep --name`
    # (under the spec's name a scheduled run would resume and skip every finished trial).
    naming = "\n".join(ln for ln in run.splitlines()
                       if ln.strip().startswith(("name=", "sweep=")))
    naming = naming.replace(".venv/bin/python", sys.executable)
    proc = subprocess.run(["bash", "-e", "-c", naming + '\necho "$sweep"'], cwd=ROOT,
                          env={**env, "GITHUB_RUN_NUMBER": "7"}, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == "smoke-gh7", proc.stderr
    sweep_step = next(s for s in steps(load(SWEEP)) if "orch sweep" in s.get("run", ""))
    assert 'args=("$SPEC" --name "$SWEEP")' in sweep_step["run"]
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", "sweeps/smoke.yaml",
                           "--name", "smoke-gh7", "--dry-run", "--no-probe"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**env, "ORCH_HOME": str(tmp_path / "h")})
    assert proc.returncode == 0 and "sweep smoke-gh7:" in proc.stdout, proc.stdout + proc.stderr
