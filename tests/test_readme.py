"""The README's set-up and quick-start commands, taken from the README itself, so they cannot rot.

The set-up commands are what `.ci/run` executes on every fresh clone (checked here line by line);
the quick-start commands run here for real, with the ledger in a temporary ORCH_HOME.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


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


def as_here(command: str, tmp: Path) -> list[str]:
    """The command for this interpreter, writing its run dirs under tmp."""
    argv = shlex.split(command)
    venv = {".venv/bin/python": [sys.executable],
            ".venv/bin/orch": [sys.executable, "-m", "orchestrator"]}
    argv = venv.get(argv[0], argv[:1]) + argv[1:]
    return [str(tmp / a) if a.startswith("runs/") else a for a in argv]


def test_setup_is_two_commands_that_ci_runs_verbatim() -> None:
    setup = commands(section("Set-up"))
    assert len(setup) == 2, setup
    ci = (ROOT / ".ci" / "run").read_text()
    for command in setup:
        for part in command.split(" && "):
            assert part in ci, f".ci/run does not run the README's `{part}`"


@pytest.mark.parametrize("command", commands(section("Quick start")))
def test_quick_start_command_runs(command: str, tmp_path: Path) -> None:
    env = {**os.environ, "ORCH_HOME": str(tmp_path / ".orch"), "COLUMNS": "200",
           "ORCH_CACHE_DIR": str(tmp_path / "cache")}
    res = subprocess.run(as_here(command, tmp_path), cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    if "orch" in command and " sweep " in f" {command} ":
        assert res.stdout.count("finished") >= 6  # every grid trial, in the final table
    else:
        assert "validation_step" in res.stdout
