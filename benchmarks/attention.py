"""Attention variants: forward+backward time and peak memory against dense causal SDPA.

    python benchmarks/attention.py [--T 256 1024 4096 8192] [--batch 1 --heads 8] [--reps 3]
        [--device cpu|cuda] [--no-memory]

Each (variant, T) measures memory in its own subprocess so that its peak is its own; the
variants of one T are timed together in one subprocess, interleaved. Memory is the
process's peak resident set size (getrusage ru_maxrss) during one forward+backward, minus the
resident size just before it (inputs already allocated): the extra host memory the attention
needs. On CUDA it is torch.cuda.max_memory_allocated over the same step instead. Time is the
best of `--reps` forward+backward steps after two warm-up steps (the minimum: this
shared 2-core machine shows large run-to-run noise, which only ever adds time) (on CUDA, FlexAttention's
compilation happens in the warm-up). The anchor `dense` is F.scaled_dot_product_attention with
is_causal=True, called directly; the other rows go through SelfAttention.attend as the model does.
Every process first sets glibc's malloc to keep freed memory (`trainer.loop.keep_freed_memory`),
as the trainer does on CPU, so all rows run under the allocator they run under in training.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    "dense": None,
    "causal": {"type": "causal"},
    "local": {"type": "local", "window": 256},
    "sparse": {"type": "sparse", "pattern": "fixed", "block": 64, "local_attn_ctx": 256},
}


def _rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _setup(variant: str, T: int, batch: int, heads: int, device: str):
    """Inputs and a forward+backward step (returning seconds) for one variant at one length."""
    import torch
    import torch.nn.functional as F
    from pydantic import TypeAdapter

    from trainer.attention import SelfAttention
    from trainer.attention_config import AttentionConfig

    torch.manual_seed(0)
    d = 64
    q, k, v = (torch.randn(batch, heads, T, d, device=device, requires_grad=True)
               for _ in range(3))
    if variant == "dense":
        attend = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    else:
        cfg = TypeAdapter(AttentionConfig).validate_python(VARIANTS[variant])
        layer = SelfAttention(cfg, heads * d, heads, 0.0, False, False, T).to(device)
        attend = lambda: layer.attend(q, k, v)  # noqa: E731
    grad = torch.randn(batch, heads, T, d, device=device)

    def step() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        attend().backward(grad)
        if device == "cuda":
            torch.cuda.synchronize()
        for t in (q, k, v):
            t.grad = None
        return time.perf_counter() - t0

    return step


def measure_memory(variant: str, T: int, batch: int, heads: int, device: str) -> float:
    """Extra peak memory (MiB) of one forward+backward step, in this (fresh) process."""
    import torch

    step = _setup(variant, T, batch, heads, device)
    if device == "cuda":
        step()  # compile outside the memory window
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
        step()
        return torch.cuda.max_memory_allocated() / 2**20 - base
    base = _rss_mb()
    step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base


def measure_times(variants: list[str], T: int, batch: int, heads: int, reps: int,
                  device: str) -> dict[str, float]:
    """Best forward+backward ms per variant; variants interleave round by round so that a burst
    of machine noise hits them all alike rather than one."""
    steps = {v: _setup(v, T, batch, heads, device) for v in variants}
    for step in steps.values():
        step(), step()  # warm-up: page faults, thread pools, compilation
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(reps):
        for v, step in steps.items():
            times[v].append(step())
    return {v: 1000 * min(t) for v, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--T", type=int, nargs="+", default=[256, 1024, 4096, 8192])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--no-memory", action="store_true",
                   help="time only: skip the per-variant memory processes (each compiles anew)")
    p.add_argument("--child", nargs=2, metavar=("VARIANT", "T"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        from trainer.loop import keep_freed_memory

        keep_freed_memory()
        kind, T = args.child[0], int(args.child[1])
        if kind == "time":
            out = measure_times(args.variants, T, args.batch, args.heads, args.reps, args.device)
        else:
            out = measure_memory(kind, T, args.batch, args.heads, args.device)
        print(json.dumps(out))
        return
    import torch

    from trainer.precision import cpu_features

    where = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu: {cpu_features()}"
    print(f"device={args.device} threads={torch.get_num_threads()} B={args.batch} "
          f"H={args.heads} head_dim=64 fp32; forward+backward, best of {args.reps} [{where}]")
    print(f"{'T':>6} {'variant':>8} {'ms':>10} {'x dense':>8} {'peak MiB':>9} {'mem/dense':>9}")

    def child(kind: str, T: int):
        cmd = [sys.executable, __file__, "--child", kind, str(T), "--batch", str(args.batch),
               "--heads", str(args.heads), "--reps", str(args.reps), "--device", args.device,
               "--variants", *args.variants]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[1])
        return json.loads(done.stdout.strip().splitlines()[-1])

    for T in args.T:
        ms = child("time", T)
        mem = {v: float("nan") if args.no_memory else child(v, T) for v in args.variants}
        for v in args.variants:
            print(f"{T:>6} {v:>8} {ms[v]:>10.1f} {ms['dense'] / ms[v]:>7.2f}x "
                  f"{mem[v]:>9.1f} {mem[v] / max(mem['dense'], 0.1):>9.2f}", flush=True)

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
