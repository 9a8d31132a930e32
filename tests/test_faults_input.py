"""Bad input is refused before anything launches: one paragraph, exit 2, no traceback.

Each case runs `orch` (or `python -m trainer`) as a user would and checks that the message names
the file and the field, that no trial started (the fake trainer's start log stays empty) and
that the ledger holds no sweep. Titles files the trainer cannot read are caught by the data
check `orch sweep` runs before the first launch, for the local, Docker and Slurm launchers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from docker_fixtures import (base_image, deps_image, docker_client, shared_cache,  # noqa: F401
                             trainer_image)
from orch_helpers import BASE_TINY, FAKE, message_lines, orch_env, run_orch, starts, write_spec
from slurm_fixtures import cluster  # noqa: F401

from orchestrator.launch.dataprep import data_settings
from orchestrator.ledger import Ledger
from orchestrator.run.slots import detect_gpus, make_slots
from orchestrator.spec.plan import build_plan
from trainer.config import load_config


def _refused(proc: subprocess.CompletedProcess[str], home: Path | None, *names: str) -> str:
    """The one paragraph of a refusal (exit 2, no traceback) that names each of `names`;
    with `home`, also that nothing started and the ledger holds no sweep."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [x for x in message_lines(proc.stderr) if not x.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    if home is not None:
        assert starts(home) == []
        assert not (home / "ledger.sqlite").exists() or Ledger(home).sweeps() == []
    return lines[0]


def _titles(tmp_path: Path, tiny_titles: Path, kind: str) -> Path:
    """A titles file (or directory) the trainer cannot train on."""
    if kind == "directory":
        path = tmp_path / "titles.d"
        path.mkdir()
        return path
    path = tmp_path / {"suffix": "titles.xlsx"}.get(kind, f"{kind}.csv")
    real = tiny_titles.read_text(encoding="utf-8").splitlines()
    path.write_bytes({
        "empty": b"",
        "no_title": ("name\n" + "\n".join(real[1:50]) + "\n").encode(),
        "not_utf8": b"title\n" + "\n".join(real[1:50]).encode("utf-16"),
        "suffix": tiny_titles.read_bytes(),
        "too_few": ("\n".join(real[:6]) + "\n").encode(),  # 5 titles: not one batch of 16 x 64
    }[kind])
    return path


DATA_CASES = {  # kind: what the message says
    "empty": "is empty", "no_title": "no `title` column", "not_utf8": "not valid UTF-8",
    "suffix": "not a known titles format", "too_few": "do not fill one batch",
    "directory": "is a directory"}


@pytest.mark.parametrize("kind", list(DATA_CASES))
def test_a_bad_titles_file_stops_the_local_sweep_before_any_trial(
        kind: str, orch_home: Path, tmp_path: Path, tiny_titles: Path) -> None:
    data = _titles(tmp_path, tiny_titles, kind)
    spec = write_spec(tmp_path / "s.yaml")
    proc = run_orch(["sweep", str(spec), "--data", str(data)], orch_env(orch_home))
    _refused(proc, orch_home, str(data), "data.path", DATA_CASES[kind])


def test_the_data_check_runs_once_per_distinct_data_setting(orch_home: Path,
                                                           tmp_path: Path,
                                                           tiny_titles: Path) -> None:
    seeds = write_spec(tmp_path / "a.yaml", overrides={"data.path": str(tiny_titles)},
                       parameters={"train.seed": {"values": [1, 2, 3]}})
    vocab = write_spec(tmp_path / "b.yaml", overrides={"data.path": str(tiny_titles)},
                       parameters={"tokenizer.vocab_size": {"values": [300, 400]},
                                   "train.seed": {"values": [1, 2]}})
    for spec, settings in ((seeds, 1), (vocab, 2)):
        plan = build_plan(spec)
        try:
            assert len(data_settings(plan)) == settings
        finally:
            plan.close()


