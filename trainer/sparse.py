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

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from trainer.dropout import dropout

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
    """Query chunks [start, stop) (dim 1 of the chunked q), rows `rows` of each, attend to keys.

    k, v: (N, chunks or 1, S, d); the part sees key chunks `key_chunks` (as many as its query
    chunks, or a single chunk 1 that every query chunk shares) and positions `key_pos` of them.
    Several parts may share one k, v: the backward pass adds their gradients into one buffer, so
    memory stays that of k, v (the parts of `fixed` share one summary sequence).

    `causal`: the part's key a visible to its query row r iff a <= r (counting both within the
    part's own selection). `allowed`: boolean (1 or N, chunks, rows, keys) mask, or None for all
    keys. Every query row must see at least one key in the union of its parts.
    """

    start: int
    stop: int
    k: Tensor | None
    v: Tensor | None
    causal: bool = False
    allowed: Tensor | None = None
    rows: slice = field(default_factory=lambda: slice(None))
    key_chunks: slice = field(default_factory=lambda: slice(None))
    key_pos: slice = field(default_factory=lambda: slice(None))

    def where(self) -> tuple[slice, slice, slice]:
        """Index of this part's queries in (N, chunks, rows, d) tensors."""
        return slice(None), slice(self.start, self.stop), self.rows

    def whole_keys(self) -> bool:
        """Whether the part reads all of k and v."""
        return self.key_chunks == slice(None) and self.key_pos == slice(None)

    def keys_of(self, t: Tensor) -> Tensor:
        """The part's selection of a (N, chunks or 1, S, ...) key-side tensor (k, v or their
        gradient buffers): a view, so autograd neither zero-fills nor copies a full-size one."""
        return t[:, self.key_chunks, self.key_pos]


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
    def forward(ctx, q: Tensor, scale: float, parts: list[Part], *kvs: Tensor) -> Tensor:
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        out = lse = None
        index = [_kv_index(p, kvs) for p in parts]
        masks = [_flash_mask(p, q.dtype) for p in parts]
        for p, mask, (k, v) in zip(parts, masks, _part_kvs(parts, index, kvs)):
            at = p.where()
            o, l = flash(q[at], k, v, 0.0, p.causal, attn_mask=mask, scale=scale)
            if p.allowed is not None:  # the kernel gives rows with no key lse 0; make it -inf
                l = l.masked_fill(~p.allowed.any(-1), float("-inf"))
            if out is None and q[at].shape == q.shape:
                out, lse = o.float(), l
                continue
            if out is None:
                out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
                lse = torch.full(q.shape[:-1], float("-inf"), device=q.device)
            old = lse[at]
            new = torch.logaddexp(old, l)
            out[at].mul_((old - new).exp_()[..., None]).add_(o.float() * (l - new).exp_()[..., None])
            lse[at] = new
        out = out.to(q.dtype)
        ctx.save_for_backward(q, out, lse, *kvs)
        # The parts without their tensors (saved above, as autograd wants): where each one reads.
        ctx.scale, ctx.index, ctx.masks = scale, index, masks
        ctx.parts = [dataclasses.replace(p, k=None, v=None) for p in parts]
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, out, lse, *kvs = ctx.saved_tensors
        grad = grad.contiguous()
        dq = None
        dkvs: list[Tensor | None] = [None] * len(kvs)
        flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        kv_parts = _part_kvs(ctx.parts, ctx.index, kvs)
        for p, i, mask, (k, v) in zip(ctx.parts, ctx.index, ctx.masks, kv_parts):
            at = p.where()
            gq, gk, gv = flash_bwd(grad[at], q[at], k, v, out[at], lse[at], 0.0, p.causal,
                                   attn_mask=mask, scale=ctx.scale)
            if dq is None and q[at].shape == q.shape:
                dq = gq.float()
            else:
                if dq is None:
                    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
                dq[at] += gq
            for j, g in ((i, gk), (i + 1, gv)):
                if dkvs[j] is None and p.whole_keys():
                    dkvs[j] = g.float()  # a fresh tensor: later parts may add into it
                    continue
                if dkvs[j] is None:
                    dkvs[j] = torch.zeros(kvs[j].shape, dtype=torch.float32, device=q.device)
                p.keys_of(dkvs[j]).add_(g)
        return (dq.to(q.dtype), None, None, *(g.to(t.dtype) for g, t in zip(dkvs, kvs)))


def _kv_index(part: Part, kvs: tuple[Tensor, ...] | list[Tensor]) -> int:
    """Position of the part's k in the flat list of distinct (k, v) pairs."""
    return next(i for i in range(0, len(kvs), 2) if kvs[i] is part.k)


def _part_kvs(parts: list[Part], index: list[int],
              kvs: tuple[Tensor, ...]) -> list[tuple[Tensor, Tensor]]:
    """Each part's keys and values as its flash call takes them."""
    return [(p.keys_of(kvs[i]), p.keys_of(kvs[i + 1])) for p, i in zip(parts, index)]


