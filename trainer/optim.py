"""Optimizers, learning-rate schedules and the weight EMA.

- `make_optimizer`: the configured torch optimizer. `muon` is torch.optim.Muon for the 2-D
  weight matrices inside the blocks and AdamW for every other parameter, wrapped as one
  optimizer (`Combined`) so that one LambdaLR schedule, grad clipping and GradScaler drive both.
- `lr_factor`: the schedule (cosine, linear, constant, wsd) as a multiplier of each group's lr.
- `EMA`: an exponential moving average of the weights, swapped in for evaluation.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn as nn

from trainer.config import OptimConfig, ScheduleConfig


def muon_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(Muon params, AdamW params): the 2-D weights inside `model.blocks` (attention qkv and
    proj, MLP fc/gate/proj) go to Muon; embeddings, positions, norms, biases and the head (tied
    or not) go to AdamW. Every trainable parameter lands in exactly one list, once."""
    blocks = {id(p) for p in model.blocks.parameters()}
    muon, adamw = [], []
    for p in model.parameters():  # a tied weight is yielded once
        if not p.requires_grad:
            continue
        (muon if id(p) in blocks and p.ndim == 2 else adamw).append(p)
    return muon, adamw


class Combined(torch.optim.Optimizer):
    """Several optimizers seen as one: their param groups (the same dicts) form this one's, so a
    scheduler's lr changes reach them, and step/zero_grad/state_dict go to each in turn."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        super().__init__([g for o in optimizers for g in o.param_groups], {})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for o, s in zip(self.optimizers, state_dict["optimizers"]):
            o.load_state_dict(s)


def make_optimizer(params: Any, o: OptimConfig) -> torch.optim.Optimizer:
    """The configured torch optimizer over `params`; `muon` needs the model itself (its split
    depends on where each parameter sits)."""
    if o.name == "muon":
        if not isinstance(params, nn.Module):
            raise TypeError("optim.name=muon: pass the model, not its parameters")
        matrices, rest = muon_split(params)
        muon = torch.optim.Muon(matrices, lr=o.muon_lr, weight_decay=o.muon_weight_decay,
                                momentum=o.muon_momentum, nesterov=o.muon_nesterov,
                                ns_steps=o.muon_ns_steps, adjust_lr_fn=o.muon_lr_adjust)
        adamw = torch.optim.AdamW(rest, lr=o.lr, betas=o.betas, eps=o.eps,
                                  weight_decay=o.weight_decay)
        return Combined([adamw, muon])  # AdamW first: the logged lr is optim.lr's
    if isinstance(params, nn.Module):
        params = params.parameters()
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name in ("adam", "adamw"):
        cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
        return cls(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    if o.name == "adagrad":
        return torch.optim.Adagrad(params, lr=o.lr, eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.RMSprop(params, lr=o.lr, momentum=o.momentum, eps=o.eps,
                               weight_decay=o.weight_decay)


def _decay_shape(shape: str, p: float) -> float:
    """1 at p = 0 falling to 0 at p = 1."""
    if shape == "cosine":
        return 0.5 * (1 + math.cos(math.pi * p))
    if shape == "sqrt":
        return 1 - math.sqrt(p)
    return 1 - p


def lr_factor(s: ScheduleConfig, step: int, max_steps: int) -> float:
    """Multiplier of every group's lr for the optimizer step `step` (0-based). With no warmup,
    cosine equals torch's CosineAnnealingLR(T_max=max_steps), the challenge's schedule.

    wsd: D = round(decay_frac * max_steps) decay steps at the end (never into the warmup);
    step k >= max_steps - D decays with progress p = (k - (max_steps - D)) / D, so its first
    step is at full lr and its last at shape(1 - 1/D), like cosine's last step.
    """
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.name == "constant":
        return 1.0
    if s.name == "wsd":
        start = max(s.warmup_steps, max_steps - round(s.decay_frac * max_steps))
        if step < start:
            return 1.0
        shape = _decay_shape(s.decay_shape, (step - start) / max(1, max_steps - start))
    else:
        progress = (step - s.warmup_steps) / max(1, max_steps - s.warmup_steps)
        shape = _decay_shape("cosine" if s.name == "cosine" else "linear", progress)
    return s.min_lr_frac + (1 - s.min_lr_frac) * shape


class EMA:
    """Exponential moving average of a model's parameters: after every optimizer step,
    ema <- decay * ema + (1 - decay) * param, starting from the initial weights. Buffers (the
    rotary tables) are constants and are not averaged."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights in (call after each optimizer step)."""
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - self.decay)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside: the model holds the averaged weights; after: its own again, bit for bit."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            for p, e in zip(self.params, self.shadow):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)
