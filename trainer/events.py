"""The run's files: `events.jsonl` (appended as the run goes) and `result.json` (atomic, at the end).

Every event is one JSON object per line: {"event": NAME, "time": unix seconds, ...fields}.
Names: hyperparameters_configured, device_info, dataset_info, model_configured, model_info,
training_step, validation_step, run_finished, run_failed, eval_configured, warning.
- device_info: device, torch, threads, precision (the one used: `auto` resolved), cuda
- eval_configured: batch_size, context_length, tokens_per_batch, challenge_tokens_per_batch, ema
- warning: message (e.g. an eval batch x context that changes val_loss's coverage)
- training_step: step, max_steps, loss, lr, elapsed
- validation_step: step, max_steps, epoch, val_loss, val_loss_tok, val_bpb, val_coverage, elapsed
- run_finished / run_failed: status, reason

result.json: status (finished | diverged | failed | stopped), reason, exit_code, steps, max_steps,
final {metric: value}, best {metric: value, "step": step of the best val_loss}, tokens_per_s,
parameters, wall_time_s, config_hash, config (resolved), versions.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line stays parseable."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventLog:
    """Appends one JSON line per event and flushes, so a tailing orchestrator sees it at once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: TextIO = open(path, "a", encoding="utf-8")

    def log(self, event: str, **fields: Any) -> None:
        """Write one event now."""
        line = json.dumps(_clean({"event": event, "time": time.time(), **fields}))
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        """Flush to disk and close."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON to a temp file in the same dir, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_clean(payload), f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_events(path: Path) -> list[dict[str, Any]]:
    """Parse an events.jsonl; a torn last line (a run killed mid-write) is skipped."""
    events = []
    if not path.exists():
        return events
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events
