"""Shared fixtures: the real Hacker News titles that sit beside the repository."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from orch_helpers import unavailable


@pytest.fixture(scope="session")
def titles_csv() -> Path:
    """The real titles file (20,099 rows, column `title`) in ../shared/data."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "hacker_news.csv"
    if not path.is_file():  # CI always has them: there a missing file is a failure
        unavailable(f"real titles not found at {path}")
    return path


@pytest.fixture
def tiny_titles(titles_csv: Path, tmp_path: Path) -> Path:
    """A CSV of the first 2000 real titles (column `title` only), for fast tests."""
    with titles_csv.open(newline="", encoding="utf-8") as fh:
        titles = [row["title"] for _, row in zip(range(2000), csv.DictReader(fh))]
    out = tmp_path / "tiny_titles.csv"
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["title"])
        writer.writerows([t] for t in titles)
    return out


@pytest.fixture(scope="session")
def fake_schema_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trainer's JSON Schema saved once, so the fake trainer's `schema` skips torch."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("schema") / "schema.json"
    proc = subprocess.run([sys.executable, "-m", "trainer", "schema"], capture_output=True,
                          text=True, check=True)
    out.write_text(proc.stdout)
    return out


@pytest.fixture
def orch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_schema_file: Path) -> Path:
    """A private ORCH_HOME (ledger, runs, cache) for one orchestrator test."""
    home = tmp_path / "orch-home"
    monkeypatch.setenv("ORCH_HOME", str(home))
    monkeypatch.setenv("FAKE_SCHEMA_FILE", str(fake_schema_file))
    monkeypatch.setenv("FAKE_LOG", str(home / "starts.log"))
    monkeypatch.setenv("FAKE_SCRIPT", "{}")
    return home
