"""Self-attention: the variants' configs (a discriminated union on `type`) and the layer.

- `causal`: full causal attention through PyTorch's fused scaled_dot_product_attention.
- `local`: query i sees keys i - window < j <= i.
- `sparse`: the Sparse Transformer patterns (Child et al. 2019) with the parameter names and
  meanings of OpenAI's `sparse_attention` reference (`blocksize` is `block` here).

Every variant takes `qk_dim`, a low-rank query/key projection ("bottleneck" attention). The
patterns and kernels live in `trainer.sparse`.
"""

from __future__ import annotations

from typing import Annotated, Callable, Literal, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from trainer import segments as seg_mask
from trainer import sparse


class _Variant(BaseModel):
    """Fields and checks that every variant shares."""

    model_config = ConfigDict(extra="forbid")
    qk_dim: int | None = Field(
        None, gt=0, description="Total query/key width (all heads) when smaller than d_model: a "
        "low-rank q/k projection; values keep d_model. null: q and k are d_model wide.")
    doc_mask: bool = Field(
        False, description="Title-boundary mask: a token attends only within its own title "
        "(pattern AND same title). Titles are found from the `<eos>` ids of the batch: the "
        "`<eos>` closes its title and the token after it starts the next. false: the challenge.")

    def check(self, n_head: int, context_length: int, d_model: int) -> None:
        """Raise ValueError naming the parameters when this variant cannot fit the model."""
        if self.qk_dim is None:
            return
        if self.qk_dim > d_model:
            raise ValueError(f"attention.qk_dim ({self.qk_dim}) must be <= model.d_model "
                             f"({d_model})")
        if self.qk_dim % (2 * n_head):
            raise ValueError(f"attention.qk_dim ({self.qk_dim}) must be a multiple of "
                             f"2 * model.n_head ({2 * n_head}): each head's query/key size must "
                             "be even (rotary embeddings rotate pairs)")


class CausalAttention(_Variant):
    """Full causal attention: query i sees every key j <= i."""

    type: Literal["causal"] = "causal"


class LocalAttention(_Variant):
    """Sliding window: query i sees keys i - window < j <= i (itself and window - 1 before it).

    A window >= context_length is full causal attention.
    """

    type: Literal["local"] = "local"
    window: int = Field(64, ge=1, description="Keys each query sees, itself included.")


class SparseAttention(_Variant):
    """Sparse Transformer patterns; every pattern also requires j <= i.

    `strided` (L = local_attn_ctx): heads h < n_head/2 are *local* heads (i - L < j <= i) and
    heads h >= n_head/2 are *strided* heads ((i - j) mod L == 0). This is the paper's multi-head
    split of the two factorised patterns (the first half of the heads local, the second half
    strided), so n_head must be even. `block`, `num_verts` and `vertsize` do not apply to it and
    must stay at their defaults (so that a sweep over them cannot repeat one model).

    `fixed` (s = L / block): query i sees j when floor(j/L) == floor(i/L) (same chunk), or when
    (floor(j/block) mod s) is in S_h = {s-1-(h mod num_verts)*vertsize-t : 0 <= t < vertsize}: the
    "summary" blocks at the end of every chunk, a different set per head group h mod num_verts.
    """

    type: Literal["sparse"] = "sparse"
    pattern: Literal["fixed", "strided"] = "fixed"
    block: int = Field(32, ge=1, description="Block size (OpenAI `blocksize`); fixed only.")
    local_attn_ctx: int = Field(128, ge=1, description="L: the chunk of `fixed`, the window and "
                                "stride of `strided`.")
    num_verts: int = Field(1, ge=1, description="Distinct summary patterns across heads; fixed only.")
    vertsize: int = Field(1, ge=1, description="Summary blocks per chunk per head; fixed only.")

    def check(self, n_head: int, context_length: int, d_model: int) -> None:
        """Raise ValueError naming the parameters when this pattern cannot fit the model."""
        super().check(n_head=n_head, context_length=context_length, d_model=d_model)
        L = self.local_attn_ctx
        if self.pattern == "strided":
            if n_head % 2:
                raise ValueError(f"attention.pattern=strided splits heads into local and strided "
                                 f"halves, so model.n_head ({n_head}) must be even")
            # A sweep over them would run the same model under different names.
            unused = [f"attention.{name} ({getattr(self, name)})"
                      for name in ("block", "num_verts", "vertsize")
                      if getattr(self, name) != type(self).model_fields[name].default]
            if unused:
                raise ValueError(f"{', '.join(unused)} apply only to attention.pattern=fixed; "
                                 "with pattern=strided leave them at their defaults (block 32, "
                                 "num_verts 1, vertsize 1)")
            return
        problems = []
        if L % self.block:
            problems.append(f"attention.local_attn_ctx ({L}) must be a multiple of "
                            f"attention.block ({self.block})")
        else:
            s = L // self.block
            if s % self.vertsize:
                problems.append(f"local_attn_ctx / block ({s}) must be a multiple of "
                                f"attention.vertsize ({self.vertsize})")
            if self.num_verts * self.vertsize > s:
                problems.append(f"attention.num_verts * attention.vertsize ({self.num_verts} * "
                                f"{self.vertsize}) must be <= local_attn_ctx / block ({s})")
        if n_head % self.num_verts:
            problems.append(f"model.n_head ({n_head}) must be a multiple of attention.num_verts "
                            f"({self.num_verts})")
        if context_length % L:
            problems.append(f"train.context_length ({context_length}) must be a multiple of "
                            f"attention.local_attn_ctx ({L})")
        if problems:
            raise ValueError("sparse fixed pattern: " + "; ".join(problems))


AttentionConfig = Annotated[Union[CausalAttention, LocalAttention, SparseAttention],
                            Field(discriminator="type")]


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
