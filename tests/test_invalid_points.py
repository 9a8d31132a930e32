"""Points the trainer rejects: no grid shrinks silently, and every cause is shown once, counted.

The fake program validates with the real trainer, so the reasons here are the trainer's own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from orch_helpers import orch_env, run_orch, write_spec

from orchestrator.ledger import Ledger
from orchestrator.run.loop import RunLoop
from orchestrator.run.progress import Progress
from orchestrator.spec.document import SpecError
from orchestrator.spec.plan import build_plan
from orchestrator.spec.points import SAMPLE
from orchestrator.spec.rejections import WIDTH, group

# base_tiny: d_model 64, context 64. n_head 3 does not divide d_model; qk_dim 96 exceeds it
# (checked only once the model section is valid, so (3, 96) fails for the n_head reason).
TWO_CAUSES = {"model.n_head": {"values": [3, 4]}, "attention.qk_dim": {"values": [None, 96]}}
N_HEAD = "`model`: d_model must be a multiple of n_head"
QK_DIM = "attention.qk_dim must be <= model.d_model"


def _flat(text: str) -> str:
    return " ".join(text.split())


def _errors(spec: Path) -> str:
    with pytest.raises(SpecError) as info:
        build_plan(spec)
    assert len(info.value.paragraphs) == 1
    return info.value.paragraphs[0]


def _fits(text: str) -> bool:
    """Every line within WIDTH columns, except where one word (a path) is longer by itself."""
    return all(len(line) <= WIDTH or max(map(len, line.split())) > WIDTH // 2
               for line in text.splitlines())


def test_a_grid_with_invalid_points_fails_validate_and_sweep(orch_home: Path,
                                                            tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", parameters=TWO_CAUSES)
    for args in (["validate", str(spec)], ["sweep", str(spec)]):
        proc = run_orch(args, orch_env(orch_home))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        text = _flat(proc.stderr)
        assert "3 of 4 grid points are invalid for the program" in text
        assert "set `skip_invalid: true` to run the other 1" in text
        assert f"- 2 grid points: {N_HEAD} e.g. model.n_head=3 attention.qk_dim=null" in text
        assert f"- 1 grid point: {QK_DIM} e.g. model.n_head=4 attention.qk_dim=96" in text
        assert "Traceback" not in proc.stderr and _fits(proc.stderr)
    assert not (orch_home / "starts.log").exists() and not (orch_home / "runs").exists()


def test_skip_invalid_runs_the_rest_and_says_how_many_remain(orch_home: Path,
                                                            tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", parameters=TWO_CAUSES, skip_invalid=True)
    proc = run_orch(["validate", str(spec)], orch_env(orch_home))
    assert proc.returncode == 0, proc.stderr
    assert "1 of 4 grid points remain" in _flat(proc.stderr)
    assert f"- 2 grid points: {N_HEAD}" in _flat(proc.stderr)
    assert "valid (1 grid trials; 3 of 4 grid points invalid)" in proc.stdout
    proc = run_orch(["sweep", str(spec)], orch_env(orch_home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 of 4 grid points remain" in _flat(proc.stderr)
    starts = [json.loads(line) for line in (orch_home / "starts.log").read_text().splitlines()]
    assert starts == [{"attention.qk_dim": "null", "model.n_head": "4"}]


def test_an_all_invalid_grid_shows_every_cause(orch_home: Path, tmp_path: Path) -> None:
    # Six causes, two points each (train.seed); the first five points hold only three of them.
    sections = [{"type": "causal", "qk_dim": 96}, {"type": "causal", "qk_dim": 20},
                {"type": "sparse", "pattern": "fixed", "block": 48},
                {"type": "sparse", "pattern": "strided", "block": 16},
                {"type": "sparse", "pattern": "fixed", "local_attn_ctx": 48, "block": 16},
                {"type": "sparse", "pattern": "fixed", "local_attn_ctx": 64, "block": 32,
                 "num_verts": 3}]
    spec = write_spec(tmp_path / "s.yaml", skip_invalid=True, parameters={
        "train.seed": {"values": [1, 2]}, "attention": {"values": sections}})
    paragraph = _errors(spec)
    text = _flat(paragraph)
    assert "all 12 grid points are invalid for the program" in text
    causes = [QK_DIM, "must be a multiple of 2 * model.n_head",
              "attention.local_attn_ctx must be a multiple of attention.block; "
              "train.context_length must be a multiple of attention.local_attn_ctx",
              "attention.block apply only to attention.pattern=fixed",
              "sparse fixed pattern: train.context_length must be a multiple of "
              "attention.local_attn_ctx e.g.",
              "model.n_head must be a multiple of attention.num_verts"]
    for cause in causes:
        assert re.search(r"- 2 grid points: [^-]*" + re.escape(cause), text), cause
    assert paragraph.count("- 2 grid points:") == 6 and paragraph.count("e.g.") == 6
    assert _fits("error: " + paragraph)


def test_random_reports_the_invalid_share_of_a_sample(orch_home: Path, tmp_path: Path) -> None:
    params = {"model.n_head": {"values": [3, 4]},
              "optim.lr": {"min": 1e-4, "max": 1e-2, "distribution": "log_uniform_values"}}
    spec = write_spec(tmp_path / "s.yaml", method="random", run_cap=3, parameters=params)
    text = _flat(_errors(spec))
    found = re.search(rf"(\d+) of {SAMPLE} sampled proposals \((\d+)%\) are invalid", text)
    assert found, text
    # Half the draws have n_head 3: a seeded sample of 200 lands well inside these bounds.
    assert 60 < int(found[1]) < 140 and int(found[2]) == round(100 * int(found[1]) / SAMPLE)
    assert f"- {found[1]} sampled proposals: {N_HEAD}" in text

    plan = build_plan(write_spec(tmp_path / "s1.yaml", method="random", run_cap=3,
                                 parameters=params, skip_invalid=True))
    try:
        assert (plan.rejected.count, plan.rejected.checked) == (int(found[1]), SAMPLE)
    finally:
        plan.close()
    spec = write_spec(tmp_path / "s2.yaml", method="bayes", run_cap=3, skip_invalid=True,
                      parameters={**params, "model.n_head": {"values": [3, 5]}})
    assert f"all {SAMPLE} sampled proposals are invalid for the program: the bayes search " \
           "would find nothing to run" in _flat(_errors(spec))


def test_a_run_whose_proposals_are_all_invalid_ends_saying_so(
        orch_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Validation samples the spec's space; the engine then proposes from another one, as a
    # sample can miss a region the run later falls into.
    spec = write_spec(tmp_path / "s.yaml", method="random", run_cap=3,
                      parameters={"model.n_head": {"values": [2, 4]}})
    plan = build_plan(spec)
    plan.search = {**plan.search, "parameters": {"model.n_head": {"values": [3, 5]}}}
    try:
        code = RunLoop(plan, Ledger(orch_home), Progress("t", plan.varied, "val_loss",
                                                           live=False), orch_home).run()
    finally:
        plan.close()
    out = _flat(capsys.readouterr().out)
    assert code == 1  # no trial finished
    assert "ending the sweep: all 20 proposals since the last new trial were invalid" in out
    assert f"- 20 proposals: {N_HEAD} e.g. model.n_head=" in out
    assert "already tried" not in out
    assert {t.state for t in Ledger(orch_home).trials("t")} == {"invalid"}
    assert not (orch_home / "starts.log").exists()


def test_a_run_out_of_new_valid_points_says_why(orch_home: Path, tmp_path: Path) -> None:
    # One valid value and one invalid: after the valid one runs, nothing new is left.
    spec = write_spec(tmp_path / "s.yaml", method="random", run_cap=3, skip_invalid=True,
                      parameters={"model.n_head": {"values": [3, 4]}})
    proc = run_orch(["sweep", str(spec)], orch_env(orch_home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = _flat(proc.stdout)
    assert "ending the sweep: nothing new in the engine's last 20 proposals" in text
    found = re.search(r"\((\d+) configs already tried, (\d+) invalid for the program\)", text)
    assert found and int(found[1]) + int(found[2]) == 20 and int(found[1]) > 0, text
    assert f"proposals: {N_HEAD} e.g. model.n_head=3" in text
    assert "trial 1: invalid, skipped" in text or "trial 2: invalid, skipped" in text


def test_reasons_leave_out_the_points_values_but_not_names_or_bounds() -> None:
    def error(point: dict, cause: str) -> tuple[dict, str, dict]:
        source = f"b.yaml at {json.dumps(point, sort_keys=True)}"
        return point, f"invalid config {source}: {cause}.", point

    rejected = group([
        error({"a": 3}, "`model`: d_model (64) must be a multiple of n_head (3)"),
        error({"a": 5}, "`model`: d_model (64) must be a multiple of n_head (5)"),
        error({"b": 2}, "`optim.beta2`: Input should be less than 1 (got 2)"),
    ], 4, "grid points", ["a", "b"])
    assert [(r.text, r.count, r.example) for r in rejected.reasons] == [
        ("`model`: d_model must be a multiple of n_head", 2, {"a": 3}),
        ("`optim.beta2`: Input should be less than 1", 1, {"b": 2})]
    assert rejected.share() == "3 of 4 grid points are invalid for the program"
