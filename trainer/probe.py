"""`python -m trainer probe`: time a few real training steps and one evaluation of a config.

The orchestrator turns the answer into a trial's estimated wall time before a sweep runs:
steps x seconds_per_step + evals x eval_seconds. The steps are the run's own (same data, same
model, same device), so the first one, which pays for allocation and kernel selection, is a
warm-up and is not timed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from trainer.config import Config
from trainer.data import DataError, prepare_data
from trainer.loop import autocast_for, keep_freed_memory, pick_device, train_step
from trainer.metrics import evaluate
from trainer.model import GPT
from trainer.optim import lr_factor, make_optimizer


def eval_steps(max_steps: int, batches: int, evals_per_epoch: int) -> int:
    """How many evaluations a run does: at step 1, every batches // evals_per_epoch steps, and
    at the end (trainer/loop.py's rule)."""
    interval = max(1, batches // evals_per_epoch)
    return len({1, max_steps} | set(range(interval, max_steps + 1, interval)))


def probe(cfg: Config, cache_dir: Path, timed_steps: int = 2,
          started: float | None = None) -> dict[str, Any]:
    """Measure seconds per training step (after one warm-up step) and one evaluation pass;
    `started`: when the process began, so the setup a trial pays (imports, loading the data,
    building the model) is counted too."""
    started = time.time() if started is None else started
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg.train.device)
    if device.type == "cpu":
        keep_freed_memory()
    t0 = time.time()
    data = prepare_data(cfg.data, cfg.tokenizer, cache_dir)
    prepare_s = time.time() - t0
    T, B = cfg.train.context_length, cfg.train.batch_size
    batches = len(data.train_ids) // (T * B)
    if batches == 0:
        raise DataError(f"{data.info['train_tokens']} training tokens do not fill one batch of "
                        f"train.batch_size x train.context_length = {B} x {T}")
    max_steps = cfg.train.epochs * batches
    if cfg.train.max_steps:
        max_steps = min(max_steps, cfg.train.max_steps)
    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg, data.vocab_size, eos_id=data.eos_id).to(device)
    step_model = torch.compile(model) if cfg.train.compile else model
    opt = make_optimizer(model, cfg.optim)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(cfg.schedule, k, max_steps))
    amp = autocast_for(cfg.train.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    train_ids = data.train_ids.to(device)
    model.train()
    # A trial finds the data cache this probe filled: a miss's tokenizing is not its setup.
    setup_s = time.time() - started - (0.0 if data.info.get("cache_hit") else prepare_s)

    def one_step(k: int) -> None:
        ptr = (k * B * T) % max(1, len(train_ids) - B * T - 1)
        batch = train_ids[ptr: ptr + B * T + 1]
        train_step(step_model, model, batch[:-1].view(B, T), batch[1:].view(B, T), opt, sched,
                   scaler, amp, cfg.optim.grad_clip)

    t_warm = time.time()
    one_step(0)  # warm-up: allocations, kernel choice, compilation
    _sync(device)
    t1 = time.time()
    if t1 - t_warm > 5:  # a slow step (a full-size model on CPU): one timed step tells enough
        timed_steps = 1
    for k in range(1, timed_steps + 1):
        one_step(k)
    _sync(device)
    per_step = (time.time() - t1) / timed_steps
    model.eval()
    # An evaluation's time is about proportional to the validation tokens: time two batches'
    # worth and scale, rather than a whole pass.
    eval_batch = cfg.eval.batch_for(T)
    part = data.val_ids[: 2 * (eval_batch * T + 1)]
    t2 = time.time()
    evaluate(step_model, part, T, eval_batch, data.val_chars, data.val_bytes, device,
             autocast_for(cfg.train.precision, device))
    _sync(device)
    eval_s = (time.time() - t2) * len(data.val_ids) / max(1, len(part))
    evals = eval_steps(max_steps, batches, cfg.train.evals_per_epoch)
    return {"seconds_per_step": per_step, "timed_steps": timed_steps, "steps": max_steps,
            "eval_seconds": eval_s, "evals": evals,
            "setup_seconds": setup_s,
            "seconds_per_trial": setup_s + max_steps * per_step + evals * eval_s,
            "prepare_seconds": prepare_s, "device": device.type, "cost_key": cfg.cost_key()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
