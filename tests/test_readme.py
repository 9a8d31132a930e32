"""The README's set-up and quick-start commands, taken from the README itself, so they cannot rot.

The set-up commands are what `.ci/run` executes on every fresh clone (checked here line by line);
the quick-start commands run here for real, in order, with the ledger in a temporary ORCH_HOME,
and what they print must be the samples of it in the README and docs/ (scripts/doc_samples.py
writes those). The other samples (a run of the trainer by hand, a spec error) run here too.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from doc_samples import (BAD_SPEC, QUICK_START, ROOT, SAMPLES, Sample,  # noqa: E402
                         embedded, execute, normalised, page_text, printed, shown)

README = (ROOT / "README.md").read_text()
REGENERATE = "the page's sample is not what the command prints: run scripts/doc_samples.py"


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


def assert_prints_sample(s: Sample, res: subprocess.CompletedProcess[str], tmp: Path) -> None:
    """The command's output is its page's sample, but for what varies between runs."""
    got = printed(s, res.stdout, res.stderr, tmp)
    assert normalised(got) == normalised(embedded(page_text(s), s)), \
        f"{s.page}: {REGENERATE}\n{got}"


def test_every_sample_is_on_its_page_with_its_command() -> None:
    for s in SAMPLES:
        page = page_text(s)
        assert embedded(page, s).strip(), f"sample {s.name} in {s.page} is empty: {REGENERATE}"
        assert shown(page, s.command), f"{s.page} does not show `{s.command}`"


def test_quick_start_runs_and_prints_its_samples(tmp_path: Path) -> None:
    """The README's quick start, command by command in one ledger, as a reader would type it;
    then the results sample of docs/results.md on the ledger it left."""
    quick_start = commands(section("Quick start"))
    assert quick_start[0] == QUICK_START, quick_start
    by_command = {s.command: s for s in SAMPLES}
    for command in quick_start:
        res = execute(command, tmp_path, timeout=600)
        assert res.returncode == 0, command + "\n" + res.stdout[-2000:] + res.stderr[-2000:]
        if command == QUICK_START:
            assert res.stdout.count("finished") >= 6  # every grid trial, in the final table
            _assert_the_sweep_ran_whole(tmp_path)
        if command in by_command:
            assert_prints_sample(by_command[command], res, tmp_path)
    baseline = sample("quick-start-baseline")
    assert_prints_sample(baseline, execute(baseline.command, tmp_path, timeout=60), tmp_path)


def _assert_the_sweep_ran_whole(tmp: Path) -> None:
    """The quick start's sweep as the ledger holds it: every trial finished with its metrics,
    progress tailed to the last step, one data cache shared by the trials."""
    from orchestrator.ledger import Ledger
    from orchestrator.states import TrialState

    trials = Ledger(tmp / ".orch", readonly=True).trials("smoke")
    assert len(trials) == 6 and all(t.state == TrialState.FINISHED for t in trials)
    assert all(t.final.get("val_loss") and 0 < t.final["val_coverage"] <= 1 for t in trials)
    assert all(t.step == t.max_steps for t in trials)  # progress tailed from events.jsonl
    assert len({t.final["val_loss"] for t in trials}) > 1
    assert any((tmp / "cache").iterdir())


def test_by_hand_sample(tmp_path: Path) -> None:
    s = sample("by-hand")
    res = execute(s.command, tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "validation_step" in res.stdout
    assert_prints_sample(s, res, tmp_path)


def test_spec_error_sample(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD_SPEC.format(base=ROOT / "sweeps" / "base_tiny.yaml"))
    s = sample("spec-error")
    res = execute(s.command, tmp_path, tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    assert_prints_sample(s, res, tmp_path)


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
