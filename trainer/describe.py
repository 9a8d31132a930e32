"""What the trainer declares to an orchestrator: `python -m trainer describe` prints it as JSON.

An orchestrator knows no key of this config by name; it learns here which keys are the data
file, which determine the prepared data (the cache `prepare` fills), which are seeds, which sets
the W&B mode, which metrics a run reports and how each is judged, and what each exit code means.
Torch-free: the answer costs only the config's import.
"""

from __future__ import annotations

from typing import Any, get_args

from trainer import exitcodes
from trainer.config import TrackingConfig

# The metrics evaluate() returns (trainer/metrics.py), in the order tables show them.
METRIC_GOALS: tuple[dict[str, Any], ...] = (
    {"name": "val_loss", "goal": "minimize", "unit": "nats per character"},
    {"name": "val_coverage", "goal": "maximize", "label": "coverage", "share": True,
     "unit": "share of validation tokens"},
    {"name": "val_bpb", "goal": "minimize", "unit": "bits per UTF-8 byte"},
    {"name": "val_loss_tok", "goal": "minimize", "unit": "nats per token"},
)

EXIT_MEANINGS = {exitcodes.FINISHED: "finished", exitcodes.CRASHED: "crashed",
                 exitcodes.BAD_INPUT: "bad_input", exitcodes.DIVERGED: "diverged",
                 exitcodes.OOM: "oom", exitcodes.STOPPED_SIGINT: "stopped",
                 exitcodes.STOPPED_SIGTERM: "stopped"}


def description() -> dict[str, Any]:
    """The trainer's declarations, as `describe` prints them."""
    return {
        "data_files": ["data.path"],
        # Everything the data cache key covers, and the batch shape a run checks the tokens by.
        "data_keys": ["data.", "tokenizer.", "train.batch_size", "train.context_length"],
        "seeds": ["train.seed", "data.seed"],
        "tracking": {"mode": "tracking.mode",
                     "modes": list(get_args(TrackingConfig.model_fields["mode"].annotation)),
                     "project": "tracking.project", "entity": "tracking.entity"},
        "metrics": list(METRIC_GOALS),
        "prepare": True,
        "exit_codes": {str(code): meaning for code, meaning in EXIT_MEANINGS.items()},
    }
