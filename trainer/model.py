"""The GPT: token (+ learned position) embedding, n_layer blocks, final norm, tied head.

With the defaults it is the challenge's model: pre-norm LayerNorm blocks, fused qkv with bias,
4x GELU MLP, learned positions initialised at zero, head tied to the token embedding,
N(0, 0.02) init. Options: QK-norm, logit soft-capping, and the title-boundary attention mask
(`attention.doc_mask`), for which the model is built with the `<eos>` id and derives each
batch's titles from its token ids (`trainer.segments`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.attention import SelfAttention
from trainer.config import Config, ModelConfig
from trainer.dropout import Dropout
from trainer.segments import Segments


def make_norm(cfg: ModelConfig) -> nn.Module:
    """LayerNorm (the challenge) or RMSNorm."""
    return nn.LayerNorm(cfg.d_model) if cfg.norm == "layernorm" else nn.RMSNorm(cfg.d_model)


class MLP(nn.Module):
    """Feed-forward: GELU, ReLU² or SwiGLU. SwiGLU has a third matrix: at the same mlp_ratio it
    holds 1.5x the parameters, so set mlp_ratio 8/3 to match a 4x GELU."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        self.activation = cfg.activation
        self.fc = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.gate = nn.Linear(cfg.d_model, hidden, bias=cfg.bias) if cfg.activation == "swiglu" else None
        self.proj = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.activation == "gelu":
            h = F.gelu(h)
        elif self.activation == "relu2":
            h = F.relu(h).square()
        else:
            h = F.silu(self.gate(x)) * h
        return self.drop(self.proj(h))


class Block(nn.Module):
    """Attention then MLP, each a residual branch; norms before (pre) or after (post) the add."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m = cfg.model
        self.pre = m.norm_position == "pre"
        self.ln1, self.ln2 = make_norm(m), make_norm(m)
        self.attn = SelfAttention(cfg.attention, m.d_model, m.n_head, m.dropout, m.bias,
                                  m.positions == "rotary", cfg.train.context_length,
                                  qk_norm=m.qk_norm)
        self.mlp = MLP(m)

    def forward(self, x: torch.Tensor, segments: Segments | None = None) -> torch.Tensor:
        if self.pre:
            x = x + self.attn(self.ln1(x), segments)
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attn(x, segments))
        return self.ln2(x + self.mlp(x))


class GPT(nn.Module):
    """Decoder-only language model over byte-level BPE tokens.

    `eos_id` (the Dataset's) is required with attention.doc_mask: titles end at `<eos>`.
    """

    def __init__(self, cfg: Config, vocab_size: int, eos_id: int | None = None) -> None:
        super().__init__()
        m = cfg.model
        if cfg.attention.doc_mask and eos_id is None:
            raise ValueError("attention.doc_mask needs the <eos> id: build GPT(cfg, vocab_size, "
                             "eos_id=dataset.eos_id)")
        self.eos_id = eos_id if cfg.attention.doc_mask else None
        self.logit_softcap = m.logit_softcap
        self.token_emb = nn.Embedding(vocab_size, m.d_model)
        self.pos_emb = (nn.Parameter(torch.zeros(1, cfg.train.context_length, m.d_model))
                        if m.positions == "learned" else None)
        self.drop = Dropout(m.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(m.n_layer))
        self.ln_f = make_norm(m) if m.norm_position == "pre" else nn.Identity()
        self.head = nn.Linear(m.d_model, vocab_size, bias=False)
        self._init_weights(m)
        if m.tie_embeddings:
            self.head.weight = self.token_emb.weight

    def _init_weights(self, m: ModelConfig) -> None:
        # "scaled" shrinks the residual outputs so the stream's variance stays flat with depth.
        out_std = m.init_std / math.sqrt(2 * m.n_layer) if m.init == "scaled" else m.init_std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = out_std if name.endswith(("attn.proj", "mlp.proj")) else m.init_std
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        """Trainable parameters, counting the tied head once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids (B, T)."""
        x = self.token_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb[:, : idx.size(1)]
        x = self.drop(x)
        segments = Segments.from_tokens(idx, self.eos_id) if self.eos_id is not None else None
        for block in self.blocks:
            x = block(x, segments)
        logits = self.head(self.ln_f(x))
        if self.logit_softcap is not None:
            logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)
        return logits
