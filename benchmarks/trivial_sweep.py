"""The one-slot sweep of trivial contract trials that the launcher overhead benchmarks time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def trivial_spec(prog: Path, trials: int, launcher: dict[str, Any]) -> dict[str, Any]:
    """A grid of `trials` runs of the program `prog`, one at a time on the CPU, on `launcher`."""
    return {"name": "bench", "base": str(REPO / "sweeps" / "base_tiny.yaml"),
            "program": f"python {prog}", "method": "grid",
            "parameters": {"train.seed": {"values": list(range(1, trials + 1))}},
            "resources": {"gpus": None, "cpu_slots": 1}, "launcher": launcher}
