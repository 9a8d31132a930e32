"""One training run, top to bottom: data, model, optimizer, the loop, evaluation, result.json.

The defaults behave like the mainrun challenge: sequential batches, per-step schedule and grad
clip, evaluation at step 1, every batches // evals_per_epoch steps, and at the end.
"""

from __future__ import annotations

import math
import platform
import signal
import sys
import time
import traceback
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from trainer import exitcodes
from trainer.config import CHALLENGE_EVAL_TOKENS, Config, ConfigError
from trainer.data import DataError, batches_per_epoch, prepare_data
from trainer.dropout import compiled_masks
from trainer.events import EventLog, write_json_atomic
from trainer.metrics import METRICS, evaluate
from trainer.model import GPT
from trainer.optim import EMA, lr_factor, make_optimizer
from trainer.precision import probe as probe_device
from trainer.precision import resolve as resolve_precision
from trainer.tracking import Tracker, start_tracking


class Stop(Exception):
    """Raised inside the loop when SIGINT or SIGTERM arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Diverged(Exception):
    """Raised when a loss is NaN or infinite."""


@dataclass
class RunState:
    """What a run has done so far. `train` fills it in as it goes, so that a stopped, diverged
    or crashed run still writes an honest result.json from it."""

    t0: float = field(default_factory=time.time)  # when the run began (data prep included)
    tracker: Tracker | None = None
    max_steps: int | None = None
    parameters: int | None = None
    t_train: float | None = None  # when the training loop began; None while still preparing
    steps: int = 0
    tokens: int = 0
    eval_s: float = 0.0  # seconds spent evaluating: not counted in tokens/s
    final: dict[str, Any] | None = None  # the latest evaluation's metrics
    best: dict[str, Any] | None = None  # the best evaluation's metrics and its step
    best_score: float | None = None  # what "best" compares: val_loss, else val_loss_tok
    signal: int | None = None  # SIGINT/SIGTERM received: the loop stops after this step


def pick_device(choice: str) -> torch.device:
    """auto: CUDA when present, else CPU; asking for CUDA without one is a config error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is visible")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def keep_freed_memory() -> None:
    """On CPU, make glibc's malloc keep freed memory for reuse instead of unmapping it.

    Every training step frees and re-allocates the same large activations (the (B, T, vocab)
    logits alone are hundreds of MB). By default glibc serves blocks that large with mmap and
    returns them with munmap, so each step page-faults its whole working set in again (zeroed
    by the kernel): on the 2-core AMX machine this took more time than the matmuls. With mmap
    off and trimming off, freed blocks stay in the heap and the next step reuses them; the peak
    stays about one step's working set (benchmarks/trainer_throughput.py measures both). A
    no-op where libc is not glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's malloc.h
    mallopt(M_MMAP_MAX, 0)  # large blocks from the heap, not from fresh mmaps
    mallopt(M_TRIM_THRESHOLD, -1)  # -1: never give the heap's free top back (man mallopt)


def autocast_for(precision: str, device: torch.device):
    """Mixed-precision context: weights and optimizer stay fp32, matmuls run in bf16/fp16."""
    if precision == "fp32":
        return nullcontext()
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"autocast_for takes a resolved precision, not {precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_step(step_model: Callable[[torch.Tensor], torch.Tensor], model: torch.nn.Module,
               x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
               sched: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
               amp: AbstractContextManager, grad_clip: float | None) -> float:
    """One optimizer step on batch (x, y); returns the loss. A NaN/inf loss returns at once,
    before backward, and the caller stops the run. A function of its own so that
    benchmarks/trainer_throughput.py times exactly this step."""
    with amp:
        logits = step_model(x)
    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        return loss_value
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    sched.step()
    return loss_value


class Console:
    """The challenge-style line per evaluation, and a progress bar when stdout is a terminal."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stdout.isatty() and not quiet

    def eval_line(self, step: int, max_steps: int, metrics: dict[str, Any], elapsed: float) -> None:
        """Print one evaluation."""
        if self.quiet:
            return
        vl = metrics["val_loss"]
        shown = f"{vl:.6f}" if vl is not None else "n/a"
        print(f"\r[{step:>5}/{max_steps}] validation_step: loss={shown} "
              f"bpb={metrics['val_bpb']:.4f} coverage={metrics['val_coverage']:.1%} "
              f"time={elapsed:.2f}s", flush=True)

    def progress(self, step: int, max_steps: int, loss: float) -> None:
        """Redraw the progress bar in place."""
        if self.tty:
            done = int(30 * step / max_steps)
            print(f"\r[{'#' * done}{'.' * (30 - done)}] {step}/{max_steps} loss={loss:.4f}",
                  end="", flush=True)