def test_a_good_titles_file_is_prepared_once_and_the_trials_run(
        orch_home: Path, tmp_path: Path, tiny_titles: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", parameters={"train.seed": {"values": [1, 2]}})
    proc = run_orch(["sweep", str(spec), "--data", str(tiny_titles)], orch_env(orch_home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(1 setting(s)) before the first trial" in proc.stdout + proc.stderr
    assert len(starts(orch_home)) == 2
    data_entries = [p for p in (orch_home / "cache").iterdir() if p.is_dir() and p.name != "schema"]
    assert len(data_entries) == 1  # warm cache (beside the schema cache)


def test_binary_spec_binary_base_and_empty_base(orch_home: Path, tmp_path: Path) -> None:
    binary = bytes(range(128, 256)) * 4
    bin_spec = tmp_path / "spec.yaml"
    bin_spec.write_bytes(binary)
    _refused(run_orch(["validate", str(bin_spec)], orch_env(orch_home)), None, str(bin_spec),
             "not UTF-8")
    (tmp_path / "bin.yaml").write_bytes(binary)
    (tmp_path / "empty.yaml").write_text("")
    for base, says in (("bin.yaml", "not UTF-8"), ("empty.yaml", "is empty")):
        spec = write_spec(tmp_path / f"s-{base}", base=base)
        proc = run_orch(["sweep", str(spec)], orch_env(orch_home))
        _refused(proc, orch_home, str(tmp_path / base), "`base`", says)


@pytest.mark.parametrize("content, says", [(bytes(range(128, 256)), "not UTF-8 text"),
                                           (b"", "is empty"), (b"- 1\n", "mapping")])
def test_trainer_refuses_binary_empty_and_listed_configs(tmp_path: Path, content: bytes,
                                                          says: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    for command in (["validate"], ["prepare"], []):
        argv = [*command, "--config", str(config)] + ([] if command else ["--out", "run"])
        proc = subprocess.run([sys.executable, "-m", "trainer", *argv], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and str(config) in proc.stderr and says in \
            proc.stderr
    assert not (tmp_path / "run").exists()


def test_yaml_1_1_numbers_read_as_numbers(orch_home: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"  # a YAML 1.1 loader reads 3e-3 and 1.0e-2 as strings
    config.write_text(BASE_TINY.read_text().replace("lr: 3.0e-3", "lr: 3e-3"))
    assert "lr: 3e-3" in config.read_text()
    assert load_config(config).optim.lr == 3e-3
    proc = subprocess.run([sys.executable, "-m", "trainer", "validate", "--config", str(config),
                           "optim.weight_decay=1.0e-2"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("ok "), proc.stderr
    spec = write_spec(tmp_path / "s.yaml", base=str(config))
    spec.write_text(spec.read_text().split("parameters:")[0] + (
        "overrides: {optim.weight_decay: 1e-2, optim.grad_clip: 1.0e0}\n"
        "parameters:\n  optim.lr: {values: [1e-3, 2.0e-3]}\n"
        "resources: {gpus: null}\n"))
    plan = build_plan(spec)
    try:
        assert plan.fixed["optim.weight_decay"] == 1e-2 and plan.fixed["optim.grad_clip"] == 1.0
        assert [p["optim.lr"] for p, _ in plan.grid or []] == [1e-3, 2e-3]
    finally:
        plan.close()


def test_the_same_gpu_twice_is_refused(orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", resources={"gpus": [0, 1, 0]})
    _refused(run_orch(["validate", str(spec)], orch_env(orch_home)), None, str(spec),
             "`resources.gpus`", "GPU 0 listed more than once")


@pytest.fixture
def no_gpu_0() -> None:
    if 0 in detect_gpus():
        pytest.skip("this machine has GPU 0: the case needs a GPU that is not there")


def test_listed_gpus_that_are_not_usable_are_refused(no_gpu_0: None, orch_home: Path,
                                                     tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", resources={"gpus": [0]})
    proc = run_orch(["sweep", str(spec)], orch_env(orch_home))
    line = _refused(proc, orch_home, str(spec), "`resources.gpus`", "GPU(s) 0 asked for")
    assert "resources.gpus: null" in line and "resources.cpu_fallback: true" in line


def test_cpu_fallback_runs_on_the_cpu_and_says_so(no_gpu_0: None, orch_home: Path,
                                                  tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", resources={"gpus": [0], "cpu_fallback": True},
                      parameters={"train.seed": {"values": [1]}})
    proc = run_orch(["sweep", str(spec)], orch_env(orch_home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resources.cpu_fallback is true, so the trials run on the CPU" in proc.stderr
    assert "started in slot cpu" in proc.stdout and "cuda" not in proc.stdout
    assert [t.device for t in Ledger(orch_home).trials("t")] == ["cpu"]
    plan = build_plan(spec)
    try:
        assert [s.device for s in make_slots(plan.spec.resources, gpus_found=[])] == ["cpu"]
        assert [s.device for s in make_slots(plan.spec.resources, gpus_found=[0])] == ["cuda:0"]
    finally:
        plan.close()


def test_online_tracking_without_an_api_key_is_refused(orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", tracking={"wandb": {"mode": "online"}})
    env = {k: v for k, v in orch_env(orch_home, HOME=str(tmp_path)).items()
           if k not in ("WANDB_API_KEY", "NETRC")}
    _refused(run_orch(["sweep", str(spec), "--dry-run"], env), orch_home, str(spec),
             "`tracking.wandb.mode`", "no W&B API key")
    ok = run_orch(["validate", str(spec)], {**env, "WANDB_API_KEY": "k" * 40})
    assert ok.returncode == 0, ok.stderr


def test_bayes_without_metric_says_what_it_optimizes(orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", method="bayes", run_cap=2,
                      parameters={"optim.lr": {"min": 1e-4, "max": 1e-2}})
    proc = run_orch(["validate", str(spec)], orch_env(orch_home))
    assert proc.returncode == 0, proc.stderr
    assert "without `metric` optimizes val_loss (minimize)" in proc.stderr
    spec.write_text(spec.read_text() + "metric: {name: val_bpb, goal: minimize}\n")
    assert "without `metric`" not in run_orch(["validate", str(spec)],
                                              orch_env(orch_home)).stderr


# -- the data check with the other launchers ------------------------------------------------------


def test_docker_sweep_with_a_bad_titles_file_launches_nothing(
        tmp_path: Path, tiny_titles: Path, deps_image: str, docker_client: Any,  # noqa: F811
        trainer_image: str, shared_cache: Path) -> None:  # noqa: F811
    home = tmp_path / "orch-home"
    data = _titles(tmp_path, tiny_titles, "no_title")
    spec = tmp_path / "d.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "d", "base": str(BASE_TINY), "method": "grid",
        "parameters": {"train.seed": {"values": [1, 2]}},
        "resources": {"gpus": None, "cpu_slots": 2},
        "launcher": {"type": "docker", "base_image": deps_image, "build_network": "none"}}))
    proc = run_orch(["sweep", str(spec), "--data", str(data)],
                    orch_env(home, ORCH_CACHE_DIR=str(shared_cache)), timeout=600)
    _refused(proc, home, "no `title` column", str(data))
    assert docker_client.containers.list(all=True, filters={"label": [
        "orch.sweep=d", f"orch.home={home}"]}) == []


def test_slurm_sweep_with_a_bad_titles_file_submits_nothing(orch_home: Path, tmp_path: Path,
                                                           tiny_titles: Path,
                                                           cluster: None) -> None:  # noqa: F811
    from orchestrator.launch.slurm import commands as slurm

    data = _titles(tmp_path, tiny_titles, "not_utf8")
    name = f"bad{os.getpid()}"
    spec = write_spec(tmp_path / "s.yaml", name=name, launcher={"type": "slurm", "poll": 0.3})
    proc = run_orch(["sweep", str(spec), "--data", str(data)], orch_env(orch_home))
    _refused(proc, orch_home, str(data), "not valid UTF-8")
    assert [j for j in slurm.my_jobs() if name in j[1] or name in j[2]] == []


def test_a_program_that_does_not_exist_is_one_paragraph(orch_home: Path, tmp_path: Path) -> None:
    """`program:` naming no file: exit 2 naming the field, no traceback, for validate and sweep."""
    spec = write_spec(tmp_path / "gone.yaml", name="gone", base=str(BASE_TINY),
                      program=str(tmp_path / "no-such-program"),
                      parameters={"optim.lr": {"values": [0.1]}})
    for command in (["validate", str(spec)], ["sweep", str(spec)]):
        proc = run_orch(command, orch_env(orch_home))
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        assert "`program`" in proc.stderr and "no-such-program" in proc.stderr


@pytest.mark.parametrize("fields, names", [
    ({"name": "x" * 300}, ["`name`", "at most 100 characters"]),  # a run dir cannot be that long
    ({"program": 'python "unterminated'}, ["`program`", "No closing quotation"]),
    ({"program": "   "}, ["`program`", "is empty"]),
    ({"program": []}, ["`program`", "is empty"]),
    ({"resources": {"gpus": None, "timeout": float("inf")}},
     ["`resources.timeout`", "finite number"]),  # `1e400` read as no timeout at all
])
def test_names_and_programs_that_cannot_run_are_refused(orch_home: Path, tmp_path: Path,
                                                        fields: dict[str, Any],
                                                        names: list[str]) -> None:
    """Refused by validate and by sweep, before anything runs (they crashed with a traceback
    mid-sweep or while validating)."""
    spec = write_spec(tmp_path / "s.yaml", **fields)
    for command in (["validate", str(spec)], ["sweep", str(spec)]):
        _refused(run_orch(command, orch_env(orch_home)), orch_home, str(spec), *names)


@pytest.mark.parametrize("where", ["set", "overrides"])
def test_a_setting_of_a_swept_key_is_refused(orch_home: Path, tmp_path: Path,
                                             where: str) -> None:
    """`--set` or `overrides` on a key the parameters vary would be silently replaced by the
    parameter's values in every trial."""
    spec = write_spec(tmp_path / "s.yaml", parameters={"optim.lr": {"values": [0.1, 0.2]}},
                      **({"overrides": {"optim": {"lr": 0.5}}} if where == "overrides" else {}))
    sets = ["--set", "optim.lr=0.5"] if where == "set" else []
    proc = run_orch(["sweep", str(spec), *sets], orch_env(orch_home))
    _refused(proc, orch_home, "optim.lr is also a parameter", "`parameters.optim.lr`",
             "--set optim.lr=0.5" if where == "set" else "`overrides.optim.lr`")


def test_unknown_backend_and_unwritable_out_paths_are_refused(orch_home: Path,
                                                              tmp_path: Path) -> None:
    """A typo of `wandb` ran locally; --out at a folder or a file where a folder goes ended in
    a traceback. Each is exit 2 with one line."""
    spec = write_spec(tmp_path / "s.yaml", name="outs")
    env = orch_env(orch_home)
    proc = run_orch(["sweep", str(spec), "--backend", "wandbb"], env)
    assert proc.returncode == 2 and "'wandbb' is not one of" in proc.stderr.replace("\n", " ")
    assert starts(orch_home) == []
    assert run_orch(["sweep", str(spec)], env).returncode == 0
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for command in (["results", "outs", "--out", str(tmp_path)],
                    ["results", "outs", "--out", str(tmp_path / "no" / "t.csv")],
                    ["best", "outs", "--out", str(tmp_path)],
                    ["report", "outs", "--out", str(tmp_path)],
                    ["plot", "outs", "--out", str(a_file)],
                    ["results", "outs", "--backend", "wandbb"]):
        proc = run_orch(command, env)
        assert proc.returncode == 2, (command, proc.stderr)
        assert "Traceback" not in proc.stderr, command


@pytest.mark.parametrize("parameters, says", [
    ("  optim.lr: {values: [0.1]}\n  optim.lr: {values: [0.2, 0.3]}\n",
     "key 'optim.lr' appears twice in one mapping (first on line"),
    ("  optim.lr: {values: [0.1]}\n  optim:\n    parameters:\n      lr: {values: [0.2, 0.3]}\n",
     "optim.lr is set twice in `parameters`"),
    ("  optim.lr: {values: [0.1, 0.1, 0.3]}\n",  # a grid of 2 points, written as 3
     "`parameters.optim.lr.values`: 0.1 listed more than once"),
])
def test_a_parameter_written_twice_is_refused(orch_home: Path, tmp_path: Path, parameters: str,
                                              says: str) -> None:
    """PyYAML keeps the last of two equal keys, and a dotted and a nested parameter of one key
    collapse into one: either way values were dropped without a word."""
    spec = tmp_path / "twice.yaml"
    spec.write_text(f"name: twice\nbase: {BASE_TINY}\nprogram: {sys.executable} {FAKE}\n"
                    f"method: grid\nparameters:\n{parameters}resources: {{gpus: null}}\n")
    _refused(run_orch(["sweep", str(spec)], orch_env(orch_home)), orch_home, str(spec), says)


def test_the_trainer_refuses_a_config_key_written_twice(tmp_path: Path) -> None:
    config = tmp_path / "twice.yaml"
    config.write_text("train:\n  batch_size: 4\n  batch_size: 8\n")
    proc = subprocess.run([sys.executable, "-m", "trainer", "validate", "--config", str(config)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "key 'batch_size' appears twice in one mapping (first on line 2)" in proc.stderr


def test_the_trainer_refuses_an_infinite_value(tmp_path: Path) -> None:
    """`optim.lr=.inf` validated (an infinite learning rate), while a sweep point of it now
    comes back invalid from the trainer's own check."""
    proc = subprocess.run([sys.executable, "-m", "trainer", "validate", "--config",
                           str(BASE_TINY), "optim.lr=.inf"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "`optim.lr`: Input should be a finite number" in proc.stderr
