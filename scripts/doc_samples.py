"""Regenerate the sample outputs in README.md and docs/ from real runs, so that what they show
is what orch prints.

    .venv/bin/python scripts/doc_samples.py

Runs each sample's command as its page writes it (from the repository root, with the ledger
in a temporary ORCH_HOME and run dirs in a temporary folder; the quick start's titles file must
be at ../shared/data/hacker_news.csv) and writes what it printed into that page between
`<!-- sample:NAME:start -->` and `<!-- sample:NAME:end -->`. It takes a few minutes on a 2-core
CPU (the quick-start sweep trains six tiny models). tests/test_readme.py runs the same commands
and compares their output with these samples through `normalised`, which blanks only what varies
from run to run: durations, throughput, clock times, temporary paths, and the order of the event
lines of trials that run in parallel.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK_START = "orch sweep sweeps/smoke.yaml --data ../shared/data/hacker_news.csv"
BY_HAND = ("python -m trainer --config sweeps/base_tiny.yaml --out runs/tiny "
           "data.path=../shared/data/hacker_news.csv")
# docs/sweeps.md's example of a spec error: line 5 names a field the trainer does not have.
BAD_SPEC = """\
name: bad
base: {base}
method: grid
parameters:
  model.n_heads: {{values: [2, 4]}}
"""
VOLATILE_COLUMNS = {"tokens/s", "wall s"}  # throughput and durations of a table
VOLATILE_TEXT = [  # (pattern, stable form) for the same in running text
    (r"\d+ s this run", "… s this run"),
    (r"time=\d+(\.\d+)?s", "time=…s"),
    (r"\b\d\d:\d\d:\d\d\b", "HH:MM:SS"),
    (r"sweep ETA (?:~[^;\n]*\d+ ?[a-z]+|unknown)", "sweep ETA …"),  # follows the durations
]


@dataclass(frozen=True)
class Sample:
    """A printed output a page shows: the command that prints it, as the page writes it, the
    page (relative to the repository root), which streams it shows (stderr first: warnings come
    before the run), and its fence."""

    name: str
    command: str
    page: str
    streams: tuple[str, ...] = ("stdout",)
    fence: bool = True


SAMPLES = [
    Sample("quick-start", QUICK_START, "docs/sweeps.md"),
    Sample("quick-start-markdown", "orch results smoke --format markdown", "README.md",
           fence=False),
    Sample("quick-start-baseline", "orch results smoke --baseline "
           "optim.lr=0.001,model.n_layer=1 --format markdown", "docs/results.md", fence=False),
    Sample("by-hand", BY_HAND, "docs/trainer.md", ("stderr", "stdout")),
    Sample("spec-error", "orch validate bad.yaml", "docs/sweeps.md", ("stderr",)),
]


def as_here(command: str, tmp: Path) -> list[str]:
    """A page's command for this interpreter (`orch`, `python` and their `.venv/bin/`
    forms), writing its run dirs under tmp."""
    argv = shlex.split(command)
    python = [sys.executable]
    orch = [sys.executable, "-m", "orchestrator"]
    venv = {"python": python, ".venv/bin/python": python, "orch": orch, ".venv/bin/orch": orch}
    argv = venv.get(argv[0], argv[:1]) + argv[1:]
    return [str(tmp / a) if a.startswith("runs/") else a for a in argv]


def env_for(tmp: Path) -> dict[str, str]:
    """A private ledger and data cache in tmp; no COLUMNS, as in a pipe or a CI log."""
    env = {**os.environ, "ORCH_HOME": str(tmp / ".orch"), "ORCH_CACHE_DIR": str(tmp / "cache")}
    env.pop("COLUMNS", None)
    return env


def execute(command: str, tmp: Path, cwd: Path = ROOT,
            timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run a page's command here; its output as text with each `\\r` kept (text mode would
    turn them into line breaks)."""
    res = subprocess.run(as_here(command, tmp), cwd=cwd, env=env_for(tmp), capture_output=True,
                         timeout=timeout)
    return subprocess.CompletedProcess(res.args, res.returncode, res.stdout.decode(),
                                       res.stderr.decode())


