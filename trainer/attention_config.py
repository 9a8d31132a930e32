"""The attention variants' configs: a discriminated union on `type`, torch-free.

- `causal`: full causal attention (every key j <= i).
- `local`: query i sees keys i - window < j <= i.
- `sparse`: the Sparse Transformer patterns (Child et al. 2019) with the parameter names and
  meanings of OpenAI's `sparse_attention` reference (`blocksize` is `block` here).

Every variant takes `qk_dim`, a low-rank query/key projection ("bottleneck" attention). The
layer that runs them is `trainer.attention`; keeping the configs here lets `python -m trainer
schema | validate | docs` answer without importing torch.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Variant(BaseModel):
    """Fields and checks that every variant shares."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
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
