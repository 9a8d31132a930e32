"""`PROGRAM describe`: what a program declares, how the orchestrator reads and caches it, and the
one place where the two sides are compared on purpose."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from orch_helpers import orch_env, run_orch, write_spec

from orchestrator.contract import (EXIT_CODES, ContractError, Description, describe, judge,
                                   program_argv)
from orchestrator.states import TrialState

TRAINER = program_argv("python -m trainer")
# The state judge() gives an exit code without result.json, by the meaning a program declares.
STATE_OF = {"finished": TrialState.FAILED,  # exit 0 alone is not finished: result.json says so
            "crashed": TrialState.FAILED, "bad_input": TrialState.FAILED,
            "diverged": TrialState.DIVERGED, "oom": TrialState.OOM,
            "stopped": TrialState.KILLED}  # a signal the orchestrator did not send


def test_the_orchestrator_reads_exactly_what_the_trainer_declares(tmp_path: Path) -> None:
    # Crosses the boundary on purpose: the trainer's own modules against the orchestrator's
    # contract, through `python -m trainer describe` as a sweep reads it.
    from trainer import exitcodes
    from trainer.metrics import METRICS

    got = describe(TRAINER, cache_dir=tmp_path)
    assert got.exit_codes == EXIT_CODES
    codes = {v for k, v in vars(exitcodes).items() if k.isupper()}
    assert codes == set(EXIT_CODES) == set(got.exit_codes)
    for code, meaning in got.exit_codes.items():
        assert judge(code, tmp_path).state == STATE_OF[meaning], (code, meaning)
    assert sorted(got.metric_names()) == sorted(METRICS)  # what evaluate() returns
    goals = {m.name: m.goal for m in got.metrics}
    assert goals["val_loss"] == goals["val_bpb"] == goals["val_loss_tok"] == "minimize"
    assert got.seeds == ["train.seed", "data.seed"] and got.data_files == ["data.path"]
    assert got.prepare and got.tracking is not None and got.tracking.mode == "tracking.mode"
    assert set(got.tracking.modes) == {"online", "offline", "disabled"}


def _script(path: Path, body: str) -> list[str]:
    path.write_text("import json, os, pathlib, sys\n"
                    "log = os.environ.get('DESCRIBE_LOG')\n"
                    "if log:\n"
                    "    with open(log, 'a') as f: f.write(' '.join(sys.argv[1:]) + '\\n')\n"
                    + body)
    return [sys.executable, str(path)]


def test_a_program_without_describe_gets_the_defaults_once(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "calls.log"
    monkeypatch.setenv("DESCRIBE_LOG", str(log))
    program = _script(tmp_path / "old.py", "sys.exit(2)\n")
    assert describe(program, cache_dir=tmp_path / "c") == Description()
    assert describe(program, cache_dir=tmp_path / "c") == Description()
    assert log.read_text().splitlines() == ["describe"]  # the second answer came from the cache
    defaults = Description()
    assert (defaults.data_files, defaults.seeds, defaults.prepare, defaults.metrics) == \
        ([], [], False, [])


def test_an_edited_program_is_asked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "calls.log"
    monkeypatch.setenv("DESCRIBE_LOG", str(log))
    said = {"seeds": ["a.seed"], "metrics": [{"name": "m", "goal": "maximize"}]}
    program = _script(tmp_path / "p.py", f"print(json.dumps({said!r}))\n")
    first = describe(program, cache_dir=tmp_path / "c")
    assert first.seeds == ["a.seed"] and first.metrics[0].goal == "maximize"
    _script(tmp_path / "p.py", "print(json.dumps({'seeds': ['b.seed']}))\n")
    assert describe(program, cache_dir=tmp_path / "c").seeds == ["b.seed"]
    assert len(log.read_text().splitlines()) == 2


@pytest.mark.parametrize("answer, words", [
    ('print("not json")', "printed no valid description"),
    ('print(json.dumps({"metrics": [{"name": "m", "goal": "up"}]}))', "metrics.0.goal"),
    ('print(json.dumps({"exit_codes": {"3": "oom"}}))', "3 means diverged, not oom"),
])
def test_a_wrong_description_is_a_contract_error(tmp_path: Path, answer: str,
                                                 words: str) -> None:
    with pytest.raises(ContractError, match=words) as caught:
        describe(_script(tmp_path / "p.py", answer + "\n"), cache_dir=tmp_path / "c")
    # One line a user can read: no pydantic links or line breaks.
    assert "\n" not in str(caught.value) and "errors.pydantic.dev" not in str(caught.value)


def test_a_spec_names_only_a_declared_metric(orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", metric={"name": "val_accuracy", "goal": "maximize"})
    proc = run_orch(["validate", str(spec)], orch_env(orch_home))
    assert proc.returncode == 2
    assert "unknown metric 'val_accuracy'; the program reports val_loss, val_coverage" in \
        proc.stderr.replace("\n", " ")
    assert "Traceback" not in proc.stderr


def test_a_program_with_a_wrong_description_is_refused_before_anything_runs(
        orch_home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import json; print(json.dumps({'exit_codes': {'5': 'finished'}}))\n")
    spec = write_spec(tmp_path / "s.yaml", program=f"{sys.executable} {bad}")
    proc = run_orch(["sweep", str(spec)], orch_env(orch_home))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "5 means oom, not finished" in proc.stderr and "Traceback" not in proc.stderr
    assert not (orch_home / "runs").exists()  # nothing launched


def test_the_description_model_is_the_contract_modules() -> None:
    # The shape `describe` prints is defined once, in the contract: a field the trainer prints
    # that the model does not know would be dropped silently.
    from trainer.describe import description

    assert set(json.loads(json.dumps(description()))) == set(Description.model_fields)
