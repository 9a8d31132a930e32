"""Regenerate the README's generated sections (config and spec references) from the models.

    .venv/bin/python scripts/sync_readme.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "config-reference": [sys.executable, "-m", "trainer", "docs"],
    "spec-reference": [sys.executable, "-m", "orchestrator", "docs"],
}


def marked(name: str) -> tuple[str, str]:
    """The start and end markers of a generated section."""
    return f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"


def generated(name: str) -> str:
    """What the section should hold, straight from the command that renders the model."""
    return subprocess.run(SECTIONS[name], capture_output=True, text=True, check=True,
                          cwd=ROOT).stdout


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name in SECTIONS:
        start, end = marked(name)
        i, j = text.index(start) + len(start), text.index(end)
        text = text[:i] + generated(name) + text[j:]
    readme.write_text(text)


if __name__ == "__main__":
    main()
