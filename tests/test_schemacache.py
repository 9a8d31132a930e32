"""The schema cache: a program is asked for its schema again exactly when what it runs from changes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from orchestrator import schemacache
from orchestrator.contract import ContractError, fetch_schema

PROGRAM = '''import json, sys
from pathlib import Path
if sys.argv[1:] == ["schema"]:
    with open(Path(__file__).with_name("asked.log"), "a") as f:
        f.write("asked\\n")
    print(json.dumps({"title": TITLE}))
'''


def _asked(where: Path) -> int:
    log = where / "asked.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_script_is_asked_once_until_it_changes(tmp_path: Path) -> None:
    script, cache = tmp_path / "prog.py", tmp_path / "cache"
    script.write_text("TITLE = 'one'\n" + PROGRAM)
    program = [sys.executable, str(script)]
    assert fetch_schema(program, cache_dir=cache) == {"title": "one"}
    assert fetch_schema(program, cache_dir=cache) == {"title": "one"}
    assert _asked(tmp_path) == 1
    script.write_text("TITLE = 'two'\n" + PROGRAM)
    assert fetch_schema(program, cache_dir=cache) == {"title": "two"}
    assert _asked(tmp_path) == 2
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]


def test_a_package_is_asked_again_when_any_of_its_modules_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg, cache = tmp_path / "fakepkg_schema", tmp_path / "cache"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "names.py").write_text("TITLE = 'one'\n")
    (pkg / "__main__.py").write_text("from fakepkg_schema.names import TITLE\n" + PROGRAM)
    monkeypatch.chdir(tmp_path)  # `python -m` finds the package in the working directory
    program = [sys.executable, "-m", "fakepkg_schema"]
    assert fetch_schema(program, cache_dir=cache) == {"title": "one"}
    assert fetch_schema(program, cache_dir=cache) == {"title": "one"}
    assert _asked(pkg) == 1
    (pkg / "names.py").write_text("TITLE = 'two'\n")
    assert fetch_schema(program, cache_dir=cache) == {"title": "two"}
    assert _asked(pkg) == 2


def test_programs_of_unknown_source_are_always_asked(tmp_path: Path) -> None:
    assert schemacache.cache_key(["/bin/sh", "-c", "true"]) is None
    assert schemacache.cache_key([sys.executable, "-c", "print(1)"]) is None
    with pytest.raises(ContractError, match="printed no JSON"):
        fetch_schema(["/bin/sh", "-c", "echo hello"], cache_dir=tmp_path)
    assert not tmp_path.joinpath("cache").exists() and not list(tmp_path.iterdir())


def test_an_unreadable_entry_is_a_miss(tmp_path: Path) -> None:
    script, cache = tmp_path / "prog.py", tmp_path / "cache"
    script.write_text("TITLE = 'one'\n" + PROGRAM)
    program = [sys.executable, str(script)]
    key = schemacache.cache_key(program)
    cache.mkdir()
    (cache / f"{key}.json").write_text('{"title": ')  # torn by a crash of an older writer
    assert fetch_schema(program, cache_dir=cache) == {"title": "one"}
    assert json.loads((cache / f"{key}.json").read_text()) == {"title": "one"}
