"""`python -m trainer attention-mask`: draw a config's attention pattern, one panel per head."""

from __future__ import annotations

import math
from pathlib import Path

from trainer.config import Config


def draw_mask(cfg: Config, out: Path) -> None:
    """Write a PNG of the dense (query x key) mask of every head at the config's context length.

    Heads with identical patterns are still drawn separately, so the strided split (first half
    local, second half strided) and the fixed pattern's per-head summary blocks are visible.
    """
    import matplotlib  # lazy: only this command needs it

    matplotlib.use("Agg")  # headless: no display on servers and in containers
    import matplotlib.pyplot as plt

    from trainer.sparse import pattern_mask

    n_head, T = cfg.model.n_head, cfg.train.context_length
    mask = pattern_mask(cfg.attention, n_head, T).numpy()
    cols = min(n_head, 4)
    rows = math.ceil(n_head / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows + 0.6), squeeze=False)
    for h, ax in enumerate(axes.flat):
        if h >= n_head:
            ax.axis("off")
            continue
        ax.imshow(mask[h], cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
        ax.set_title(f"head {h}: {int(mask[h].sum())} pairs", fontsize=9)
        ax.set_xlabel("key j", fontsize=8)
        ax.set_ylabel("query i", fontsize=8)
        ax.tick_params(labelsize=7)
    params = cfg.attention.model_dump(exclude_none=True)
    fig.suptitle(", ".join(f"{k}={v}" for k, v in params.items()) + f", T={T}", fontsize=10)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
