"""Optimizers, learning-rate schedules and the weight EMA.

- `make_optimizer`: the configured torch optimizer. `muon` is Muon for the 2-D weight matrices
  inside the blocks and AdamW for every other parameter, wrapped as one optimizer (`Combined`)
  so that one LambdaLR schedule, grad clipping and GradScaler drive both. Muon is torch's own
  where the device computes bf16 natively, else `Fp32Muon` (`muon_for`).
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
from trainer.precision import probe


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


def orthogonalize(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz iteration (its `_zeropower_via_newtonschulz`,
    step for step), computed in `dtype` instead of its fixed bf16: roughly U V^T of the update
    U S V^T, returned in `dtype`."""
    a, b, c = coefficients
    x = update.to(dtype)
    tall = update.size(0) > update.size(1)
    if tall:  # iterate on the wide orientation: the Gram matrix is the smaller square
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def muon_lr(lr: float, adjust: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix learning rate: `original` scales by sqrt(max(1, A/B)),
    `match_rms_adamw` by 0.2 sqrt(max(A, B))."""
    A, B = shape[:2]
    if adjust is None or adjust == "original":
        return lr * math.sqrt(max(1, A / B))
    if adjust == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(A, B))
    return lr


class Fp32Muon(torch.optim.Muon):
    """torch.optim.Muon with its Newton-Schulz orthogonalization in fp32 instead of bf16.

    Same hyper-parameters, state (`momentum_buffer`) and update rule; only the precision of the
    orthogonalization differs, so the updates agree with torch's to bf16 rounding
    (tests/test_trainer.py holds them so). For devices that emulate bf16, where torch's step is
    many times slower than fp32 (benchmarks/trainer_throughput.py --optim measures both).
    """

    ns_dtype: torch.dtype = torch.float32  # bf16 gives torch's updates bit for bit (the tests)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = float(group["lr"]), group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"],
                                       group["eps"], self.ns_dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-muon_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


def muon_for(device: torch.device) -> type[torch.optim.Muon]:
    """torch.optim.Muon where `device` computes bf16 natively, else Fp32Muon: torch's
    orthogonalizes in bf16, which an AVX2-only CPU emulates (about 100 s a step for the base
    shape's 36 block matrices)."""
    return torch.optim.Muon if "bf16" in probe(device).native else Fp32Muon


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
        muon = muon_for(next(params.parameters()).device)(matrices, lr=o.muon_lr, weight_decay=o.muon_weight_decay,
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
