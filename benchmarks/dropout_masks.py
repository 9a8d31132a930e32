"""Dropout on the CPU: torch's `F.dropout` against `trainer.dropout` (the same masks, drawn by
the compiled kernel), side by side in one process.

    python benchmarks/dropout_masks.py [--rounds 5]

Shapes: the baseline's (batch 64, context 128, d_model 512, 8 heads): the attention weights
(64, 8, 128, 128), dropped once per layer, and the residual stream (64, 128, 512), dropped twice
per layer and once after the embeddings. Both run after `trainer.loop.keep_freed_memory`,
as the training loop runs them, alternated, on the same input from the same generator state;
each round checks that the outputs are equal. Prints ns per element (the median over rounds),
the ratio, what one baseline step (6 layers) spends on it, and the CPU features torch sees.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from trainer import dropout as drop  # noqa: E402
from trainer.loop import keep_freed_memory  # noqa: E402
from trainer.precision import cpu_features  # noqa: E402

SHAPES = {"attention weights": ((64, 8, 128, 128), 6), "residual stream": ((64, 128, 512), 13)}
P = 0.1


def timed(fn, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Seconds of one call of fn(x, P) from seed 1337, and its output."""
    torch.manual_seed(1337)
    start = time.perf_counter()
    y = fn(x, P)
    return time.perf_counter() - start, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    keep_freed_memory()
    masks = drop.compiled_masks()
    print(f"CPU: {cpu_features()}; {torch.get_num_threads()} threads; torch {torch.__version__}")
    print(f"masks: {masks.describe()}")
    if masks.draw is None:
        sys.exit("nothing to compare: the kernel is not in use here")
    ours = lambda x, p: drop.dropout(x, p, masks=masks)  # noqa: E731
    per_step = {"torch": 0.0, "ours": 0.0}
    for name, (shape, per_step_calls) in SHAPES.items():
        x = torch.randn(shape)
        for fn in (F.dropout, ours):  # warm the allocator and the kernel
            timed(fn, x)
        theirs_s, ours_s = [], []
        for _ in range(args.rounds):
            t_theirs, a = timed(F.dropout, x)
            t_ours, b = timed(ours, x)
            assert torch.equal(a, b), "the outputs differ"
            theirs_s.append(t_theirs)
            ours_s.append(t_ours)
        n = x.numel()
        t, o = statistics.median(theirs_s), statistics.median(ours_s)
        per_step["torch"] += t * per_step_calls
        per_step["ours"] += o * per_step_calls
        print(f"{name} {tuple(shape)}: F.dropout {t / n * 1e9:.2f} ns/element, ours "
              f"{o / n * 1e9:.2f} ns/element: {t / o:.2f}x (outputs equal every round)")
    print(f"one baseline step's forward dropout (6 attention + 13 residual): F.dropout "
          f"{per_step['torch']:.3f} s, ours {per_step['ours']:.3f} s: "
          f"{per_step['torch'] / per_step['ours']:.2f}x")


if __name__ == "__main__":
    main()
