"""The challenge's GPT and training step, for benchmarks/trainer_throughput.py and the
bit-exactness test (tests/test_trainer.py).

- `build_reference`: the challenge's model as its train.py writes it, re-implemented here (always
  available; a quick reference).
- `load_challenge`: the challenge's own train.py loaded from a path (it is not part of this
  repository), for its GPT and GPTConfig.
- `challenge_step`: the training step of the challenge's main(), for either model.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable


def build_reference(shape: dict[str, int], vocab_size: int, dropout: float = 0.1):
    """The challenge's GPT, as its train.py writes it (classes defined here so that importing
    this file does not need torch until a child process runs)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    d, H, T = shape["d_model"], shape["n_head"], shape["context"]

    class CausalSelfAttention(nn.Module):
        """One qkv Linear with bias; the full T x T scores by hand, tril-masked, softmax,
        dropout, @ v."""

        def __init__(self) -> None:
            super().__init__()
            self.head_dim, self.n_head = d // H, H
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.attn_drop = nn.Dropout(dropout)
            self.resid_drop = nn.Dropout(dropout)
            self.register_buffer("tril", torch.tril(torch.ones(T, T)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            B, T_, C = x.size()
            qkv = self.qkv(x).view(B, T_, 3, self.n_head, self.head_dim).transpose(1, 3)
            q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.tril[:T_, :T_] == 0, float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_drop(att)
            y = (att @ v).transpose(1, 2).contiguous().view(B, T_, C)
            return self.resid_drop(self.proj(y))

    class MLP(nn.Module):
        """4x GELU feed-forward."""

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d),
                                     nn.Dropout(dropout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    class Block(nn.Module):
        """Pre-norm block with its two LayerNorms."""

        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn, self.mlp = CausalSelfAttention(), MLP()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        """Token + learned position embedding, blocks, final LayerNorm, tied head."""

        def __init__(self) -> None:
            super().__init__()
            self.token_emb = nn.Embedding(vocab_size, d)
            self.pos_emb = nn.Parameter(torch.zeros(1, T, d))
            self.drop = nn.Dropout(dropout)
            self.blocks = nn.ModuleList([Block() for _ in range(shape["n_layer"])])
            self.ln_f = nn.LayerNorm(d)
            self.head = nn.Linear(d, vocab_size, bias=False)
            self.apply(self._init_weights)
            self.head.weight = self.token_emb.weight

        @staticmethod
        def _init_weights(module: nn.Module) -> None:
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)

        def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
            x = self.drop(self.token_emb(idx) + self.pos_emb[:, : idx.size(1), :])
            for block in self.blocks:
                x = block(x)
            logits = self.head(self.ln_f(x))
            loss = None
            if targets is not None:
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
            return logits, loss

    return GPT()


def load_challenge(path: Path):
    """The challenge's own train.py as a module, for its GPT and GPTConfig. The imports a
    training step does not use (the hub's `datasets`, the challenge's `utils`, its logging and
    progress bar) are stubbed where they are not installed; its main() does not run."""
    import importlib
    import importlib.util
    import types

    for name in ("utils", "datasets", "structlog", "tqdm"):
        try:
            importlib.import_module(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.__getattr__ = lambda attr: None  # `from datasets import load_dataset` works
            sys.modules[name] = stub
    spec = importlib.util.spec_from_file_location("challenge_train", path)
    if spec is None or spec.loader is None:
        sys.exit(f"--challenge: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def challenge_step(model: Any, max_steps: int) -> Callable[[Any, Any], float]:
    """The training step of the challenge's main() for `model` (its GPT, or ours built the
    same): loss inside the model, zero_grad, backward, clip 1.0, SGD lr 6e-3, cosine over
    `max_steps`. Returns step(x, y) -> the loss."""
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=6e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_steps)

    def step(x: Any, y: Any) -> float:
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        return loss.item()
    return step
