"""Validation metrics.

`val_loss` is the mainrun challenge's number: summed token cross-entropy over the *full*
validation batches (span B*T+1, stepped by span), divided by the validation text's character
count. It skips one target between batches and the tail, so it scores only part of the
validation tokens, and a larger eval batch x context scores fewer. We therefore also score every
remaining validation target once (the challenge's losses are reused, the rest get their own
context of up to T preceding tokens) and report:
- `val_loss_tok`: nats per validation token, over every token;
- `val_bpb`: bits per UTF-8 byte of the validation text, over every token;
- `val_coverage`: the share of validation tokens that `val_loss` scored.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Callable

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]
# What `evaluate` returns, in this order: the names validation_step events and result.json carry
# (the orchestrator restates them in its contract; a test keeps the two equal).
METRICS = ("val_loss", "val_loss_tok", "val_bpb", "val_coverage")


def _summed_ce(model: Model, x: torch.Tensor, y: torch.Tensor, last_only: bool = False) -> float:
    """Summed cross-entropy (fp32) of the model's predictions of y from x."""
    logits = model(x)
    if last_only:
        logits, y = logits[:, -1:], y[:, -1:]
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()


def _rows(ids: torch.Tensor, starts: list[int], length: int, batch: int):
    """Batches of (x, y) rows of `length` inputs starting at each start (same length per batch)."""
    for i in range(0, len(starts), batch):
        chunk = starts[i : i + batch]
        x = torch.stack([ids[s : s + length] for s in chunk])
        y = torch.stack([ids[s + 1 : s + length + 1] for s in chunk])
        yield x, y


@torch.no_grad()
def evaluate(model: Model, val_ids: torch.Tensor, context_length: int, batch_size: int,
             val_chars: int, val_bytes: int, device: torch.device | str = "cpu",
             autocast: AbstractContextManager | None = None) -> dict[str, float | None]:
    """All four validation metrics; `val_loss` is None when no full batch fits (nothing scored)."""
    T, B = context_length, batch_size
    ids = val_ids.to(device)
    n_targets = len(ids) - 1
    span = B * T + 1
    ctx = autocast or nullcontext()
    n_batches = (len(ids) - span) // span + 1 if len(ids) >= span else 0
    # Each full batch scores targets ptr+1 .. ptr+B*T; the target at the next batch's start is
    # skipped, and so is everything after the last batch's inputs (the tail).
    skipped = [(k + 1) * span for k in range(n_batches - 1)]
    tail_start = (n_batches - 1) * span + B * T if n_batches else 0  # first unscored input
    challenge_sum, total_sum = 0.0, 0.0
    with ctx:
        for k in range(n_batches):
            batch = ids[k * span : (k + 1) * span]
            challenge_sum += _summed_ce(model, batch[:-1].view(B, T), batch[1:].view(B, T))
        # A skipped target p gets the T inputs before it; only the last prediction counts.
        for x, y in _rows(ids, [p - T for p in skipped], T, B):
            total_sum += _summed_ce(model, x, y, last_only=True)
        # The tail: consecutive rows of T inputs; the last row may be shorter.
        starts = list(range(tail_start, n_targets, T))
        full = [s for s in starts if s + T <= n_targets]
        for x, y in _rows(ids, full, T, B):
            total_sum += _summed_ce(model, x, y)
        if starts and starts[-1] not in full:
            s = starts[-1]
            total_sum += _summed_ce(model, ids[s:n_targets][None], ids[s + 1 :][None])
    challenge_tokens = n_batches * B * T
    total_sum += challenge_sum
    return {
        "val_loss": challenge_sum / val_chars if challenge_tokens else None,
        "val_loss_tok": total_sum / n_targets,
        "val_bpb": total_sum / math.log(2) / val_bytes,
        "val_coverage": challenge_tokens / n_targets,
    }
