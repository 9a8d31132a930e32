"""Self-attention: the layer that runs each variant of `trainer.attention_config`.

- `causal`: full causal attention through PyTorch's fused scaled_dot_product_attention.
- `local`: query i sees keys i - window < j <= i.
- `sparse`: the Sparse Transformer patterns (Child et al. 2019).

The patterns and kernels live in `trainer.sparse`.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import segments as seg_mask
from trainer import sparse
from trainer.attention_config import (AttentionConfig, CausalAttention,  # noqa: F401 (re-export)
                                      LocalAttention, SparseAttention)


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
    """Multi-head self-attention with one fused projection `qkv` and output projection `proj`.

    `qkv` maps d_model to 2 * qk_dim + d_model (queries, keys, values; qk_dim = d_model unless the
    config sets it). The pattern's kernel is chosen at run time: fused causal SDPA for `causal`;
    for `local` and `sparse`, FlexAttention on CUDA and the blocked kernels of `trainer.sparse`
    elsewhere. Attention dropout drops attention weights in every path; on CUDA it uses the
    blocked kernels while dropout is active, since FlexAttention cannot drop weights.
    `impl="reference"` uses the dense-mask reference instead (tests, debugging).

    With `doc_mask`, `forward` takes the batch's `Segments` and attends under pattern AND same
    title (`trainer.segments`). `qk_norm` RMS-normalises each head's q and k (before rotary).
    """

    def __init__(self, cfg: CausalAttention | LocalAttention | SparseAttention, d_model: int,
                 n_head: int, dropout: float, bias: bool, rotary: bool,
                 context_length: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_head = n_head
        self.head_dim = d_model // n_head
        self.qk_dim = cfg.qk_dim or d_model
        self.qk_head_dim = self.qk_dim // n_head
        self.qkv = nn.Linear(d_model, 2 * self.qk_dim + d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)
        self.rotary = Rotary(self.qk_head_dim, context_length) if rotary else None
        self.q_norm = nn.RMSNorm(self.qk_head_dim) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.qk_head_dim) if qk_norm else None
        self.impl: Literal["auto", "reference"] = "auto"
        self._flex: dict[tuple[int, str], Callable] = {}  # (T, device) -> compiled kernel

    def forward(self, x: torch.Tensor,
                segments: seg_mask.Segments | None = None) -> torch.Tensor:
        """Self-attention of x (B, T, C); `segments` (required with doc_mask) split the titles."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split([self.qk_dim, self.qk_dim, C], dim=-1)
        q, k = (t.view(B, T, self.n_head, self.qk_head_dim).transpose(1, 2) for t in (q, k))
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        y = self.attend(q, k, v, segments)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               segments: seg_mask.Segments | None = None) -> torch.Tensor:
        """The pattern's attention of (B, H, T, d) tensors (q, k may be narrower than v);
        with doc_mask, AND same segment of `segments`."""
        cfg, T = self.cfg, q.shape[2]
        p = self.dropout if self.training else 0.0
        scale = sparse.default_scale(q.shape[-1])
        if cfg.doc_mask and segments is None:
            raise ValueError("attention.doc_mask is on: attend needs the batch's segments")
        doc = segments if cfg.doc_mask else None
        if self.impl == "reference":
            mask = (sparse.pattern_mask(cfg, self.n_head, T, q.device) if doc is None
                    else seg_mask.reference_mask(cfg, self.n_head, doc.ids))
            return sparse.reference_attention(q, k, v, mask, p, scale)
        if q.shape[-1] < v.shape[-1]:
            # Fused kernels want one head size: zero columns leave q.k unchanged (scale is fixed
            # above), and the extra gradient columns are simply dropped by the slice.
            q, k = (F.pad(t, (0, v.shape[-1] - t.shape[-1])) for t in (q, k))
        if doc is not None:
            if q.device.type == "cuda" and p == 0.0:
                return seg_mask.flex_attention(q, k, v, cfg, doc, scale)
            return seg_mask.segment_attention(q, k, v, cfg, doc, scale, p)
        if cfg.type == "causal":
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True,
                                                  scale=scale)
        if q.device.type == "cuda" and p == 0.0:
            key = (T, str(q.device))
            if key not in self._flex:
                self._flex[key] = sparse.flex_attention_fn(cfg, self.n_head, T, q.device)
            return self._flex[key](q, k, v, scale)
        if cfg.type == "local":
            return sparse.local_attention(q, k, v, cfg.window, scale, p)
        if cfg.pattern == "strided":
            h = self.n_head // 2
            return torch.cat([
                sparse.local_attention(q[:, :h], k[:, :h], v[:, :h], cfg.local_attn_ctx, scale, p),
                sparse.strided_heads_attention(q[:, h:], k[:, h:], v[:, h:], cfg.local_attn_ctx,
                                               scale, p)], dim=1)
        return sparse.fixed_attention(q, k, v, cfg.block, cfg.local_attn_ctx, cfg.num_verts,
                                      cfg.vertsize, scale, p)
