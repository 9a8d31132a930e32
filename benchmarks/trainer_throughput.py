"""Training throughput of our trainer against the challenge's train.py and a re-implementation.

    python benchmarks/trainer_throughput.py [--steps 6] [--warmup 2] [--rounds 2]
        [--challenge PATH/train.py] [--no-ref] [--precision fp32|bf16|fp16] [--compile]
        [--threads N] [--set key.path=value ...] [--quick] [--data-prep] [--no-train]

Every figure is printed with the CPU features it was measured on (`trainer.precision.
cpu_features`: the capability torch's kernels use, and whether the CPU has AVX-512, AVX512-BF16,
AMX), since the ratios differ several-fold between an AVX2-only CPU and one with AMX. Each ratio
says what it is against: `challenge` (the challenge's own train.py, given with --challenge: it
is not part of this repository) or `ref` (this file's re-implementation of it, always there).
Training losses are compared step for step, every digit of the float.

Shape: the challenge baseline (d_model 512, 6 layers, 8 heads, context 128, batch 64, vocab
16000) on batches of real token ids: the 20k shared Hacker News titles prepared by
`trainer.data.prepare_data` (vocab 16000), read sequentially as the challenge reads them.
`--quick` shrinks everything (d64 L2 H4 T64 B16 vocab 1000) for a smoke check in seconds.

Variants, each in its own subprocess, run alternately (ref, ours, ref, ours, ...) so that the
slow drifts of a shared machine hit both alike:
- `challenge`: the GPT and GPTConfig classes of the challenge's own train.py (--challenge),
  stepped by the loop of its main(): forward with the loss inside the model, zero_grad,
  backward, clip 1.0, SGD step, CosineAnnealingLR step.
- `ref`: the challenge's model and loop, re-implemented in challenge.py (hand-written T x T
  attention, fp32, SGD + CosineAnnealingLR + clip 1.0, loss inside the model as the challenge
  computes it).
- `ours`: `trainer.model.GPT` built from sweeps/base.yaml (plus --precision/--compile/--set),
  stepped by `trainer.loop.train_step`: the very function the training loop calls per step,
  after `trainer.loop.keep_freed_memory()` as the loop calls it on a CPU (--default-malloc skips
  it, to measure its share).

Both start from seed 1337, take `--warmup` untimed steps and then `--steps` timed ones on the
same batches with the challenge's full-run cosine schedule (T_max = 7 epochs of batches), then
score the same fixed validation slice with `trainer.metrics.evaluate`.

Measurements:
- tokens/s: batch x context x timed steps / their summed wall time; the median over rounds.
- peak memory: the child's peak resident set size (getrusage RUSAGE_SELF ru_maxrss) right
  after the timed steps, minus that of a baseline child that only imports torch and the trainer
  and loads the token ids. This is the extra host memory the model, optimizer and one step need.
- val loss: `val_loss_tok` (nats per token) over the fixed slice; deterministic on a CPU.
- compile/warm-up time: the warm-up steps' wall time, reported apart (it holds torch.compile's
  compilation when --compile is on).
- MFU: the share of the CPU's peak FLOP/s a variant's steps reach: FLOPs per token counted from
  the variant's own model (6 x the weights of its nn.Linear layers, the tied head included,
  + 12 x layers x context x d_model for attention, PaLM's convention as in trainer_mfu.py) x
  tokens/s, over the CPU's peak: a large fp32 matmul timed in every child right after its timed
  steps (trainer_mfu.peak_flops), the median over all children.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from challenge import build_reference, challenge_step, load_challenge  # this folder

REPO = Path(__file__).resolve().parents[1]
DATA_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "hacker_news.csv"
sys.path.insert(0, str(REPO))  # run as a script from anywhere: `trainer` is the repo's package

SEED = 1337
EPOCHS = 7  # the challenge's run length: sets the cosine schedule's T_max
FULL = {"d_model": 512, "n_layer": 6, "n_head": 8, "context": 128, "batch": 64, "vocab": 16000}
QUICK = {"d_model": 64, "n_layer": 2, "n_head": 4, "context": 64, "batch": 16, "vocab": 1000}


# ------------------------------------------------------------------ child processes


def _peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _flops_per_token(model: Any, shape: dict[str, int]) -> float:
    """Training FLOPs per token of `model`, counted from its own layers (see the docstring)."""
    import torch

    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6 * linear + 12 * shape["n_layer"] * shape["context"] * shape["d_model"]


def _load(shape: dict[str, int], cache_dir: Path):
    """The prepared token ids of the shared titles at this shape's vocab."""
    from trainer.config import DataConfig, TokenizerConfig
    from trainer.data import prepare_data

    return prepare_data(DataConfig(path=DATA_CSV, num_titles=100_000, seed=SEED, val_frac=0.1),
                        TokenizerConfig(vocab_size=shape["vocab"]), cache_dir)