def attend_parts(q: Tensor, parts: list[Part], scale: float, dropout_p: float = 0.0,
                 flash: bool = True) -> Tensor:
    """Softmax attention of chunked queries q (N, chunks, rows, d) over the union of `parts`.

    Without dropout: the CPU flash kernel per part (`_FlashParts`). With dropout: matmuls and an
    explicit joint softmax, so weights are dropped exactly as in dense attention (also the path
    off CPU, and when `flash` is False, which the tests use to check it).
    """
    kvs: list[Tensor] = []
    for p in parts:
        if not any(t is p.k for t in kvs[0::2]):
            kvs += [p.k, p.v]
    if flash and dropout_p == 0.0 and q.device.type == "cpu":
        return _FlashParts.apply(q.contiguous(), scale, parts, *kvs)
    # Scores per part, then one log-sum-exp across parts, so each query's weights sum to one.
    # slice_scatter (not in-place writes) keeps autograd's saved slices valid.
    scores = []
    total = torch.full(q.shape[:-1], float("-inf"), device=q.device)
    for p in parts:
        k = p.keys_of(p.k)
        s = (q[p.where()].float() @ k.float().transpose(-1, -2)) * scale
        if p.causal:
            rows, S = s.shape[-2:]
            s = s.masked_fill(torch.ones(rows, S, dtype=torch.bool, device=s.device).triu(1),
                              float("-inf"))
        if p.allowed is not None:
            s = s.masked_fill(~p.allowed, float("-inf"))
        scores.append(s)
        total = _put(total, p.where(), torch.logaddexp(total[p.where()], s.logsumexp(-1)))
    out = torch.zeros(q.shape[:-1] + (parts[0].v.shape[-1],), device=q.device)
    for p, s in zip(parts, scores):
        w = dropout((s - total[p.where()][..., None]).exp(), dropout_p)
        out = _put(out, p.where(), out[p.where()] + w @ p.keys_of(p.v).float())
    return out.to(q.dtype)


def _put(t: Tensor, at: tuple[slice, slice, slice], value: Tensor) -> Tensor:
    """t with t[at] = value, out of place (autograd-safe)."""
    inner = t[at[:2]].slice_scatter(value, dim=2, start=at[2].start, end=at[2].stop)
    return t.slice_scatter(inner, dim=1, start=at[1].start, end=at[1].stop)


def _pad_to(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad dim -2 (time) up to a multiple; padded positions come after every real one, so
    causality keeps them out of every real query's keys."""
    extra = -x.shape[-2] % multiple
    return F.pad(x, (0, 0, 0, extra)) if extra else x


# Key pieces per chunk in the blocked kernels (see `band_parts`). More pieces skip more of the
# invisible keys but make more, smaller kernel calls; on a 2-core CPU 2 ran as fast as 4 and
# faster than 1, 3 or 8 (benchmarks/attention.py at T=4096).
PIECES = 2


def band_parts(kc: Tensor, vc: Tensor, back: int) -> list[Part]:
    """Parts for query chunk n against key chunk n - back (keys kc, vc: (N, n, c, d)), in pieces.

    back=0: the chunk itself, causally (key a visible to row r iff a <= r); back=1: the previous
    chunk, key a visible to row r iff a > r (the rest of a window of c). The CPU flash kernel
    skips nothing inside one key block of up to 512, so one c x c call costs the full square.
    Cut into PIECES key pieces of h = c/PIECES, each piece p goes only to the rows that see
    some of it: rows [p*h, c) for back=0 (causally), rows [0, (p+1)*h) for back=1 (masked).
    That is (PIECES + 1) / (2 * PIECES) of the square: 3/4 for 2 pieces.
    """
    n, c = kc.shape[1], kc.shape[2]
    h = -(-c // min(PIECES, c))
    r = torch.arange(c, device=kc.device)
    parts = []
    for lo in range(0, c, h):
        keys = slice(lo, min(lo + h, c))
        if back == 0:
            parts.append(Part(0, n, kc, vc, causal=True, rows=slice(lo, c), key_pos=keys))
        else:
            rows = slice(0, keys.stop)
            later = (r[keys][None, :] > r[rows][:, None])[None]
            parts.append(Part(back, n, kc, vc, allowed=later, rows=rows,
                              key_chunks=slice(0, n - back), key_pos=keys))
    return parts


def local_attention(q: Tensor, k: Tensor, v: Tensor, window: int, scale: float,
                    dropout_p: float = 0.0, flash: bool = True) -> Tensor:
    """Local band attention (i - window < j <= i) of (B, H, T, d) tensors, in chunks.

    Queries go in chunks of c = window rows; row r of chunk n sees keys a <= r of its own chunk
    and a > r of the previous one (`band_parts`): about 1.5 * window keys per query instead of
    about T/2 for dense causal. Every part is a view of the same chunked keys: no copies; memory
    is O(T), plus O(window^2) for the masks.
    """
    B, H, T, d = q.shape
    if window >= T:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True,
                                              scale=scale)
    c = window
    qp, kp, vp = (_pad_to(t, c).flatten(0, 1) for t in (q, k, v))
    n = qp.shape[1] // c
    kc, vc = (t.view(B * H, n, c, t.shape[-1]) for t in (kp, vp))
    parts = band_parts(kc, vc, back=0) + (band_parts(kc, vc, back=1) if c > 1 else [])
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
        parts = band_parts(kc, vc, back=0)
        parts += [Part(c, c + 1, ks, vs, key_pos=slice(0, c * vb)) for c in range(1, n)]
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
