"""Self-attention: the variants' configs (a discriminated union on `type`) and the layer.

`causal` is full causal attention through PyTorch's fused scaled_dot_product_attention.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field


class CausalAttention(BaseModel):
    """Full causal attention: query i sees every key j <= i."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["causal"] = "causal"

    def check(self, n_head: int, context_length: int, d_model: int) -> None:
        """Raise ValueError naming the parameters when this variant cannot fit the model."""


AttentionConfig = Annotated[Union[CausalAttention], Field(discriminator="type")]


class Rotary(nn.Module):
    """Rotary position embedding (RoPE) tables for one head size, applied to q and k."""

    def __init__(self, head_dim: int, context_length: int, base: float = 10_000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(context_length).float(), inv_freq)
        self.register_buffer("cos", angles.cos()[None, None], persistent=False)
        self.register_buffer("sin", angles.sin()[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.size(-2)
        x1, x2 = x.float().chunk(2, dim=-1)
        cos, sin = self.cos[..., :T, :], self.sin[..., :T, :]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection, as in the challenge model."""

    def __init__(self, cfg: CausalAttention, d_model: int, n_head: int, dropout: float,
                 bias: bool, rotary: bool, context_length: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_head = n_head
        self.head_dim = d_model // n_head
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)
        self.rotary = Rotary(self.head_dim, context_length) if rotary else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))