def run(sample: Sample, tmp: Path) -> str:
    """What the sample's command prints, with tmp written as `.` (the pages' paths are
    relative). Raises when it fails, since a sample of a failure the page does not mean
    would be a lie (the spec error is meant: exit 2)."""
    res = execute(sample.command, tmp, tmp if sample.name == "spec-error" else ROOT)
    expected = 2 if sample.name == "spec-error" else 0
    if res.returncode != expected:
        raise RuntimeError(f"`{sample.command}` exited {res.returncode}:\n"
                           f"{res.stdout[-3000:]}{res.stderr[-3000:]}")
    return printed(sample, res.stdout, res.stderr, tmp)


def printed(sample: Sample, stdout: str, stderr: str, tmp: Path) -> str:
    """The streams the sample shows, joined, as a terminal leaves them (a line that returns
    the cursor, `\\r`, shows what follows it), trailing spaces cut, tmp made relative."""
    text = "".join({"stdout": stdout, "stderr": stderr}[s] for s in sample.streams)
    text = text.replace(f"{tmp}/", "").replace(str(tmp), ".")
    return "\n".join(line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")).rstrip() \
        + "\n"


def normalised(text: str) -> str:
    """The text with what varies between runs in stable form, and table borders and column
    widths (which follow those values) left out."""
    for pattern, stable in VOLATILE_TEXT:
        text = re.sub(pattern, stable, text)
    lines, volatile, events = [], set(), []
    for line in text.splitlines():
        line = line.strip()
        if re.match(r"HH:MM:SS \[", line):  # trials in parallel: their events' order varies
            events.append(line)
            continue
        lines += sorted(events)
        events = []
        if not line or line[0] in "┏┡└" or re.fullmatch(r"\|[-:|]+\|", line):
            continue  # borders and the Markdown separator row
        if line[0] in "┃│|":
            cells = [c.strip() for c in line[1:-1].split(line[0])]
            if VOLATILE_COLUMNS & set(cells):  # a header row: which columns vary
                volatile = {i for i, c in enumerate(cells) if c in VOLATILE_COLUMNS}
            else:
                cells = ["…" if i in volatile else c for i, c in enumerate(cells)]
            line = " | ".join(cells)
        lines.append(line)
    return "\n".join(lines + sorted(events)) + "\n"


def marked(name: str) -> tuple[str, str]:
    """The start and end markers of a sample in its page."""
    return f"<!-- sample:{name}:start -->\n", f"<!-- sample:{name}:end -->"


def page_text(sample: Sample) -> str:
    """The page that shows the sample, as it is now."""
    return (ROOT / sample.page).read_text()


def embedded(page: str, sample: Sample) -> str:
    """The sample as its page holds it, without its fence."""
    start, end = marked(sample.name)
    text = page[page.index(start) + len(start): page.index(end)]
    return text.removeprefix("```\n").removesuffix("```\n") if sample.fence else text


def embed(page: str, sample: Sample, text: str) -> str:
    """The page with the sample's text between its markers."""
    start, end = marked(sample.name)
    i, j = page.index(start) + len(start), page.index(end)
    return page[:i] + (f"```\n{text}```\n" if sample.fence else text) + page[j:]


def shown(page: str, command: str) -> bool:
    """Whether the page writes the command (a `\\` continuation joined)."""
    return command in page.replace("\\\n    ", "")


def main() -> None:
    for sample in SAMPLES:
        assert shown(page_text(sample), sample.command), \
            f"{sample.page} no longer shows `{sample.command}`"
    with tempfile.TemporaryDirectory(prefix="orch-samples-") as name:
        tmp = Path(name)
        (tmp / "bad.yaml").write_text(BAD_SPEC.format(base=ROOT / "sweeps" / "base_tiny.yaml"))
        for sample in SAMPLES:  # in order: the results sample reads the quick start's ledger
            print(f"running `{sample.command}`", file=sys.stderr)
            text = run(sample, tmp)
            (ROOT / sample.page).write_text(embed(page_text(sample), sample, text))


if __name__ == "__main__":
    main()
