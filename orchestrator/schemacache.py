"""Programs' JSON Schemas cached on disk, keyed by what each schema is computed from.

Every `orch validate` and `orch sweep` needs the program's schema, and asking the program costs
its start-up. The key covers the argv, this interpreter (path, version, its site-packages) and
the source files the program runs from: for `python -m pkg`, every `.py` file of the package
found the way the child would find it; for `python script.py`, that file. So an edited trainer
is asked again, and a program whose sources cannot be known (another interpreter, a binary) is
asked every time. Entries appear by atomic rename, so concurrent writers never tear one.
A program's `describe` answer is cached here the same way, keyed by its own argv.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tempfile
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

from orchestrator.ledger import orch_home


def default_dir() -> Path:
    """ORCH_CACHE_DIR/schema when set, else ORCH_HOME/cache/schema (beside the data cache)."""
    return Path(os.environ.get("ORCH_CACHE_DIR") or orch_home() / "cache") / "schema"


def _module_files(name: str) -> list[Path] | None:
    top = name.split(".")[0]
    # The child puts its working directory first on sys.path (unless PYTHONSAFEPATH is set);
    # meta-path finders (editable installs) come after the path entries.
    search = ([] if os.environ.get("PYTHONSAFEPATH") else [os.getcwd()]) + sys.path
    spec = PathFinder.find_spec(top, search) or importlib.util.find_spec(top)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return sorted(f for root in spec.submodule_search_locations
                      for f in Path(root).rglob("*.py"))
    return [Path(spec.origin)] if spec.origin and Path(spec.origin).is_file() else None


def source_files(program: list[str]) -> list[Path] | None:
    """The files `program` runs from, or None when they cannot be known without running it."""
    if len(program) < 2 or os.path.realpath(program[0]) != os.path.realpath(sys.executable):
        return None
    if program[1] == "-m" and len(program) > 2:
        return _module_files(program[2])
    script = Path(program[1])
    return [script.resolve()] if not program[1].startswith("-") and script.is_file() else None


def cache_key(program: list[str]) -> str | None:
    """A hash of the argv, the interpreter and the program's sources; None: do not cache."""
    files = source_files(program)
    if files is None:
        return None
    h = hashlib.sha256()
    sites = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    h.update(json.dumps([program, sys.executable, sys.version,
                         # an install or upgrade in the interpreter's environment changes these
                         [(p, os.stat(p).st_mtime_ns) for p in sites]]).encode())
    for path in files:
        h.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:32]


def load(cache_dir: Path, key: str) -> dict[str, Any] | None:
    """The cached schema, or None when absent or unreadable."""
    try:
        data = json.loads((cache_dir / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def store(cache_dir: Path, key: str, schema: dict[str, Any]) -> None:
    """Write the entry atomically; a cache that cannot be written is simply not used."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=cache_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(schema, f)
            os.replace(tmp, cache_dir / f"{key}.json")
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass
