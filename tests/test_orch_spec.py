"""Spec validation: every error names file, line and field; exit 2; nothing launched."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from orch_helpers import orch_env, run_orch, write_spec

from orchestrator.spec.document import SpecError
from orchestrator.spec.model import parse_duration
from orchestrator.spec.overrides import parse_set, split_assignment
from orchestrator.spec.plan import build_plan


def _errors(spec: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        build_plan(spec)
    return info.value.paragraphs


def _line_of(spec: Path, text: str) -> int:
    return next(i for i, line in enumerate(spec.read_text().splitlines(), 1) if text in line)


def test_cli_reports_every_problem_with_file_line_field_and_exits_2(orch_home: Path,
                                                                   tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "bad.yaml", metric={"name": "val_los", "goal": "minimize"},
                      parameters={"model.n_heads": {"values": [4, 8]},
                                  "optim.lr": {"min": 1e-4, "max": 2.0,
                                               "distribution": "log_uniform_values"},
                                  "model.norm": {"values": ["layernorm", "batchnorm"]}})
    proc = run_orch(["sweep", str(spec)], orch_env(orch_home))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    text = " ".join(proc.stderr.split())
    line = _line_of(spec, "model.n_heads")
    assert f"{spec}, line {line}, `parameters.model.n_heads`" in text
    assert "did you mean `model.n_head`" in text
    assert f"line {_line_of(spec, 'model.norm')}, `parameters.model.norm`" in text and "'rmsnorm'" in text
    assert "unknown metric 'val_los'" in text and "val_bpb" in text
    assert not (orch_home / "runs").exists()  # nothing launched


def test_typo_in_name_and_unknown_key_caught(orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", resources={"cpu_slot": 2},
                      parameters={"attention.windw": {"values": [8]}})
    errs = _errors(spec)
    assert any("`resources.cpu_slot`: unknown field" in e and "cpu_slots" in e for e in errs)
    assert any("`attention.windw` is not a field" in e and "window" in e for e in errs)


def test_discriminated_union_members_and_nested_keys_resolve(orch_home: Path,
                                                            tmp_path: Path) -> None:
    # `window` exists only on the local member and `num_verts` only on sparse: both are names.
    spec = write_spec(tmp_path / "s.yaml", method="random", run_cap=2, parameters={
        "attention.type": {"value": "local"}, "attention.window": {"values": [8, 16]},
        "model": {"parameters": {"n_head": {"values": [2, 4]}}}})
    plan = build_plan(spec)
    try:
        assert plan.varied == ["attention.window", "model.n_head"]
    finally:
        plan.close()
    spec = write_spec(tmp_path / "s2.yaml", parameters={
        "attention.type": {"value": "sparse"}, "attention.num_verts": {"values": [1, 2]},
        "attention.local_attn_ctx": {"value": 32}, "attention.block": {"value": 16}})
    build_plan(spec).close()


def test_values_and_distributions_checked_against_bounds(orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", method="random", run_cap=3, parameters={
        "model.dropout": {"min": 0.0, "max": 1.5},
        "train.batch_size": {"min": 8.0, "max": 32.0},
        "optim.lr": {"distribution": "normal", "mu": 0.0, "sigma": 1.0},
        "train.epochs": {"values": [1, 0]}})
    errs = " ".join(_errors(spec))
    assert "`parameters.model.dropout`: range [0.0, 1.5]" in errs
    assert "draws floats but the field is an integer" in errs
    assert "`normal` is unbounded" in errs
    assert "0 does not fit" in errs


def test_an_early_terminate_out_of_range_names_the_field(orch_home: Path,
                                                         tmp_path: Path) -> None:
    """W&B's schema said only "not valid under any of the given schemas"."""
    spec = write_spec(tmp_path / "s.yaml",
                      early_terminate={"type": "hyperband", "min_iter": -3, "eta": 3})
    errs = _errors(spec)
    assert any("`early_terminate.min_iter`: -3 is less than the minimum of 1" in e for e in errs)
    assert not any("any of the given schemas" in e for e in errs)


def test_w_and_b_schema_errors_have_lines(orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", early_terminate={"type": "hyperband", "eta": 0},
                      parameters={"train.seed": {"values": 3}})
    errs = _errors(spec)
    assert any("`parameters.train.seed`: not a valid W&B parameter" in e for e in errs)
    assert any("`early_terminate" in e and "W&B sweep config schema" in e for e in errs)
    assert all(", line " in e for e in errs)