def train(cfg: Config, cache_dir: Path, events: EventLog, console: Console,
          state: RunState) -> None:
    """Run the whole training; fills `state` as it goes so an interrupted run can still report."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg.train.device)
    if device.type == "cpu":
        keep_freed_memory()

    def warn(message: str) -> None:
        events.log("warning", message=message)
        if not console.quiet:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    precision, emulated = resolve_precision(cfg.train.precision, probe_device(device))
    events.log("device_info", device=str(device), torch=torch.__version__,
               threads=torch.get_num_threads(), precision=precision,
               cuda=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               dropout_masks=compiled_masks().describe()
               if device.type == "cpu" and cfg.model.dropout else None)
    if emulated:
        warn(emulated)
    data = prepare_data(cfg.data, cfg.tokenizer, cache_dir)
    T, B = cfg.train.context_length, cfg.train.batch_size
    batches = batches_per_epoch(len(data.train_ids), B, T, data.info["source"])
    max_steps = cfg.train.epochs * batches
    if cfg.train.max_steps:
        max_steps = min(max_steps, cfg.train.max_steps)
    eval_interval = max(1, batches // cfg.train.evals_per_epoch)
    state.max_steps = max_steps
    events.log("dataset_info", titles_count=data.info["train_titles"], epochs=cfg.train.epochs,
               batches_per_epoch=batches, tokens_per_epoch=len(data.train_ids),
               vocab_size=data.vocab_size, **data.info)

    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg, data.vocab_size, eos_id=data.eos_id).to(device)
    state.parameters = model.num_parameters()
    events.log("model_configured", model=cfg.model.model_dump(mode="json"),
               attention=cfg.attention.model_dump(mode="json"))
    events.log("model_info", parameters_count=state.parameters)
    step_model = torch.compile(model) if cfg.train.compile else model
    opt = make_optimizer(model, cfg.optim)
    ema = EMA(model, cfg.train.ema) if cfg.train.ema else None
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: lr_factor(cfg.schedule, k, max_steps))
    amp = autocast_for(precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    train_ids = data.train_ids.to(device)
    span = B * T + 1
    eval_batch = cfg.eval.batch_for(T)
    events.log("eval_configured", batch_size=eval_batch, context_length=T,
               tokens_per_batch=eval_batch * T, challenge_tokens_per_batch=CHALLENGE_EVAL_TOKENS,
               ema=cfg.train.ema)
    if eval_batch * T != CHALLENGE_EVAL_TOKENS:
        message = (f"eval batch x context is {eval_batch} x {T} = {eval_batch * T} tokens, not "
                   f"the challenge's 64 x 128 = {CHALLENGE_EVAL_TOKENS}: val_loss covers a "
                   "different share of the validation tokens (see val_coverage)")
        warn(message)

    def run_eval(step: int) -> None:
        t_eval = time.time()
        model.eval()
        with ema.swapped() if ema is not None else nullcontext():
            metrics = evaluate(step_model, data.val_ids, T, eval_batch, data.val_chars,
                               data.val_bytes, device, autocast_for(precision, device))
        model.train()
        state.eval_s += time.time() - t_eval
        elapsed = time.time() - state.t0
        state.final = dict(metrics)
        score = metrics["val_loss"] if metrics["val_loss"] is not None else metrics["val_loss_tok"]
        if not math.isfinite(score):
            raise Diverged(f"validation loss is {score} at step {step}")
        if state.best_score is None or score < state.best_score:
            state.best, state.best_score = {**metrics, "step": step}, score
        events.log("validation_step", step=step, max_steps=max_steps,
                   epoch=(step - 1) // batches + 1, elapsed=elapsed, **metrics)
        state.tracker.log(metrics, step)
        console.eval_line(step, max_steps, metrics, elapsed)

    ptr, step = 0, 0
    model.train()
    state.t_train = time.time()
    while step < max_steps:
        step += 1
        if ptr + span >= len(train_ids):  # the challenge's wrap-around
            ptr = 0
        batch = train_ids[ptr : ptr + span]
        ptr += B * T
        x, y = batch[:-1].view(B, T), batch[1:].view(B, T)
        lr = sched.get_last_lr()[0]
        loss_value = train_step(step_model, model, x, y, opt, sched, scaler, amp,
                                cfg.optim.grad_clip)
        if not math.isfinite(loss_value):
            raise Diverged(f"training loss is {loss_value} at step {step}")
        if ema is not None:
            ema.update()
        state.steps = step
        state.tokens = step * B * T
        events.log("training_step", step=step, max_steps=max_steps, loss=loss_value, lr=lr,
                   elapsed=time.time() - state.t0)
        state.tracker.log({"train_loss": loss_value, "lr": lr}, step)
        console.progress(step, max_steps, loss_value)
        if step == 1 or step % eval_interval == 0 or step == max_steps:
            run_eval(step)
        if state.signal:
            raise Stop(state.signal)


def run(cfg: Config, out_dir: Path, cache_dir: Path, quiet: bool = False) -> int:
    """Train one run into out_dir; always leaves events.jsonl and result.json; returns exit code."""
    out_dir.mkdir(parents=True, exist_ok=True)
    events = EventLog(out_dir / "events.jsonl")
    console = Console(quiet)
    state = RunState()

    def on_signal(signum: int, _frame: Any) -> None:
        if state.t_train is None:  # before the loop starts (data prep), stop at once
            raise Stop(signum)
        state.signal = signum  # the loop stops after the current step

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    status, reason, code = "finished", None, exitcodes.FINISHED
    try:
        tracker, cfg = start_tracking(cfg, out_dir)
        state.tracker = tracker
        events.log("hyperparameters_configured", config=cfg.model_dump(mode="json"),
                   config_hash=cfg.hash())
        train(cfg, cache_dir, events, console, state)
    except Stop as stop:
        status, reason = "stopped", f"received {stop}"
        code = exitcodes.STOPPED_SIGINT if stop.signum == signal.SIGINT else exitcodes.STOPPED_SIGTERM
    except Diverged as err:
        status, reason, code = "diverged", str(err), exitcodes.DIVERGED
    except (DataError, ConfigError) as err:
        status, reason, code = "failed", str(err), exitcodes.BAD_INPUT
        print(f"error: {err}", file=sys.stderr)
    except torch.OutOfMemoryError as err:
        status, reason, code = "failed", f"oom: {str(err).splitlines()[0]}", exitcodes.OOM
    except Exception as err:  # a crash: report it honestly, never as finished
        status, reason, code = "failed", f"{type(err).__name__}: {err}", exitcodes.CRASHED
        traceback.print_exc()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not quiet and sys.stdout.isatty():
        print()
    wall = time.time() - state.t0
    # Throughput counts training steps only, not evaluation passes.
    train_time = (time.time() - state.t_train - state.eval_s) if state.t_train is not None else 0.0
    best = state.best or {}
    result = {
        "status": status, "reason": reason, "exit_code": code,
        "steps": state.steps, "max_steps": state.max_steps,
        "final": state.final or {m: None for m in METRICS}, "best": best or None,
        "tokens_per_s": state.tokens / train_time if train_time > 0 else None,
        "parameters": state.parameters, "wall_time_s": wall,
        "config_hash": cfg.hash(), "config": cfg.model_dump(mode="json"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
    events.log("run_finished" if status == "finished" else "run_failed", status=status,
               reason=reason)
    events.close()
    write_json_atomic(out_dir / "result.json", result)
    if state.tracker is not None:
        state.tracker.summary({f"final_{k}": v for k, v in result["final"].items()}
                                 | {f"best_{k}": v for k, v in best.items()}
                                 # W&B's run state says only finished/failed: these say why.
                                 | {k: result[k] for k in ("status", "reason", "exit_code",
                                                           "steps", "max_steps", "config_hash",
                                                           "wall_time_s")})
        state.tracker.finish(ok=status == "finished")
    return code
