"""Muon where bf16 is emulated: Fp32Muon is torch's Muon with an fp32 orthogonalization."""

from __future__ import annotations

import pytest
import torch

from trainer import optim
from trainer.optim import Fp32Muon, orthogonalize
from trainer.precision import Device

SHAPES = [(48, 16), (16, 48), (32, 32)]  # tall, wide and square block matrices
NS = ((3.4445, -4.7750, 2.0315), 5, 1e-7)  # torch.optim.Muon's coefficients, steps and eps


def step_updates(cls: type[torch.optim.Muon], steps: int = 3, **hyper) -> list[list[torch.Tensor]]:
    """Each step's parameter change under `cls`, from the same weights and gradients."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(0.1 * torch.randn(*s)) for s in SHAPES]
    opt = cls(params, lr=0.02, weight_decay=0.1, **hyper)
    changes = []
    for _ in range(steps):
        before = [p.detach().clone() for p in params]
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        changes.append([p.detach() - b for p, b in zip(params, before)])
    return changes


HYPER = [{}, {"nesterov": False}, {"adjust_lr_fn": "match_rms_adamw"}, {"momentum": 0.8}]


@pytest.mark.parametrize("hyper", HYPER)
def test_fp32_muon_in_bf16_is_torch_muon_bit_for_bit(hyper, monkeypatch) -> None:
    """Momentum, Nesterov, weight decay and the lr adjustment are torch's: only the
    orthogonalization's precision differs."""
    monkeypatch.setattr(Fp32Muon, "ns_dtype", torch.bfloat16)
    for ours, theirs in zip(step_updates(Fp32Muon, **hyper),
                            step_updates(torch.optim.Muon, **hyper)):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("hyper", HYPER)
def test_fp32_muon_updates_agree_with_torch_to_bf16_tolerance(hyper) -> None:
    for ours, theirs in zip(step_updates(Fp32Muon, **hyper),
                            step_updates(torch.optim.Muon, **hyper)):
        for a, b in zip(ours, theirs):
            assert not torch.equal(a, b)  # fp32, not torch's bf16
            # bf16 keeps 8 bits: torch's orthogonalized updates are ~1.5% off fp32's.
            assert (a - b).norm() / b.norm() < 0.04


def test_orthogonalize_in_fp32_is_near_exact_where_bf16_is_not() -> None:
    torch.manual_seed(1)
    u = torch.randn(64, 24)
    exact = orthogonalize(u.double(), *NS, dtype=torch.float64)
    err = {d: ((orthogonalize(u, *NS, dtype=d).double() - exact).norm() / exact.norm()).item()
           for d in (torch.float32, torch.bfloat16)}
    assert err[torch.float32] < 1e-5 < 1e-3 < err[torch.bfloat16]
    # Newton-Schulz pushes the singular values towards 1 (Muon's ~U V^T, in (0.5, 1.5)).
    s = torch.linalg.svdvals(orthogonalize(u, *NS))
    assert s.min() > 0.5 and s.max() < 1.5


@pytest.mark.parametrize("native,expected", [(frozenset({"bf16"}), torch.optim.Muon),
                                             (frozenset(), Fp32Muon)])
def test_muon_is_torchs_only_where_bf16_is_native(native, expected, monkeypatch) -> None:
    monkeypatch.setattr(optim, "probe", lambda device: Device("test", native))
    assert optim.muon_for(torch.device("cpu")) is expected