def test_w_and_b_errors_come_in_one_order_whatever_the_hash_seed(
        orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", method="random", run_cap=3,
                      early_terminate={"type": "hyperband", "eta": 0, "min_iter": -1},
                      parameters={"train.seed": {"values": 3},
                                  "optim.lr": {"min": 0.1, "max": 0.01},
                                  "model.dropout": {"values": []}})
    outputs = set()
    for seed in "15":  # two seeds under which jsonschema listed them in different orders
        proc = run_orch(["validate", str(spec)], {**os.environ, "PYTHONHASHSEED": seed})
        assert proc.returncode == 2
        outputs.add(proc.stderr)
    assert len(outputs) == 1
    wandb = [int(line) for line in re.findall(
        r", line (\d+), `parameters[^`]*`: (?:not a valid W&B|`values` is empty)", outputs.pop())]
    assert len(wandb) >= 2 and wandb == sorted(wandb)


@pytest.mark.parametrize("params", [
    {"train.seed": {"values": [1, 2]}, "optim.lr": {"min": 0.1, "max": 0.01}},
    {"a": {"values": [1, 2], "probabilities": [0.5, 0.6]}, "b": {"value": 3}},
    {"optim": {"parameters": {"lr": {"values": [0.1]}}}, "c": {"values": 3}, "d": {"value": []},
     "e": {"values": []}},
    {"optim.lr": {"min": 1e-4, "max": 1e-2, "distribution": "log_uniform"}},
])
def test_wandb_checks_match_wandb_without_its_scipy_import(params: dict) -> None:
    from sweeps import schema_violations_from_proposed_config

    from orchestrator.spec.sweeps_schema import _sweeps_violations
    search = {"method": "grid", "metric": {"name": "val_loss", "goal": "minimize"},
              "parameters": params}
    assert _sweeps_violations(search) == schema_violations_from_proposed_config(search)


def test_set_and_baseline_read_key_value_alike() -> None:
    # `--set` and `results --baseline key=value` split one way: the key before the first `=`.
    from orchestrator.report.compare import parse_config
    from orchestrator.report.results import ResultsError

    for text in ("optim.lr=3e-4", " model.norm = rmsnorm", "data.path=a=b.csv"):
        key, raw = split_assignment(text)
        assert parse_set(text)[0] == key and parse_config(text) == {key: raw.strip()}
    assert parse_set("optim.lr=3e-4")[1] == 3e-4 and parse_set("train.seed=")[1] is None
    for bad in ("optim.lr", "=3", " =3"):
        with pytest.raises(ValueError):
            split_assignment(bad)
        with pytest.raises(SpecError, match="not of the form key.path=value"):
            parse_set(bad)
        with pytest.raises(ResultsError, match="expected key=value"):
            parse_config(bad)