def _batches(train_ids, B: int, T: int, n: int):
    """The challenge's sequential batches with its wrap-around, the first n of them."""
    span, ptr, out = B * T + 1, 0, []
    for _ in range(n):
        if ptr + span >= len(train_ids):
            ptr = 0
        batch = train_ids[ptr : ptr + span]
        ptr += B * T
        out.append((batch[:-1].view(B, T), batch[1:].view(B, T)))
    return out


def run_child(opts: dict[str, Any]) -> dict[str, Any]:
    """One variant in this process: returns its measurements (printed as JSON by main)."""
    import torch

    import trainer.loop as loop  # imported by the baseline too, so it is in the baseline RSS
    from trainer.config import load_config
    from trainer.metrics import evaluate
    from trainer.model import GPT
    from trainer.optim import lr_factor, make_optimizer
    from trainer.precision import cpu_features
    from trainer_mfu import peak_flops  # this folder: the same peak measurement as trainer_mfu

    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    shape, variant = opts["shape"], opts["variant"]
    data = _load(shape, Path(opts["cache_dir"]))
    B, T = shape["batch"], shape["context"]
    if variant == "baseline":
        return {"variant": variant, "peak_rss_mib": _peak_rss_mib()}

    max_steps = EPOCHS * (len(data.train_ids) // (B * T))
    batches = _batches(data.train_ids, B, T, opts["warmup"] + opts["steps"])
    # A fixed validation slice: whole eval batches of the challenge's layout (span B*T+1).
    val_ids = data.val_ids[: min(len(data.val_ids), opts["eval_batches"] * (B * T + 1))]
    torch.manual_seed(SEED)
    info: dict[str, Any] = {"variant": variant, "threads": torch.get_num_threads(),
                            "cpu": cpu_features()}

    if variant in ("ref", "challenge"):
        if variant == "ref":
            model = build_reference(shape, data.vocab_size)
        else:
            challenge = load_challenge(Path(opts["challenge"]))
            model = challenge.GPT(challenge.GPTConfig(
                vocab_size=data.vocab_size, block_size=T, n_layer=shape["n_layer"],
                n_head=shape["n_head"], d_model=shape["d_model"], dropout=0.1))
        step = challenge_step(model, max_steps)

        def eval_model(x: torch.Tensor) -> torch.Tensor:
            return model(x)[0]

        amp_eval = None
        info["settings"] = ("the challenge's train.py: its GPT, the loop of its main()"
                            if variant == "challenge" else "challenge: fp32, manual attention")
    else:
        overrides = [f"data.path={DATA_CSV}", f"tokenizer.vocab_size={shape['vocab']}",
                     f"model.d_model={shape['d_model']}", f"model.n_layer={shape['n_layer']}",
                     f"model.n_head={shape['n_head']}", f"train.context_length={T}",
                     f"train.batch_size={B}", f"train.precision={opts['precision']}",
                     f"train.compile={str(opts['compile']).lower()}", *opts["set"]]
        cfg = load_config(REPO / "sweeps" / "base.yaml", overrides)
        device = torch.device("cpu")
        if not opts["default_malloc"]:
            loop.keep_freed_memory()  # as trainer.loop.train does on a CPU
        model = GPT(cfg, data.vocab_size, eos_id=data.eos_id)
        step_model = torch.compile(model) if cfg.train.compile else model
        opt = make_optimizer(model, cfg.optim)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: lr_factor(cfg.schedule, k, max_steps))
        scaler = torch.amp.GradScaler("cpu", enabled=cfg.train.precision == "fp16")

        def step(x: torch.Tensor, y: torch.Tensor) -> float:
            return loop.train_step(step_model, model, x, y, opt, sched, scaler,
                                   loop.autocast_for(cfg.train.precision, device),
                                   cfg.optim.grad_clip)

        eval_model = step_model
        amp_eval = loop.autocast_for(cfg.train.precision, device)
        info["settings"] = (f"precision={cfg.train.precision} compile={cfg.train.compile} "
                            f"keep_freed_memory={not opts['default_malloc']} "
                            + " ".join(opts["set"])).strip()

    model.train()
    t0 = time.perf_counter()
    for x, y in batches[: opts["warmup"]]:
        step(x, y)
    info["warmup_s"] = time.perf_counter() - t0
    times, losses = [], []
    for x, y in batches[opts["warmup"] :]:
        t = time.perf_counter()
        losses.append(step(x, y))
        times.append(time.perf_counter() - t)
    info["peak_rss_mib"] = _peak_rss_mib()  # before eval: the training step's own peak
    info["flops_per_token"] = _flops_per_token(model, shape)
    info["peak_flops"], info["matmul"] = peak_flops("cpu", "fp32", opts["matmul"]), opts["matmul"]
    model.eval()
    metrics = evaluate(eval_model, val_ids, T, B, data.val_chars, data.val_bytes, "cpu", amp_eval)
    info.update(step_s=times, tokens_per_s=B * T * len(times) / sum(times),
                train_losses=losses, val_loss_tok=metrics["val_loss_tok"],
                val_tokens=len(val_ids) - 1)
    return info


