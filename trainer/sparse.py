"""Attention patterns: the dense reference masks, and the kernels that compute only allowed blocks.

Three implementations of every pattern, which the tests hold equal:

- `pattern_mask` builds the dense boolean (heads, T, T) mask: the definition, used by the
  reference path, the tests and `python -m trainer attention-mask`. Never used by a fast path.
- On CPU, `local_attention` and `fixed_attention` cut the sequence into chunks and attend each
  query chunk to only the key blocks it may see ("parts"). The parts are combined into one softmax
  per query through their log-sum-exps, using PyTorch's CPU flash kernel forward and backward, so
  nothing of size T x T is built and memory grows linearly in T. When attention dropout is active
  (training with p > 0) the flash kernel cannot drop weights, so the same parts run through plain
  matmuls, which materialise each part's scores (still no T x T mask) and drop weights exactly as
  dense attention does.
- On CUDA, `flex_attention_fn` runs FlexAttention with a block mask built from `mask_mod`.

Index conventions: query position i, key position j, head h; every pattern requires j <= i.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- pattern definitions

def local_allowed(i: Tensor, j: Tensor, window: int) -> Tensor:
    """Local band: i - window < j <= i."""
    return (j <= i) & (i - j < window)


def strided_allowed(i: Tensor, j: Tensor, stride: int) -> Tensor:
    """Strided head: j <= i and (i - j) mod stride == 0."""
    return (j <= i) & ((i - j) % stride == 0)


def fixed_allowed(i: Tensor, j: Tensor, h: Tensor | int, block: int, local_attn_ctx: int,
                  num_verts: int, vertsize: int) -> Tensor:
    """Fixed pattern of head h (OpenAI sparse_attention `fixed`): same L-chunk, or a summary block.

    With s = L / block, head h's summary blocks are those whose index mod s lies in
    S_h = {s-1-(h mod num_verts)*vertsize-t : 0 <= t < vertsize}, i.e. the contiguous range
    [s - (g+1)*vertsize, s - g*vertsize) for g = h mod num_verts: the last blocks of each chunk.
    """
    s = local_attn_ctx // block
    g = h % num_verts
    r = (j // block) % s
    summary = (r >= s - (g + 1) * vertsize) & (r < s - g * vertsize)
    return (j <= i) & ((i // local_attn_ctx == j // local_attn_ctx) | summary)


def pattern_mask(cfg, n_head: int, T: int, device: torch.device | str = "cpu") -> Tensor:
    """Dense boolean mask (n_head, T, T) of the variant `cfg`: True where query i may see key j.

    The reference definition of every pattern; O(T^2) memory, so only for tests, the reference
    path and pictures. For `sparse` `strided`, heads h < n_head/2 are local heads (window L) and
    heads h >= n_head/2 are strided heads (stride L).
    """
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    h = torch.arange(n_head, device=device)[:, None, None]
    if cfg.type == "causal":
        m = j <= i
    elif cfg.type == "local":
        m = local_allowed(i, j, cfg.window)
    elif cfg.pattern == "strided":
        m = torch.where(h < n_head // 2, local_allowed(i, j, cfg.local_attn_ctx),
                        strided_allowed(i, j, cfg.local_attn_ctx))
    else:
        m = fixed_allowed(i, j, h, cfg.block, cfg.local_attn_ctx, cfg.num_verts, cfg.vertsize)
    return m.expand(n_head, T, T)


def mask_mod(cfg, n_head: int) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """The pattern as a FlexAttention mask_mod(b, h, q_idx, kv_idx); same definitions as above."""
    if cfg.type == "causal":
        return lambda b, h, i, j: j <= i
    if cfg.type == "local":
        return lambda b, h, i, j: local_allowed(i, j, cfg.window)
    L = cfg.local_attn_ctx
    if cfg.pattern == "strided":
        return lambda b, h, i, j: torch.where(h < n_head // 2, local_allowed(i, j, L),
                                              strided_allowed(i, j, L))
    return lambda b, h, i, j: fixed_allowed(i, j, h, cfg.block, L, cfg.num_verts, cfg.vertsize)


def reference_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout_p: float = 0.0,
                        scale: float | None = None) -> Tensor:
    """Attention of (B, H, T, d) tensors under a dense boolean (H, T, T) mask, through SDPA."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


# ----------------------------------------------------------------------------- blocked kernels

@dataclass
class Part:
    """Query chunks [start, stop) (dim 1 of the chunked q) attend to keys k / values v.

    k, v: (N, stop-start or 1, S, d). `causal`: key a visible to query row r iff a <= r (same
    chunk). `allowed`: boolean (1 or stop-start, rows, S) mask, one per sequence
    (N, stop-start, rows, S), or None for all keys. Every query row must see at least one key in
    the union of its parts.
    """

    start: int
    stop: int
    k: Tensor
    v: Tensor
    causal: bool = False
    allowed: Tensor | None = None


