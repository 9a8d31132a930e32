"""Every spec in sweeps/ validates, and the sparse grid skips exactly the invalid patterns."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(p for p in (ROOT / "sweeps").glob("*.yaml")
               if "method" in (yaml.safe_load(p.read_text()) or {}))


def orch(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=180,
                          env={**os.environ, "ORCH_HOME": str(home), "COLUMNS": "400"})


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_spec_validates(spec: Path, tmp_path: Path) -> None:
    res = orch("validate", str(spec), home=tmp_path)
    assert res.returncode == 0, res.stderr


CONFIGS = sorted(p for p in (ROOT / "sweeps").glob("*.yaml") if p not in SPECS)


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_trainer_config_loads(config: Path) -> None:
    """The trainer configs (bases, mainrun_best) are checked by the trainer's own model, so a
    typo fails here rather than on a GPU."""
    from trainer.config import load_config

    cfg = load_config(config)
    if config.stem != "base_tiny":  # the others keep the challenge's split, seed and 7 epochs
        assert (cfg.data.val_frac, cfg.data.seed, cfg.train.epochs) == (0.1, 1337, 7)


def fixed_pattern_ok(n_head: int, block: int, L: int, num_verts: int, vertsize: int,
                     context: int) -> bool:
    """The fixed pattern's constraints as the issue states them."""
    if L % block:
        return False
    s = L // block
    return (s % vertsize == 0 and num_verts * vertsize <= s and n_head % num_verts == 0
            and context % L == 0)


def test_sparse_grid_skips_exactly_the_invalid_points(tmp_path: Path) -> None:
    """It crosses values, so some patterns are invalid: it opts in to skipping them."""
    spec = yaml.safe_load((ROOT / "sweeps" / "sparse_grid.yaml").read_text())
    p = {k: v["values"] for k, v in spec["parameters"].items()}
    context = spec["overrides"]["train.context_length"]
    points = list(itertools.product(p["model.n_head"], p["attention.block"],
                                    p["attention.local_attn_ctx"], p["attention.num_verts"],
                                    p["attention.vertsize"], p["attention.qk_dim"]))
    valid = [pt for pt in points if fixed_pattern_ok(*pt[:5], context)]
    assert 0 < len(valid) < len(points)
    res = orch("sweep", str(ROOT / "sweeps" / "sparse_grid.yaml"), "--dry-run", "--no-probe",
               home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"{len(valid)} trial(s) would run" in res.stdout
    assert f"{len(valid)} of {len(points)} grid points remain" in res.stderr
    # Its one cause, once, with the count (not one line per point).
    assert f"- {len(points) - len(valid)} grid points: sparse fixed pattern" in res.stderr
    assert res.stderr.count("e.g. ") == 1
    assert not (tmp_path / "runs").exists()  # a dry run launches nothing