def test_random_without_run_cap_is_refused(orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", method="random")
    assert any("never ends by itself" in e for e in _errors(spec))


def test_yaml_syntax_error_names_line(orch_home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\nparameters:\n  a: [1, 2\n")
    proc = run_orch(["validate", str(spec)], orch_env(orch_home))
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr and "line" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_grid_points_invalid_for_trainer_are_fatal_unless_skipped(orch_home: Path,
                                                                  tmp_path: Path) -> None:
    # base_tiny has d_model 64: n_head 3 does not divide it, 4 and 8 do.
    params = {"model.n_head": {"values": [3, 4, 8]}}
    errs = [" ".join(e.split()) for e in _errors(write_spec(tmp_path / "s.yaml",
                                                             parameters=params))]
    assert len(errs) == 1 and "1 of 3 grid points is invalid" in errs[0]
    assert "skip_invalid: true" in errs[0] and "e.g. model.n_head=3" in errs[0]
    plan = build_plan(write_spec(tmp_path / "s1.yaml", parameters=params, skip_invalid=True))
    try:
        assert [p for p, _ in plan.grid] == [{"model.n_head": 4}, {"model.n_head": 8}]
        assert len(plan.invalid) == 1 and "multiple of n_head (3)" in plan.invalid[0][1]
        assert plan.rejected.count == 1 and plan.rejected.checked == 3
    finally:
        plan.close()
    spec = write_spec(tmp_path / "s2.yaml", skip_invalid=True,
                      parameters={"model.n_head": {"values": [3, 5]}})
    errs = [" ".join(e.split()) for e in _errors(spec)]
    assert len(errs) == 1 and "all 2 grid points are invalid" in errs[0]
    assert f"{spec}, line" in errs[0]


def test_set_and_data_options_are_checked(orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    with pytest.raises(SpecError) as info:
        build_plan(spec, ["train.max_step=3", "model.dropout=2"], tmp_path / "missing.csv")
    text = " ".join(info.value.paragraphs)
    assert "--set train.max_step=3" in text and "did you mean `train.max_steps`" in text
    assert "--set model.dropout=2" in text and "--data" in text


def test_dry_run_lists_trials_and_launches_nothing(orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", parameters={"train.seed": {"values": [1, 2]},
                                                       "model.n_head": {"values": [2, 3, 4]}},
                      skip_invalid=True)
    proc = run_orch(["sweep", str(spec), "--dry-run"], orch_env(orch_home))
    assert proc.returncode == 0, proc.stderr
    assert "4 trial(s) would run" in proc.stdout
    assert "4 of 6 grid points remain" in proc.stderr and "- 2 grid points:" in proc.stderr
    assert not (orch_home / "runs").exists()


def test_durations() -> None:
    assert parse_duration("90") == 90 and parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400 and parse_duration("45s") == 45
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_schema_command_prints_spec_schema(orch_home: Path) -> None:
    proc = run_orch(["schema"], orch_env(orch_home))
    assert proc.returncode == 0 and '"parameters"' in proc.stdout and '"resources"' in proc.stdout


@pytest.mark.parametrize("search", [
    {"method": "grid", "metric": {"name": "val_loss", "goal": "minimize"},
     "parameters": {"a": {"values": 3}, "b": {"min": 1, "max": "x"}, "c": {"value": 1}}},
    {"method": "bayes", "metric": {"name": "val_loss", "goal": "up"}, "run_cap": -1,
     "early_terminate": {"type": "hyperband", "eta": 0}, "parameters": {
         "lr": {"distribution": "q_uniform", "min": 0.1, "max": 1.0, "q": "a"}}},
])
def test_sweeps_validator_is_wandbs(search: dict) -> None:
    # Built from the package's schema file so `orch validate` need not import the package.
    from sweeps.config.schema import validator

    from orchestrator.spec.sweeps_schema import sweeps_validator
    assert [(list(e.absolute_path), e.message) for e in sweeps_validator().iter_errors(search)] \
        == [(list(e.absolute_path), e.message) for e in validator.iter_errors(search)]
    assert list(validator.iter_errors(search))  # each case has errors


@pytest.mark.parametrize("param, says", [
    ({"min": 1e-4, "max": 1e-2, "distribution": "log_uniformz"},
     "unknown distribution `log_uniformz` (did you mean `log_uniform`?); W&B's are: beta,"),
    ({"values": []}, "`values` is empty: list at least one value"),
])
def test_a_bad_distribution_is_named_not_its_other_keys(orch_home: Path, tmp_path: Path,
                                                        param: dict, says: str) -> None:
    """W&B's schema blamed `min` and `max` ("were unexpected") or asked for a distribution."""
    spec = write_spec(tmp_path / "s.yaml", parameters={"optim.lr": param})
    proc = run_orch(["validate", str(spec)], orch_env(orch_home))
    assert proc.returncode == 2
    text = " ".join(proc.stderr.split())
    assert says in text and "were unexpected" not in text and "required property" not in text


def test_a_section_value_names_its_wrong_field(orch_home: Path, tmp_path: Path) -> None:
    """A whole section as a value: the message names the field it does not have (it said only
    `allowed is object` of an object)."""
    spec = write_spec(tmp_path / "s.yaml",
                      parameters={"model": {"values": [{"n_layer": 1}, {"n_layerz": 2}]}})
    proc = run_orch(["validate", str(spec)], orch_env(orch_home))
    assert proc.returncode == 2
    assert "'n_layerz' was unexpected" in " ".join(proc.stderr.split())
