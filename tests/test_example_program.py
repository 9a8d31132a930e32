"""The comments example (examples/comments), a contract program that is not a GPT, swept end to
end through the local, Docker and Slurm launchers, with a results table at the end.

Its keys are its own (`titles.csv`, `fit.seed`, metrics `val_logloss` and `val_accuracy`), so
each sweep shows that the orchestrator takes them from `describe`, not from the trainer. The
Docker and Slurm tests skip with a reason outside CI and fail under CI=true.
"""

from __future__ import annotations

import csv
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from docker_fixtures import base_image, deps_image, docker_client  # noqa: F401
from orch_helpers import REPO, orch_env, run_orch
from slurm_fixtures import cluster  # noqa: F401

from orchestrator.ledger import Ledger

EXAMPLE = REPO / "examples" / "comments"
PROGRAM = "python examples/comments/comments.py"  # relative: the same path in its image


@pytest.fixture
def hn_rows(titles_csv: Path, tmp_path: Path) -> Path:
    """The first 1500 real posts, with the columns the example reads."""
    out = tmp_path / "data" / "hn.csv"
    out.parent.mkdir()
    with titles_csv.open(newline="", encoding="utf-8") as src, \
            out.open("w", newline="", encoding="utf-8") as dst:
        writer = csv.writer(dst)
        writer.writerow(["title", "num_comments"])
        for _, row in zip(range(1500), csv.DictReader(src)):
            writer.writerow([row["title"], row["num_comments"]])
    return out


