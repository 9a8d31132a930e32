"""Muon's optimizer step where bf16 is emulated: torch.optim.Muon against `Fp32Muon`.

    python benchmarks/muon_step.py [--config sweeps/mainrun_best.yaml] [--rounds 2] [--threads N]

torch.optim.Muon orthogonalizes each update in bf16 (Newton-Schulz on `grad.bfloat16()`);
`trainer.optim.Fp32Muon` runs the same rule in fp32. On a CPU without native bf16 (AVX2 only)
the bf16 one is emulated and many times slower. This times the step alone on the block matrices
of --config at the challenge's baseline shape (d512 L6 H8 T128), from the same weights and
random gradients: each distinct matrix shape as a one-matrix step, torch's and ours alternated
in one process, median of --rounds; a full step is the sum over the step's matrices (time of its
shape x how many). Also prints how far ours is from torch's update (relative Frobenius norm of
the difference). Every figure is printed with the CPU features torch sees.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: `trainer` is the repo's package

SEED = 1337
SHAPE = {"d_model": 512, "n_layer": 6, "n_head": 8, "context": 128, "vocab": 16000}


def measure(config: Path, rounds: int) -> dict[str, Any]:
    """Muon's step per distinct block-matrix shape, torch's and ours alternated."""
    import torch

    from trainer.config import load_config
    from trainer.model import GPT
    from trainer.optim import Fp32Muon, muon_split
    from trainer.precision import cpu_features

    cfg = load_config(REPO / config, [
        f"model.d_model={SHAPE['d_model']}", f"model.n_layer={SHAPE['n_layer']}",
        f"model.n_head={SHAPE['n_head']}", f"train.context_length={SHAPE['context']}"])
    o = cfg.optim
    hyper = {"lr": o.muon_lr, "weight_decay": o.muon_weight_decay, "momentum": o.muon_momentum,
             "nesterov": o.muon_nesterov, "ns_steps": o.muon_ns_steps,
             "adjust_lr_fn": o.muon_lr_adjust}
    matrices, _ = muon_split(GPT(cfg, SHAPE["vocab"], eos_id=0))
    torch.manual_seed(SEED)
    rows = []
    for dims, count in Counter(tuple(p.shape) for p in matrices).items():
        weight, grad = 0.02 * torch.randn(dims), torch.randn(dims)
        times: dict[str, list[float]] = {"torch": [], "ours": []}
        change = {}
        for _ in range(rounds):
            for name, cls in (("torch", torch.optim.Muon), ("ours", Fp32Muon)):
                p = torch.nn.Parameter(weight.clone())
                p.grad = grad.clone()
                opt = cls([p], **hyper)
                t = time.perf_counter()
                opt.step()
                times[name].append(time.perf_counter() - t)
                change[name] = p.detach() - weight
        diff = (change["ours"] - change["torch"]).norm() / change["torch"].norm()
        rows.append({"shape": list(dims), "count": count, "rel_diff": diff.item(),
                     **{f"{n}_s": statistics.median(t) for n, t in times.items()}})
    return {"rows": rows, "cpu": cpu_features(), "threads": torch.get_num_threads(),
            "matrices": len(matrices)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("sweeps/mainrun_best.yaml"),
                   help="the config whose block matrices Muon steps (repo-relative)")
    p.add_argument("--rounds", type=int, default=2, help="torch/ours pairs per shape")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    res = measure(args.config, args.rounds)
    print(f"Muon step, block matrices of {args.config} at d{SHAPE['d_model']} "
          f"L{SHAPE['n_layer']} H{SHAPE['n_head']}; threads {res['threads']}; median of "
          f"{args.rounds} alternated rounds; cpu: {res['cpu']}")
    print(f"  {'matrix':>11} {'count':>5} {'torch.optim.Muon s':>18} {'Fp32Muon s':>10} "
          f"{'speed-up':>8} {'update diff':>11}")
    for r in res["rows"]:
        print(f"  {'x'.join(map(str, r['shape'])):>11} {r['count']:>5} {r['torch_s']:>18.3f} "
              f"{r['ours_s']:>10.3f} {r['torch_s'] / r['ours_s']:>7.1f}x {r['rel_diff']:>11.4f}")
    total = {n: sum(r[f"{n}_s"] * r["count"] for r in res["rows"]) for n in ("torch", "ours")}
    print(f"  one step over all {res['matrices']} matrices: torch.optim.Muon {total['torch']:.2f} s, "
          f"Fp32Muon {total['ours']:.2f} s: {total['torch'] / total['ours']:.1f}x "
          f"[cpu: {res['cpu']}]")


if __name__ == "__main__":
    main()