def run_data_prep(opts: dict[str, Any]) -> dict[str, Any]:
    """Time prepare_data once in this process (cold or warm depending on the cache dir)."""
    import trainer.data  # noqa: F401  (import time is not data preparation)

    t = time.perf_counter()
    data = _load(opts["shape"], Path(opts["cache_dir"]))
    return {"seconds": time.perf_counter() - t, "cache_hit": data.info["cache_hit"],
            "titles": data.info["train_titles"] + data.info["val_titles"]}


# ------------------------------------------------------------------ the parent


def spawn(opts: dict[str, Any]) -> dict[str, Any]:
    """Run one child of this script and return its JSON result (its last stdout line)."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(opts)],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        sys.exit(f"child {opts.get('variant', 'data-prep')} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def data_prep_section(shape: dict[str, int], reps: int) -> None:
    """Cold (fresh cache dir) and warm (same dir, new process) prepare_data times, medians."""
    cold, warm = [], []
    for _ in range(reps):
        with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
            opts = {"mode": "data-prep", "shape": shape, "cache_dir": tmp}
            first = spawn(opts)
            second = spawn(opts)
            assert not first["cache_hit"] and second["cache_hit"]
            cold.append(first["seconds"])
            warm.append(second["seconds"])
    print(f"\ndata preparation, {first['titles']} titles of {DATA_CSV.name}, vocab "
          f"{shape['vocab']} (prepare_data wall time in a fresh process, imports excluded; "
          f"median of {reps}):")
    print(f"  cold cache (read, shuffle, split, fit BPE, encode, write): {statistics.median(cold):.3f} s"
          f"   runs: {', '.join(f'{s:.3f}' for s in cold)}")
    print(f"  warm cache (hash source, read entry):                      {statistics.median(warm):.3f} s"
          f"   runs: {', '.join(f'{s:.3f}' for s in warm)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=2, help="ref/ours pairs, alternated")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="ours: train.precision")
    p.add_argument("--compile", action="store_true", help="ours: train.compile=true")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more config overrides for ours")
    p.add_argument("--default-malloc", action="store_true",
                   help="ours: skip trainer.loop.keep_freed_memory (to measure what it gives)")
    p.add_argument("--matmul", type=int, default=3072, help="size of the peak-FLOP/s matmul")
    p.add_argument("--eval-batches", type=int, default=4, help="val slice: this many eval batches")
    p.add_argument("--quick", action="store_true", help="tiny shape: a smoke check")
    p.add_argument("--cache-dir", type=Path, default=None, help="data cache (default: trainer's)")
    p.add_argument("--data-prep", action="store_true", help="also time data preparation")
    p.add_argument("--data-prep-reps", type=int, default=3)
    p.add_argument("--no-train", action="store_true", help="skip the throughput section")
    p.add_argument("--challenge", type=Path, default=None, metavar="TRAIN_PY",
                   help="also run the challenge's own train.py (a copy of it: its GPT and loop)")
    p.add_argument("--no-ref", action="store_true", help="skip this file's re-implementation")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.challenge and not args.challenge.is_file():
        p.error(f"--challenge: no file {args.challenge}")

    if args.child:  # inside a spawned child: measure and print one JSON line
        opts = json.loads(args.child)
        run = {"data-prep": run_data_prep, "train": run_child}[opts["mode"]]
        result = run(opts)
        print(json.dumps(result))
        return

    from trainer.__main__ import default_cache_dir

    shape = QUICK if args.quick else FULL
    cache_dir = str(args.cache_dir or default_cache_dir())
    if not args.no_train:
        common = {"mode": "train", "shape": shape, "cache_dir": cache_dir, "steps": args.steps,
                  "warmup": args.warmup, "threads": args.threads, "precision": args.precision,
                  "compile": args.compile, "set": args.set, "eval_batches": args.eval_batches,
                  "default_malloc": args.default_malloc, "matmul": 256 if args.quick else args.matmul,
                  "challenge": str(args.challenge.resolve()) if args.challenge else None}
        baseline = spawn({**common, "variant": "baseline"})  # also builds the cache if cold
        variants = ["challenge"] * bool(args.challenge) + ["ref"] * (not args.no_ref) + ["ours"]
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for r in range(args.rounds):
            for variant in variants:
                res = spawn({**common, "variant": variant})
                runs[variant].append(res)
                print(f"  round {r + 1} {variant:9s}: {res['tokens_per_s']:8.0f} tok/s  "
                      f"warm-up {res['warmup_s']:.1f} s  peak RSS {res['peak_rss_mib']:.0f} MiB  "
                      f"val_loss_tok {res['val_loss_tok']:.5f}  [cpu: {res['cpu']}]", flush=True)
        report(shape, args, baseline, runs)
    if args.data_prep:
        data_prep_section(shape, args.data_prep_reps)


def report(shape: dict[str, int], args: argparse.Namespace, baseline: dict[str, Any],
           runs: dict[str, list[dict[str, Any]]]) -> None:
    """The summary: medians over rounds, ours against each reference, memory over the baseline
    child, and whether the losses are the same numbers step for step."""
    base = baseline["peak_rss_mib"]
    tps = {v: statistics.median(r["tokens_per_s"] for r in rs) for v, rs in runs.items()}
    mem = {v: statistics.median(r["peak_rss_mib"] for r in rs) - base for v, rs in runs.items()}
    # One peak for all (the median over every child) so that MFU ratios equal tokens/s ratios.
    peak = statistics.median(r["peak_flops"] for rs in runs.values() for r in rs)
    mfu = {v: rs[0]["flops_per_token"] * tps[v] / peak for v, rs in runs.items()}
    print(f"\nshape d{shape['d_model']} L{shape['n_layer']} H{shape['n_head']} T{shape['context']} "
          f"B{shape['batch']} V{shape['vocab']}; {args.warmup} warm-up + {args.steps} timed steps; "
          f"median of {args.rounds} alternated rounds; threads {runs['ours'][0]['threads']}")
    cpu = runs["ours"][0]["cpu"]
    print(f"cpu: {cpu}")
    print("ref: the challenge's model and loop as re-implemented in this file; challenge: the "
          "challenge's own train.py (--challenge); ours: trainer.loop.train_step on sweeps/base.yaml")
    print("peak memory: child's getrusage ru_maxrss after the timed steps minus a baseline child "
          f"that imports torch + trainer and loads the ids ({base:.0f} MiB)")
    print("val loss: val_loss_tok (nats/token) on the first "
          f"{runs['ours'][0]['val_tokens'] + 1} validation ids after the same steps")
    print(f"MFU: FLOPs per token ({runs['ours'][0]['flops_per_token'] / 1e6:.1f} M, counted from "
          f"each model) x tokens/s over the fp32 peak timed in every child (median "
          f"{peak / 1e9:.0f} GFLOP/s, a {runs['ours'][0]['matmul']}^3 matmul)")
    for v, rs in runs.items():
        r = rs[0]
        print(f"  {v:9s} {tps[v]:9.0f} tok/s  MFU {mfu[v]:5.1%}  peak +{mem[v]:6.0f} MiB  "
              f"val_loss_tok {r['val_loss_tok']:.5f}  warm-up {r['warmup_s']:.1f} s  [{r['settings']}] "
              f"[cpu: {cpu}]")
    ours = runs["ours"]
    for v in [v for v in runs if v != "ours"]:
        # Each round's variants ran back to back, so a round's ratio cancels most of the drift.
        pairs = [o["tokens_per_s"] / r["tokens_per_s"] for r, o in zip(runs[v], ours)]
        same = all(r["train_losses"] == o["train_losses"] for r, o in zip(runs[v], ours))
        print(f"  ours/{v}: {tps['ours'] / tps[v]:.2f}x tokens/s (per round "
              f"{', '.join(f'{x:.2f}' for x in pairs)}), {mem['ours'] / mem[v]:.2f}x peak memory; "
              f"training losses {'identical' if same else 'DIFFERENT'} step for step (every "
              f"digit of the float), val_loss_tok delta "
              f"{ours[0]['val_loss_tok'] - runs[v][0]['val_loss_tok']:+.5f} [cpu: {cpu}]")


if __name__ == "__main__":
    main()