def _spec(tmp_path: Path, name: str, launcher: dict[str, Any]) -> Path:
    spec = {"name": name, "base": str(EXAMPLE / "base.yaml"), "program": PROGRAM,
            "method": "grid", "metric": {"name": "val_logloss", "goal": "minimize"},
            "overrides": {"fit.epochs": 2},
            "parameters": {"fit.lr": {"values": [0.5, 4.0]}, "fit.seed": {"values": [1, 2]}},
            "resources": {"gpus": None, "cpu_slots": 2, "kill_grace": "2s"},
            "launcher": launcher}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _sweep_and_table(home: Path, spec: Path, data: Path, name: str,
                     **env: str) -> dict[str, Any]:
    """Run the sweep (orch started in the repository, where `program` is), check its trials,
    and return the results table as JSON (the plain table is checked too)."""
    proc = run_orch(["sweep", str(spec), "--data", str(data)], orch_env(home, **env),
                    timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = Ledger(home).trials(name)
    assert len(trials) == 4 and {t.state for t in trials} == {"finished"}, proc.stdout
    for t in trials:
        assert set(t.final) == {"val_logloss", "val_accuracy"}
        assert 0 < t.final["val_logloss"] < 5 and 0 < t.final["val_accuracy"] <= 1
    table = run_orch(["results", name], orch_env(home), cwd=REPO)
    assert table.returncode == 0, table.stderr
    print(table.stdout)  # the table, for whoever runs the test with -s
    assert "val_logloss" in table.stdout and "accuracy" in table.stdout
    assert "val_bpb" not in table.stdout and "coverage" not in table.stdout  # no trainer column
    found = run_orch(["results", name, "--format", "json"], orch_env(home), cwd=REPO)
    return json.loads(found.stdout)


def _check_rows(report: dict[str, Any]) -> None:
    """Seeds aggregated (fit.seed is declared a seed): one row per learning rate, n=2 each."""
    rows = report["rows"]
    assert sorted(r["fit.lr"] for r in rows) == [0.5, 4.0]
    assert all(r["n"] == 2 and "fit.seed" not in r for r in rows)
    assert all(0 < r["val_accuracy"] <= 1 for r in rows)
    assert rows[0]["val_logloss"] <= rows[1]["val_logloss"] and rows[0]["best"]


def test_the_example_declares_its_own_keys() -> None:
    proc = subprocess.run([*PROGRAM.split(), "describe"], capture_output=True, text=True,
                          cwd=REPO, check=True)
    said = json.loads(proc.stdout)
    assert said["data_files"] == ["titles.csv"] and said["seeds"] == ["fit.seed"]
    assert not said["prepare"] and said["tracking"] is None


def test_a_titles_file_without_the_columns_launches_nothing(orch_home: Path,
                                                             tmp_path: Path) -> None:
    """The example's `validate` reads the file's header, so a CSV without its columns is
    refused before the first trial (each trial used to start and exit 2)."""
    data = tmp_path / "names.csv"
    data.write_text("name,score\nfoo,1\nbar,2\n", encoding="utf-8")
    spec = _spec(tmp_path, "nocols", {"type": "local"})
    proc = run_orch(["sweep", str(spec), "--data", str(data)], orch_env(orch_home), cwd=REPO)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "has no `title` and `num_comments` columns (its header: name, score)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (orch_home / "runs" / "nocols").exists()


@pytest.mark.parametrize("given, expected", [
    (None, ("val_logloss", "minimize")),  # the program's first metric, its goal
    ({"name": "val_accuracy"}, ("val_accuracy", "maximize")),  # the declared goal
    ({"goal": "maximize"}, ("val_logloss", "maximize")),  # the spec's goal wins
])
def test_a_spec_without_a_metric_takes_the_programs_own(
        orch_home: Path, tmp_path: Path, hn_rows: Path, monkeypatch: pytest.MonkeyPatch,
        given: dict[str, str] | None, expected: tuple[str, str]) -> None:
    """A spec that leaves `metric` (or a part of it) out optimizes what the program declares,
    not the trainer's val_loss, which this program does not report."""
    from orchestrator.spec.plan import build_plan

    path = _spec(tmp_path, "metric", {"type": "local"})
    spec = yaml.safe_load(path.read_text())
    if given is None:
        del spec["metric"]
    else:
        spec["metric"] = given
    path.write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(REPO)  # where `program` is
    plan = build_plan(path, data=hn_rows)
    try:
        assert (plan.spec.metric.name, plan.spec.metric.goal) == expected
        assert plan.search["metric"] == {"name": expected[0], "goal": expected[1]}
    finally:
        plan.close()


def test_the_example_swept_locally(orch_home: Path, tmp_path: Path, hn_rows: Path) -> None:
    report = _sweep_and_table(orch_home, _spec(tmp_path, "ex-local", {"type": "local"}),
                              hn_rows, "ex-local")
    _check_rows(report)
    # No prepare was run, and `--data` set the declared data file key (relative paths too).
    t = Ledger(orch_home).trials("ex-local")[0]
    assert t.params["fit.seed"] in (1, 2)
    assert json.loads((Path(t.run_dir) / "result.json").read_text())["config"]["titles"][
        "csv"] == str(hn_rows)
    # `orch best` names this program's command, not the trainer's, and checks the config with it.
    best = tmp_path / "best.yaml"
    proc = run_orch(["best", "ex-local", "--out", str(best)], orch_env(orch_home), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert f"# Train it: {PROGRAM} --config THIS_FILE --out RUN_DIR" in best.read_text()


def test_the_example_swept_in_docker(tmp_path: Path, hn_rows: Path, deps_image: str,  # noqa: F811
                                     docker_client: Any) -> None:  # noqa: F811
    home = tmp_path / "orch-home"
    launcher = {"type": "docker", "context": str(EXAMPLE), "base_image": deps_image,
                "build_network": "none"}
    spec = _spec(tmp_path, "ex-docker", launcher)
    report = _sweep_and_table(home, spec, hn_rows, "ex-docker",
                              ORCH_CACHE_DIR=str(tmp_path / "cache"))
    _check_rows(report)
    for t in Ledger(home).trials("ex-docker"):  # the declared data file, mounted and rewritten
        config = json.loads((Path(t.run_dir) / "result.json").read_text())["config"]
        assert config["titles"]["csv"] == f"/orch/data/{hn_rows.name}"
    left = docker_client.containers.list(all=True, filters={"label": "orch.sweep=ex-docker"})
    assert [c for c in left if c.labels.get("orch.home") == str(home)] == []


def test_the_example_swept_on_slurm(cluster: None, orch_home: Path, tmp_path: Path,
                                    hn_rows: Path) -> None:
    name = f"ex{uuid.uuid4().hex[:8]}"  # sacct remembers every job by its name
    spec = _spec(tmp_path, name, {"type": "slurm", "max_concurrent": 2, "poll": 0.3})
    report = _sweep_and_table(orch_home, spec, hn_rows, name)
    _check_rows(report)
    assert all(t.job for t in Ledger(orch_home).trials(name))  # each trial was a Slurm job


def test_a_program_without_describe_runs_with_the_defaults(orch_home: Path, tmp_path: Path,
                                                           hn_rows: Path) -> None:
    # The example with its `describe` taken away: no data file, no seeds, the spec's metric.
    old = tmp_path / "old.py"
    old.write_text("import runpy, sys\n"
                   "if sys.argv[1:2] == ['describe']:\n"
                   "    sys.exit(2)\n"
                   f"sys.path[0] = {str(EXAMPLE)!r}\n"
                   f"runpy.run_path({str(EXAMPLE / 'comments.py')!r}, run_name='__main__')\n")
    spec = _spec(tmp_path, "ex-old", {"type": "local"})
    text = spec.read_text().replace(PROGRAM, f"python {old}")
    spec.write_text(text)
    refused = run_orch(["sweep", str(spec), "--data", str(hn_rows)], orch_env(orch_home))
    assert refused.returncode == 2 and "declares no data file" in refused.stderr
    assert "Traceback" not in refused.stderr
    proc = run_orch(["sweep", str(spec), "--set", f"titles.csv={hn_rows}"], orch_env(orch_home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = Ledger(orch_home).trials("ex-old")
    assert {t.state for t in trials} == {"finished"} and len(trials) == 4
    found = json.loads(run_orch(["results", "ex-old", "--format", "json"],
                                orch_env(orch_home)).stdout)
    rows = found["rows"]
    assert len(rows) == 4 and all("fit.seed" in r for r in rows)  # no seed declared: per trial
    assert all(r["val_logloss"] is not None and "val_accuracy" not in r for r in rows)
