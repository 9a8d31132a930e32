"""Title-boundary ("document") masking: every attention pattern AND "same title".

A batch row is a window of the token stream `t1 <eos> t2 <eos> ...`, so the titles are found
from the `<eos>` ids alone. Segment ids number the titles of each row:
seg[b, t] = number of `<eos>` in idx[b, :t] (exclusive). An `<eos>` therefore belongs to the
title it closes: it is that title's last target, predicted from that title, and as an input it
still sees that title. The token after it opens the next title and sees nothing before it.

Query i may see key j iff the variant's pattern allows (h, i, j) AND seg[b, i] == seg[b, j].
Every pattern is causal and includes the diagonal, and segments are contiguous, so the keys of
query i lie in [start of i's title, i] and no row is ever empty. Three implementations, held
equal by the tests:

- `reference_mask`: the dense (B, H, T, T) definition (reference path, tests).
- `segment_attention` (CPU, and CUDA while attention dropout is active): with W the longest
  title in the batch (a run of equal segment ids), every allowed key is within the last W
  positions, so the local-band kernel of `trainer.sparse` with window W and per-part masks
  (pattern AND same segment) computes it in O(B * H * T * W) memory, never T x T, unless one
  title fills a whole row (W = T).
- `flex_attention` (CUDA): FlexAttention with mask_mod = pattern AND same segment. The block
  mask depends on the batch, so it is built once per forward and shared by every layer
  (`Segments.cache`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from trainer import sparse

Tensor = torch.Tensor


def segment_ids(idx: Tensor, eos_id: int) -> Tensor:
    """(B, T) title numbers of token ids (B, T): the count of `<eos>` strictly before each."""
    is_eos = (idx == eos_id).to(torch.int32)
    return torch.cumsum(is_eos, dim=1, dtype=torch.int32) - is_eos


class Segments:
    """One batch's segment ids and what is derived from them, shared by all layers of a forward."""

    def __init__(self, ids: Tensor) -> None:
        self.ids = ids  # (B, T) int, non-decreasing along T
        self.cache: dict[Any, Any] = {}

    @classmethod
    def from_tokens(cls, idx: Tensor, eos_id: int) -> Segments:
        """Segments of token ids (B, T) split at `<eos>` (which closes its title)."""
        return cls(segment_ids(idx, eos_id))

    def longest(self) -> int:
        """Length of the longest title piece in any row (the window the CPU kernel needs)."""
        if "longest" not in self.cache:
            B, T = self.ids.shape
            rows = torch.arange(B, device=self.ids.device)[:, None] * (T + 1)
            counts = torch.unique_consecutive((self.ids + rows).flatten(), return_counts=True)[1]
            self.cache["longest"] = int(counts.max())
        return self.cache["longest"]


def reference_mask(cfg, n_head: int, seg: Tensor) -> Tensor:
    """Dense boolean (B, H, T, T) mask: the pattern of `cfg` AND same segment."""
    T = seg.shape[1]
    same = seg[:, :, None] == seg[:, None, :]
    return sparse.pattern_mask(cfg, n_head, T, seg.device)[None] & same[:, None]


def mask_mod(cfg, n_head: int, seg: Tensor) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """FlexAttention mask_mod(b, h, q_idx, kv_idx): the pattern AND same segment."""
    pattern = sparse.mask_mod(cfg, n_head)
    return lambda b, h, i, j: pattern(b, h, i, j) & (seg[b, i] == seg[b, j])


def segment_attention(q: Tensor, k: Tensor, v: Tensor, cfg, segments: Segments, scale: float,
                      dropout_p: float = 0.0, flash: bool = True) -> Tensor:
    """Attention of (B, H, T, d) tensors under pattern AND same segment, in chunks of c = W.

    W is the longest title piece in the batch. Query chunk n sees (A) its own chunk and (B) the
    previous one, each under a (B*H, chunks, c, c) mask of the pattern and the segments: a query
    never looks further back than its title's start, at most W - 1 positions.
    """
    B, H, T, d = q.shape
    c = min(segments.longest(), T)
    qp, kp, vp = (sparse._pad_to(t, c).flatten(0, 1) for t in (q, k, v))
    n = qp.shape[1] // c
    # Padded positions get their own segment (-1); being after every real position, causality
    # keeps them out of every real query's keys, and they see themselves (no empty rows).
    seg = F.pad(segments.ids, (0, n * c - T), value=-1).view(B, n, c)
    kc, vc = (t.view(B * H, n, c, t.shape[-1]) for t in (kp, vp))
    pattern = sparse.mask_mod(cfg, H)
    dev = q.device
    h = torch.arange(H, device=dev)[:, None, None, None]
    start = torch.arange(n, device=dev)[:, None, None] * c
    r = torch.arange(c, device=dev)

    def allowed(back: int) -> Tensor:
        """Mask of query chunks back..n-1 against key chunks 0..n-1-back."""
        i = start[back:] + r[:, None]
        j = start[back:] - back * c + r[None, :]
        pat = pattern(0, h, i, j).expand(H, n - back, c, c)
        same = seg[:, back:, :, None] == seg[:, : n - back, None, :]
        return (pat[None] & same[:, None]).reshape(B * H, n - back, c, c)

    parts = [sparse.Part(0, n, kc, vc, allowed=allowed(0))]
    if n > 1:
        parts.append(sparse.Part(1, n, kc, vc, allowed=allowed(1),
                                   key_chunks=slice(0, n - 1)))
    y = sparse.attend_parts(qp.view(B * H, n, c, d), parts, scale, dropout_p, flash)
    return y.view(B, H, n * c, -1)[:, :, :T]


_compiled_flex: Callable | None = None


def flex_attention(q: Tensor, k: Tensor, v: Tensor, cfg, segments: Segments,
                   scale: float) -> Tensor:
    """FlexAttention under pattern AND same segment (no dropout); the block mask is built once
    per batch and reused by the other layers through `segments.cache`."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import create_block_mask
    from torch.nn.attention.flex_attention import flex_attention as flex

    B, H, T, _ = q.shape
    key = ("flex", cfg.model_dump_json(), H, T, str(q.device))
    if key not in segments.cache:
        segments.cache[key] = create_block_mask(mask_mod(cfg, H, segments.ids), B=B, H=H,
                                                Q_LEN=T, KV_LEN=T, device=q.device)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=segments.cache[key], scale=scale)