def _flash_mask(part: Part, dtype: torch.dtype) -> Tensor | None:
    """The flash kernel wants an additive mask of the query's dtype, (1 or N, chunks, rows, S)."""
    if part.allowed is None:
        return None
    zero = torch.zeros((), dtype=dtype, device=part.allowed.device)
    mask = torch.where(part.allowed, zero, float("-inf")).to(dtype)
    return mask if mask.dim() == 4 else mask[None]


class _FlashParts(torch.autograd.Function):
    """One softmax over the union of the parts' keys, from per-part flash calls.

    Forward merges each part's normalised output by its log-sum-exp. Backward calls the flash
    backward of every part with the *merged* output and log-sum-exp: the kernel's
    P = exp(S - lse) and D = rowsum(dO * O) are then those of the whole softmax, so the per-part
    gradients sum to the exact gradient (the FlashAttention split-KV identity).
    """

    @staticmethod
    def forward(ctx, q: Tensor, scale: float, meta: list, *kvs: Tensor) -> Tensor:
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        out = lse = None
        for (start, stop, causal, mask, empty), k, v in zip(meta, kvs[0::2], kvs[1::2]):
            o, l = flash(q[:, start:stop], k, v, 0.0, causal, attn_mask=mask, scale=scale)
            if empty is not None:  # the kernel gives rows with no key lse 0; make it -inf
                l = l.masked_fill(empty, float("-inf"))
            if out is None and (start, stop) == (0, q.shape[1]):
                out, lse = o.float(), l
                continue
            if out is None:
                out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
                lse = torch.full(q.shape[:-1], float("-inf"), device=q.device)
            old = lse[:, start:stop]
            new = torch.logaddexp(old, l)
            out[:, start:stop] = (out[:, start:stop] * (old - new).exp()[..., None]
                                  + o.float() * (l - new).exp()[..., None])
            lse[:, start:stop] = new
        out = out.to(q.dtype)
        ctx.save_for_backward(q, out, lse, *kvs)
        ctx.scale, ctx.meta = scale, meta
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, out, lse, *kvs = ctx.saved_tensors
        grad = grad.contiguous()
        dq, dkvs = None, []
        flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        for (start, stop, causal, mask, _), k, v in zip(ctx.meta, kvs[0::2], kvs[1::2]):
            s = slice(start, stop)
            gq, gk, gv = flash_bwd(grad[:, s], q[:, s], k, v, out[:, s], lse[:, s],
                                   0.0, causal, attn_mask=mask, scale=ctx.scale)
            if dq is None and (start, stop) == (0, q.shape[1]):
                dq = gq.float()
            else:
                if dq is None:
                    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
                dq[:, s] += gq.float()
            dkvs += [gk, gv]
        return (dq.to(q.dtype), None, None, *dkvs)


def attend_parts(q: Tensor, parts: list[Part], scale: float, dropout_p: float = 0.0,
                 flash: bool = True) -> Tensor:
    """Softmax attention of chunked queries q (N, chunks, rows, d) over the union of `parts`.

    Without dropout: the CPU flash kernel per part (`_FlashParts`). With dropout: matmuls and an
    explicit joint softmax, so weights are dropped exactly as in dense attention (also the path
    off CPU, and when `flash` is False, which the tests use to check it).
    """
    if flash and dropout_p == 0.0 and q.device.type == "cpu":
        meta = [(p.start, p.stop, p.causal, _flash_mask(p, q.dtype),
                 None if p.allowed is None else ~p.allowed.any(-1)) for p in parts]
        kvs = [t for p in parts for t in (p.k, p.v)]
        return _FlashParts.apply(q.contiguous(), scale, meta, *kvs)
    # Scores per part, then one log-sum-exp across parts, so each query's weights sum to one.
    # slice_scatter (not in-place writes) keeps autograd's saved slices valid.
    scores = []
    total = torch.full(q.shape[:-1], float("-inf"), device=q.device)
    for p in parts:
        s = (q[:, p.start:p.stop].float() @ p.k.float().transpose(-1, -2)) * scale
        if p.causal:
            rows, S = s.shape[-2:]
            s = s.masked_fill(torch.ones(rows, S, dtype=torch.bool, device=s.device).triu(1),
                              float("-inf"))
        if p.allowed is not None:
            s = s.masked_fill(~p.allowed, float("-inf"))
        scores.append(s)
        merged = torch.logaddexp(total[:, p.start:p.stop], s.logsumexp(-1))
        total = total.slice_scatter(merged, dim=1, start=p.start, end=p.stop)
    out = torch.zeros(q.shape[:-1] + (parts[0].v.shape[-1],), device=q.device)
    for p, s in zip(parts, scores):
        w = F.dropout((s - total[:, p.start:p.stop, :, None]).exp(), dropout_p)
        y = out[:, p.start:p.stop] + w @ p.v.float()
        out = out.slice_scatter(y, dim=1, start=p.start, end=p.stop)
    return out.to(q.dtype)


