"""Self-attention: the layer that runs each variant of `trainer.attention_config`.

- `causal`: full causal attention; on a CPU at the challenge's lengths its own arithmetic (so its
  losses come out bit for bit), elsewhere PyTorch's fused scaled_dot_product_attention.
- `local`: query i sees keys i - window < j <= i.
- `sparse`: the Sparse Transformer patterns (Child et al. 2019).

The patterns and kernels live in `trainer.sparse`.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import dropout as drop
from trainer import segments as seg_mask
from trainer import sparse
from trainer.attention_config import CausalAttention, LocalAttention, SparseAttention

Tensor = torch.Tensor
# (q, k, v, scale, dropout_p, segments or None) -> attention output
Kernel = Callable[[Tensor, Tensor, Tensor, float, float, seg_mask.Segments | None], Tensor]
# Up to this length a CPU computes causal attention as the challenge's code does: its T x T
# weights are materialised anyway to drop them (SDPA's math path does the same), and SDPA scales
# q and k by sqrt(scale) each, which rounds differently whenever sqrt(scale) is not a power of 2
# (head size 64: the baseline's losses differed in the last digits from step 1).
SCORES_MAX_T = 512


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
        self.resid_drop = drop.Dropout(dropout)
        self.rotary = Rotary(self.qk_head_dim, context_length) if rotary else None
        self.q_norm = nn.RMSNorm(self.qk_head_dim) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.qk_head_dim) if qk_norm else None
        self.impl: Literal["auto", "reference"] = "auto"
        self._flex_fns: dict[tuple[int, str], Callable] = {}  # (T, device) -> compiled kernel
        self._future: dict[tuple[int, str], Tensor] = {}  # (T, device) -> mask of j > i

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
        with doc_mask, AND same segment of `segments`. `kernel` says which function runs."""
        if self.cfg.doc_mask and segments is None:
            raise ValueError("attention.doc_mask is on: attend needs the batch's segments")
        p = self.dropout if self.training else 0.0
        scale = sparse.default_scale(q.shape[-1])  # of the real q width, before any padding
        kernel = self.kernel(q.device, p, q.shape[2])
        if kernel != self._reference and q.shape[-1] < v.shape[-1]:
            # Fused kernels want one head size: zero columns leave q.k unchanged (scale is fixed
            # above), and the extra gradient columns are simply dropped by the slice.
            q, k = (F.pad(t, (0, v.shape[-1] - t.shape[-1])) for t in (q, k))
        return kernel(q, k, v, scale, p, segments if self.cfg.doc_mask else None)

    def kernel(self, device: torch.device, dropout_p: float, seq_len: int = 0) -> Kernel:
        """The function that computes this layer's attention on `device` for `seq_len` tokens;
        the first rule that matches wins:

        1. impl="reference": the dense-mask reference (tests, debugging).
        2. doc_mask: FlexAttention under pattern AND same title on CUDA without dropout, else the
           blocked kernel with title masks (`trainer.segments`).
        3. causal, not CUDA, seq_len <= SCORES_MAX_T: the challenge's own arithmetic (q @ k.T,
           then * scale, -inf above the diagonal, softmax, dropout, @ v): its losses, bit for bit.
        4. causal otherwise: PyTorch's fused causal SDPA.
        5. CUDA without dropout: FlexAttention with the pattern's block mask (it cannot drop
           attention weights, so dropout takes the blocked kernels below).
        6. local, sparse strided, sparse fixed: the blocked kernels of `trainer.sparse`.
        """
        cfg = self.cfg
        flex = device.type == "cuda" and dropout_p == 0.0
        if self.impl == "reference":
            return self._reference
        if cfg.doc_mask:
            return self._doc_flex if flex else self._doc_blocked
        if cfg.type == "causal":
            return self._scores if device.type != "cuda" and seq_len <= SCORES_MAX_T \
                else self._causal
        if flex:
            return self._flex
        if cfg.type == "local":
            return self._local
        return self._strided if cfg.pattern == "strided" else self._fixed

    # The kernels: each takes (q, k, v, scale, dropout_p, segments or None), q and k as wide as v
    # except in the reference.

    def _reference(self, q: Tensor, k: Tensor, v: Tensor, scale: float, p: float,
                   doc: seg_mask.Segments | None) -> Tensor:
        T = q.shape[2]
        mask = (sparse.pattern_mask(self.cfg, self.n_head, T, q.device) if doc is None
                else seg_mask.reference_mask(self.cfg, self.n_head, doc.ids))
        return sparse.reference_attention(q, k, v, mask, p, scale)

    def _doc_flex(self, q: Tensor, k: Tensor, v: Tensor, scale: float, p: float,
                  doc: seg_mask.Segments) -> Tensor:
        return seg_mask.flex_attention(q, k, v, self.cfg, doc, scale)

    def _doc_blocked(self, q: Tensor, k: Tensor, v: Tensor, scale: float, p: float,
                     doc: seg_mask.Segments) -> Tensor:
        return seg_mask.segment_attention(q, k, v, self.cfg, doc, scale, p)

    def _causal(self, q: Tensor, k: Tensor, v: Tensor, scale: float, p: float,
                doc: None) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=scale)

    def _scores(self, q: Tensor, k: Tensor, v: Tensor, scale: float, p: float,
                doc: None) -> Tensor:
        T = q.shape[2]
        key = (T, str(q.device))
        if key not in self._future:
            self._future[key] = torch.ones(T, T, dtype=torch.bool, device=q.device).triu_(1)
        att = (q @ k.transpose(-2, -1)) * scale
        att = F.softmax(att.masked_fill(self._future[key], float("-inf")), dim=-1)
        if p:
            att = drop.dropout(att, p)
        return att @ v

    def _flex(self, q: Tensor, k: Tensor, v: Tensor, scale: float, p: float, doc: None) -> Tensor:
        key = (q.shape[2], str(q.device))
        if key not in self._flex_fns:  # the block mask and compilation depend on T and device
            self._flex_fns[key] = sparse.flex_attention_fn(self.cfg, self.n_head, q.shape[2],
                                                           q.device)
        return self._flex_fns[key](q, k, v, scale)

    def _local(self, q: Tensor, k: Tensor, v: Tensor, scale: float, p: float,
               doc: None) -> Tensor:
        return sparse.local_attention(q, k, v, self.cfg.window, scale, p)

    def _strided(self, q: Tensor, k: Tensor, v: Tensor, scale: float, p: float,
                 doc: None) -> Tensor:
        # The first half of the heads are local heads, the second half strided heads.
        h, L = self.n_head // 2, self.cfg.local_attn_ctx
        return torch.cat([
            sparse.local_attention(q[:, :h], k[:, :h], v[:, :h], L, scale, p),
            sparse.strided_heads_attention(q[:, h:], k[:, h:], v[:, h:], L, scale, p)], dim=1)

    def _fixed(self, q: Tensor, k: Tensor, v: Tensor, scale: float, p: float,
               doc: None) -> Tensor:
        c = self.cfg
        return sparse.fixed_attention(q, k, v, c.block, c.local_attn_ctx, c.num_verts,
                                      c.vertsize, scale, p)
