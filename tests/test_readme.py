"""The README's set-up and quick-start commands, taken from the README itself, so they cannot rot.

The set-up commands are what `.ci/run` executes on every fresh clone (checked here line by line);
the quick-start commands run here for real, with the ledger in a temporary ORCH_HOME, and what
they print must be the README's samples of it (scripts/readme_samples.py writes those).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from readme_samples import (BAD_SPEC, ROOT, SAMPLES, Sample, embedded,  # noqa: E402
                            execute, normalised, printed, shown)

README = (ROOT / "README.md").read_text()
REGENERATE = "the README's sample is not what the command prints: run scripts/readme_samples.py"


def section(title_prefix: str) -> str:
    """The text of the README's `## <title...>` section, up to the next `## ` heading."""
    match = re.search(rf"(?ms)^## {re.escape(title_prefix)}.*?(?=^## )", README)
    assert match, f"README has no section starting '## {title_prefix}'"
    return match.group(0)


def commands(text: str) -> list[str]:
    """Shell commands in a section's ```bash blocks, with `\\` continuations joined."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        found += [line.split("  #")[0].strip() for line in joined.splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    return found


def test_setup_is_two_commands_that_ci_runs_verbatim() -> None:
    setup = commands(section("Set-up"))
    assert len(setup) == 2, setup
    ci = (ROOT / ".ci" / "run").read_text()
    for command in setup:
        for part in command.split(" && "):
            assert part in ci, f".ci/run does not run the README's `{part}`"


def sample(name: str) -> Sample:
    return next(x for x in SAMPLES if x.name == name)


def assert_prints_sample(name: str, res: subprocess.CompletedProcess[str], tmp: Path) -> None:
    """The command's output is the README's sample, but for what varies between runs."""
    got = printed(sample(name), res.stdout, res.stderr, tmp)
    assert normalised(got) == normalised(embedded(README, sample(name))), REGENERATE + "\n" + got


def test_every_sample_is_in_the_readme_with_its_command() -> None:
    for s in SAMPLES:
        assert embedded(README, s).strip(), f"sample {s.name} is empty: {REGENERATE}"
        assert shown(README, s.command), s.command


@pytest.mark.parametrize("command", commands(section("Quick start")))
def test_quick_start_command_runs(command: str, tmp_path: Path) -> None:
    res = execute(command, tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    if "orch" in command and " sweep " in f" {command} ":
        assert res.stdout.count("finished") >= 6  # every grid trial, in the final table
        assert_prints_sample("quick-start", res, tmp_path)
        for table in (sample("quick-start-markdown"), sample("quick-start-baseline")):
            assert_prints_sample(table.name, execute(table.command, tmp_path, timeout=60),
                                 tmp_path)
    else:
        assert "validation_step" in res.stdout
        assert_prints_sample("by-hand", res, tmp_path)


def test_spec_error_sample(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD_SPEC.format(base=ROOT / "sweeps" / "base_tiny.yaml"))
    res = execute(sample("spec-error").command, tmp_path, tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    assert_prints_sample("spec-error", res, tmp_path)


def test_normalised_blanks_only_what_varies() -> None:
    table = ("sweep smoke (12 s this run)\n┏━━━┳━━━━━━━━━━┓\n┃ val_loss ┃ tokens/s ┃\n"
             "│   2.0298 ★ │   59,635 │\n└──┴──┘\n")
    other = table.replace("12 s", "7 s").replace("59,635", "123,456 ").replace("━━━━", "━")
    assert normalised(table) == normalised(other)
    assert normalised(table) != normalised(table.replace("2.0298", "2.0299"))
    events = "12:00:01 [smoke] trial 1 finished\n12:00:02 [smoke] trial 2 finished\n"
    swapped = "13:10:00 [smoke] trial 2 finished\n13:10:01 [smoke] trial 1 finished\n"
    assert normalised(events + table) == normalised(swapped + table)
    assert normalised(events) != normalised(events.replace("trial 2", "trial 3"))
    line = "[    1/42] validation_step: loss=2.321939 bpb=4.0631 time=7.06s\n"
    assert normalised(line) == normalised(line.replace("7.06s", "1.15s"))
    assert normalised(line) != normalised(line.replace("loss=2.32", "loss=2.33"))