def _pad_to(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad dim -2 (time) up to a multiple; padded positions come after every real one, so
    causality keeps them out of every real query's keys."""
    extra = -x.shape[-2] % multiple
    return F.pad(x, (0, 0, 0, extra)) if extra else x


def local_attention(q: Tensor, k: Tensor, v: Tensor, window: int, scale: float,
                    dropout_p: float = 0.0, flash: bool = True) -> Tensor:
    """Local band attention (i - window < j <= i) of (B, H, T, d) tensors, in chunks.

    Queries go in chunks of c = window rows. Chunk n sees (A) its own chunk, causally, and (B)
    the previous chunk, key a of which is visible to row r iff a > r. Both are views of the same
    chunked keys: no copies. Work per query is 1.5 * window keys instead of T/2 on average;
    memory is O(T * window) for the small mask-free parts, O(window^2) for the mask.
    """
    B, H, T, d = q.shape
    if window >= T:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True,
                                              scale=scale)
    c = window
    qp, kp, vp = (_pad_to(t, c).flatten(0, 1) for t in (q, k, v))
    n = qp.shape[1] // c
    kc, vc = (t.view(B * H, n, c, t.shape[-1]) for t in (kp, vp))
    parts = [Part(0, n, kc, vc, causal=True)]
    if window > 1:
        r = torch.arange(c, device=q.device)
        parts.append(Part(1, n, kc[:, :-1], vc[:, :-1], allowed=(r[None, :] > r[:, None])[None]))
    y = attend_parts(qp.view(B * H, n, c, d), parts, scale, dropout_p, flash)
    return y.view(B, H, n * c, -1)[:, :, :T]


def strided_heads_attention(q: Tensor, k: Tensor, v: Tensor, stride: int, scale: float,
                            dropout_p: float = 0.0) -> Tensor:
    """Strided heads ((i - j) mod stride == 0, j <= i): positions with equal residue mod stride
    form a subsequence with full causal attention, so transpose (T/stride, stride) and run causal
    SDPA on stride subsequences of length T/stride (OpenAI's `strided_transpose`)."""
    B, H, T, d = q.shape
    qp, kp, vp = (_pad_to(t, stride) for t in (q, k, v))
    m = qp.shape[2] // stride
    sub = lambda t: t.view(B, H, m, stride, -1).transpose(2, 3).reshape(B, H * stride, m, -1)  # noqa
    y = F.scaled_dot_product_attention(sub(qp), sub(kp), sub(vp), dropout_p=dropout_p,
                                       is_causal=True, scale=scale)
    return y.view(B, H, stride, m, -1).transpose(2, 3).reshape(B, H, m * stride, -1)[:, :, :T]


def fixed_attention(q: Tensor, k: Tensor, v: Tensor, block: int, local_attn_ctx: int,
                    num_verts: int, vertsize: int, scale: float, dropout_p: float = 0.0,
                    flash: bool = True) -> Tensor:
    """Fixed pattern of (B, H, T, d) tensors, in chunks of L = local_attn_ctx.

    Heads with equal h mod num_verts share a pattern and run together. For such a group, query
    chunk n sees (A) its own chunk causally and (B) the summary blocks of chunks 0..n-1: a prefix
    of one compact summary sequence of T/L * vertsize * block keys, fully visible. Summary blocks
    of chunk n itself are already in (A); those of later chunks are in the future.
    """
    B, H, T, d = q.shape
    L, vb = local_attn_ctx, vertsize * block
    if T <= L:  # one chunk: the pattern is plain causal attention
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True,
                                              scale=scale)
    qp, kp, vp = (_pad_to(t, L) for t in (q, k, v))
    n = qp.shape[2] // L
    y = torch.empty(B, H, n * L, v.shape[-1], dtype=q.dtype, device=q.device)
    for g in range(num_verts):
        heads = slice(g, H, num_verts)
        chunk = lambda t: t[:, heads].reshape(-1, n, L, t.shape[-1])  # noqa: E731
        qc, kc, vc = chunk(qp), chunk(kp), chunk(vp)
        lo = L - (g + 1) * vb  # head group g's summary positions within each chunk: [lo, lo + vb)
        ks, vs = (t[:, :, lo:lo + vb].reshape(t.shape[0], 1, n * vb, -1) for t in (kc, vc))
        parts = [Part(0, n, kc, vc, causal=True)]
        parts += [Part(c, c + 1, ks[:, :, :c * vb], vs[:, :, :c * vb]) for c in range(1, n)]
        y[:, heads] = attend_parts(qc, parts, scale, dropout_p, flash).view(B, -1, n * L, v.shape[-1])
    return y[:, :, :T]


# ----------------------------------------------------------------------------- CUDA

def flex_attention_fn(cfg, n_head: int, T: int, device: torch.device):
    """A (q, k, v, scale) -> out function over FlexAttention with this pattern's block mask.

    FlexAttention computes only the blocks the block mask marks, skipping the rest. It has no
    attention dropout, so callers use it only when dropout is inactive.
    """
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    block_mask = create_block_mask(mask_mod(cfg, n_head), B=None, H=n_head, Q_LEN=T, KV_LEN=T,
                                   device=device)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v, scale: compiled(q, k, v, block_mask=block_mask, scale=scale)


def default_scale(head_dim: int) -> float:
    """Softmax temperature 1/sqrt(d_qk)."""
    return 1.0 / math.sqrt(head_dim)
