"""The validation metrics against independent computations."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.config import load_config
from trainer.describe import METRIC_GOALS
from trainer.metrics import METRICS, evaluate
from trainer.model import GPT


def challenge_val_loss(model: nn.Module, val_ids: torch.Tensor, T: int, B: int,
                       val_chars: int) -> float:
    """The mainrun challenge's evaluate(), written out as it is there."""
    span = T * B + 1
    losses = 0.0
    for ptr in range(0, len(val_ids) - span + 1, span):
        batch = val_ids[ptr : ptr + span]
        x, y = batch[:-1].view(B, T), batch[1:].view(B, T)
        logits = model(x)
        losses += F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1),
                                  reduction="sum").item()
    return losses / val_chars


def test_val_loss_equals_the_challenge_computation_on_a_tiny_gpt() -> None:
    cfg = load_config(None, ["model.d_model=32", "model.n_layer=1", "model.n_head=2",
                             "train.context_length=16", "model.dropout=0"])
    torch.manual_seed(0)
    model = GPT(cfg, vocab_size=97).eval()
    val_ids = torch.randint(0, 97, (1000,))
    with torch.no_grad():
        expected = challenge_val_loss(model, val_ids, T=16, B=4, val_chars=2345)
        got = evaluate(model, val_ids, 16, 4, val_chars=2345, val_bytes=2400)
    assert got["val_loss"] is not None
    assert math.isclose(got["val_loss"], expected, rel_tol=1e-5)
    # 1000 ids, 999 targets; span 65 fits 15 times: 15 * 64 targets scored by the challenge.
    assert math.isclose(got["val_coverage"], 15 * 64 / 999)


class Bigram(nn.Module):
    """Logits depend on the current token only, so every target's loss is context-free."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)


def test_every_validation_token_is_scored_exactly_once() -> None:
    torch.manual_seed(1)
    model = Bigram(50)
    for n, T, B in [(1000, 16, 4), (777, 8, 3), (100, 16, 8), (65, 16, 4), (66, 16, 4)]:
        val_ids = torch.randint(0, 50, (n,))
        with torch.no_grad():
            per_target = F.cross_entropy(model(val_ids[:-1]), val_ids[1:], reduction="none")
            got = evaluate(model, val_ids, T, B, val_chars=n * 3, val_bytes=n * 4)
        assert math.isclose(got["val_loss_tok"], per_target.mean().item(), rel_tol=1e-5), (n, T, B)
        assert math.isclose(got["val_bpb"], per_target.sum().item() / math.log(2) / (n * 4),
                            rel_tol=1e-5)


def test_val_loss_is_missing_not_zero_when_no_full_batch_fits() -> None:
    model = Bigram(20)
    val_ids = torch.randint(0, 20, (50,))
    with torch.no_grad():
        got = evaluate(model, val_ids, 16, 4, val_chars=100, val_bytes=100)
    assert got["val_loss"] is None
    assert got["val_coverage"] == 0.0
    assert got["val_loss_tok"] > 0


def test_a_larger_eval_batch_lowers_coverage() -> None:
    model = Bigram(20)
    val_ids = torch.randint(0, 20, (3000,))
    with torch.no_grad():
        small = evaluate(model, val_ids, 16, 4, val_chars=1, val_bytes=1)
        large = evaluate(model, val_ids, 16, 64, val_chars=1, val_bytes=1)
    assert large["val_coverage"] < small["val_coverage"]
    assert math.isclose(large["val_loss_tok"], small["val_loss_tok"], rel_tol=1e-5)


def test_the_trainer_declares_exactly_the_metrics_it_reports() -> None:
    # `describe` declares the metrics (the orchestrator reads them there; test_contract.py
    # checks that side): they must be what evaluate really returns.
    with torch.no_grad():
        got = evaluate(Bigram(20), torch.randint(0, 20, (200,)), 8, 2, val_chars=300,
                       val_bytes=300)
    assert tuple(got) == METRICS
    assert sorted(m["name"] for m in METRIC_GOALS) == sorted(METRICS)
