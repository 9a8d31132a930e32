"""Tokens/s and model FLOPs utilisation (MFU) of real trainer runs, a bounded number of steps each.

    python benchmarks/trainer_mfu.py --data titles.csv [--config sweeps/base.yaml ...]
        [--steps 60] [--warmup 10] [--device cuda|cpu] [--set key=value ...] [--out DIR] [--smoke]

Each config runs as `python -m trainer` (the very command a trial runs) with train.max_steps,
train.device and data.path set, in its own process. From its events.jsonl:
- step time: the median gap between consecutive `training_step` events after `--warmup` steps
  (compilation, if any, happens in those), leaving out gaps that hold an evaluation;
- tokens/s: batch x context / step time;
- model FLOPs per token: 6 x (the block matrices + the head) + 12 x n_layer x context x d_model
  for attention's scores and weighted sum (PaLM's convention: the full T x T, causal or not);
- MFU: FLOPs per token x tokens/s over the device's peak, measured in the same process as a
  large matmul in the run's precision (bf16, fp16 or fp32 as the run resolved it).
`--smoke` shrinks the model, data and steps so a CPU checks the whole path in a minute.
Writes mfu.json to --out when given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["data.num_titles=2000", "tokenizer.vocab_size=512", "model.d_model=64",
         "model.n_layer=2", "model.n_head=4", "train.context_length=64", "train.batch_size=16",
         "eval.tokens_per_batch=1024"]


def step_seconds(events: list[dict[str, Any]], warmup: int) -> float:
    """Median training step time after `warmup` steps, gaps holding an evaluation left out."""
    steps = {e["step"]: e["elapsed"] for e in events if e["event"] == "training_step"}
    evaluated = {e["step"] for e in events if e["event"] == "validation_step"}
    gaps = [steps[s] - steps[s - 1] for s in sorted(steps)
            if s > warmup + 1 and s - 1 in steps and s - 1 not in evaluated]
    if not gaps:
        raise SystemExit(f"no timed steps: raise --steps above --warmup + 1 ({warmup + 1})")
    return statistics.median(gaps)


def flops_per_token(cfg: Any, vocab_size: int) -> float:
    """Training FLOPs per token (forward + backward) of the config's model (see the docstring)."""
    import torch

    from trainer.model import GPT
    from trainer.optim import muon_split

    with torch.device("meta"):  # shapes only: no memory, no init time
        model = GPT(cfg, vocab_size, eos_id=0)
    matrices, _ = muon_split(model)  # exactly the 2-D weights inside the blocks
    matmul = sum(p.numel() for p in matrices) + vocab_size * cfg.model.d_model
    m = cfg.model
    return 6 * matmul + 12 * m.n_layer * cfg.train.context_length * m.d_model


def peak_flops(device: str, precision: str, n: int) -> float:
    """FLOP/s of an n x n x n matmul in `precision` on `device`: the best of 5 after a warm-up."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for i in range(6):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def measure(config: Path, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Run the trainer on `config` for --steps steps and compute its figures."""
    from trainer.config import load_config
    from trainer.events import read_events
    from trainer.precision import cpu_features

    overrides = [f"data.path={args.data}", f"train.max_steps={args.steps}",
                 f"train.device={args.device}", "tracking.mode=disabled",
                 *(SMOKE if args.smoke else []), *args.set]
    cmd = [sys.executable, "-m", "trainer", "--config", str(config), "--out", str(run_dir),
           *overrides]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{config}: trainer exited {done.returncode}:\n{done.stderr[-3000:]}")
    events = read_events(run_dir / "events.jsonl")
    info = next(e for e in events if e["event"] == "device_info")
    vocab = next(e for e in events if e["event"] == "dataset_info")["vocab_size"]
    cfg = load_config(config, overrides)
    B, T = cfg.train.batch_size, cfg.train.context_length
    seconds = step_seconds(events, args.warmup)
    tokens_per_s = B * T / seconds
    flops = flops_per_token(cfg, vocab)
    peak = peak_flops(args.device, info["precision"], 1024 if args.smoke else args.matmul)
    return {"config": str(config), "device": info["device"], "gpu": info["cuda"],
            "cpu": cpu_features(), "precision": info["precision"], "threads": info["threads"],
            "compile": cfg.train.compile, "set": args.set, "steps": args.steps,
            "warmup": args.warmup, "step_s": seconds, "tokens_per_s": tokens_per_s,
            "flops_per_token": flops, "peak_flops": peak, "mfu": flops * tokens_per_s / peak,
            "batch": B, "context": T, "d_model": cfg.model.d_model, "n_layer": cfg.model.n_layer,
            "vocab": vocab}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, nargs="+",
                   default=[Path("sweeps/base.yaml"), Path("sweeps/mainrun_best.yaml")])
    p.add_argument("--data", type=Path, required=True, help="the titles CSV (data.path)")
    p.add_argument("--steps", type=int, default=60, help="train.max_steps of each run")
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--matmul", type=int, default=8192, help="size of the peak-FLOP/s matmul")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more overrides for every run (e.g. train.compile=true)")
    p.add_argument("--out", type=Path, default=None, help="write mfu.json here")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model, 2000 titles, 6 steps: checks the path on a CPU")
    args = p.parse_args()
    if args.smoke:
        args.steps, args.warmup = min(args.steps, 6), min(args.warmup, 2)
    results = []
    with tempfile.TemporaryDirectory(prefix="mfu-") as tmp:
        for i, config in enumerate(args.config):
            r = measure(config, args, Path(tmp) / str(i))
            results.append(r)
            where = r["gpu"] or f"cpu: {r['cpu']}"
            print(f"{r['config']} [{' '.join(r['set'])}] d{r['d_model']} L{r['n_layer']} "
                  f"T{r['context']} B{r['batch']} V{r['vocab']} {r['precision']} "
                  f"compile={r['compile']}: {r['tokens_per_s']:,.0f} tok/s "
                  f"({r['step_s'] * 1000:.1f} ms/step, median after {r['warmup']} of "
                  f"{r['steps']} steps), {r['flops_per_token'] / 1e6:.1f} MFLOP/token, "
                  f"MFU {r['mfu']:.1%} of a measured {r['peak_flops'] / 1e9:,.0f} GFLOP/s "
                  f"{r['precision']} matmul [{where}]", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "mfu.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
