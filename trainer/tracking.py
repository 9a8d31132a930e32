"""Weights & Biases logging for one run: disabled, offline (sync later) or online.

Under a W&B agent (WANDB_SWEEP_ID set) the run joins the agent's sweep run and the agent's
parameters (dotted keys such as `optim.lr`) override the config. The API key is read by wandb
from its own environment or netrc; in a container it arrives as a file named by
WANDB_API_KEY_FILE (never as a variable `docker inspect` would show), which we hand to wandb
through this process's environment only. We never log or store it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainer.config import Config, build_config, set_dotted


class Tracker:
    """A thin wrapper so the loop calls log/finish without caring whether W&B is on."""

    def __init__(self, run: Any = None) -> None:
        self.run = run

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Log metrics at a step (no-op when disabled)."""
        if self.run is not None:
            self.run.log({k: v for k, v in metrics.items() if v is not None}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        """Set summary values (the final and best metrics)."""
        if self.run is not None:
            for key, value in values.items():
                if value is not None:
                    self.run.summary[key] = value

    def finish(self, ok: bool) -> None:
        """Close the run; a non-zero exit code marks it failed on W&B, never finished."""
        if self.run is not None:
            self.run.finish(exit_code=0 if ok else 1)


def under_agent() -> bool:
    """True when a W&B agent launched this process for one of its sweep's runs."""
    return bool(os.environ.get("WANDB_SWEEP_ID"))


def start_tracking(cfg: Config, out_dir: Path) -> tuple[Tracker, Config]:
    """Start W&B per cfg.tracking; under an agent, return the config with its parameters applied."""
    agent = under_agent()
    if cfg.tracking.mode == "disabled" and not agent:
        return Tracker(), cfg
    import wandb

    key_file = os.environ.get("WANDB_API_KEY_FILE")
    if key_file and not os.environ.get("WANDB_API_KEY"):
        try:
            os.environ["WANDB_API_KEY"] = Path(key_file).read_text().strip()
        except OSError:
            pass  # no key: offline runs need none; online ones fail in wandb.init, saying why
    t = cfg.tracking
    run = wandb.init(
        project=t.project, entity=t.entity, tags=t.tags or None,
        mode=t.mode if not agent else None, dir=str(out_dir),
        config=None if agent else cfg.model_dump(mode="json"),
    )
    if agent:
        tree = cfg.model_dump(mode="json")
        for key, value in dict(run.config).items():
            set_dotted(tree, key, value)
        cfg = build_config(tree, "W&B agent parameters")
        run.config.update({"resolved": cfg.model_dump(mode="json")}, allow_val_change=True)
    return Tracker(run), cfg
