"""The README's generated sections match the pydantic models they are rendered from."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from sync_readme import ROOT, SECTIONS, generated, marked  # noqa: E402


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_readme_section_is_generated_from_the_model(name: str) -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = marked(name)
    embedded = readme[readme.index(start) + len(start) : readme.index(end)]
    assert embedded == generated(name), "run: .venv/bin/python scripts/sync_readme.py"
    assert embedded.count("\n|") > 10
