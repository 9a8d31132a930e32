"""`orch plot` on real tiny sweeps of the fake trainer: the PNGs exist, parse, and are not blank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.image import imread
from orch_helpers import orch_env, run_orch, write_spec

PNG = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG, path
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert float(np.var(pixels[..., :3])) > 0, f"{path.name} is blank"
    assert path.stat().st_size < 150_000


def test_plot_writes_curves_parameter_plots_and_heatmap(orch_home: Path, tmp_path: Path) -> None:
    # A grid over a categorical and a numeric parameter, one cell crashing (a missing cell).
    curves = {f"{norm},{lr}": {"curve": [3.0, 2.5 - i * 0.1 - j * 0.05, 2.0 - i * 0.1 - j * 0.05,
                                         1.8 - i * 0.1 - j * 0.05]}
              for i, norm in enumerate(["layernorm", "rmsnorm"])
              for j, lr in enumerate(["0.001", "0.003", "0.01"])}
    curves["rmsnorm,0.01"] = {"mode": "crash"}
    script = {"key": ["model.norm", "optim.lr"], "cases": curves}
    spec = write_spec(tmp_path / "h.yaml", name="h", parameters={
        "model.norm": {"values": ["layernorm", "rmsnorm"]},
        "optim.lr": {"values": [0.001, 0.003, 0.01]}},
        resources={"cpu_slots": 3, "retries": 0})
    env = orch_env(orch_home, script)
    proc = run_orch(["sweep", str(spec)], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    proc = run_orch(["plot", "h"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = orch_home / "runs" / "h" / "plots"
    names = sorted(p.name for p in folder.glob("*.png"))
    assert names == ["curves_step.png", "curves_time.png",
                     "heatmap_model.norm_optim.lr.png", "param_model.norm.png",
                     "param_optim.lr.png"]
    assert sorted(Path(line).name for line in proc.stdout.split()) == names
    for name in names:
        _check_png(folder / name)

    out = tmp_path / "elsewhere"
    again = run_orch(["plot", "h", "--out", str(out)], env)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.glob("*.png")) == names
    assert run_orch(["plot", "nope"], env).returncode == 2


def test_plot_of_a_seed_sweep_has_curves_and_no_seed_plots(orch_home: Path,
                                                           tmp_path: Path) -> None:
    script = {"key": "train.seed", "cases": {"1": {"curve": [3, 2, 1]},
                                             "2": {"curve": [3, 2.2, 1.4]},
                                             "3": {"mode": "diverge", "curve": [2.5, 2.0]}}}
    spec = write_spec(tmp_path / "s.yaml", parameters={"train.seed": {"values": [1, 2, 3]}})
    env = orch_env(orch_home, script)
    assert run_orch(["sweep", str(spec)], env).returncode == 0
    proc = run_orch(["plot", "t"], env)
    assert proc.returncode == 0, proc.stderr
    folder = orch_home / "runs" / "t" / "plots"
    assert sorted(p.name for p in folder.glob("*.png")) == ["curves_step.png", "curves_time.png"]
    for p in folder.glob("*.png"):
        _check_png(p)


def test_no_other_curve_takes_the_best_ones_red() -> None:
    from matplotlib.colors import to_hex

    from orchestrator.report.plots import BEST, _color

    for count in (1, 4, 9, 12):
        shades = [to_hex(_color(i, count)) for i in range(count)]
        assert BEST not in shades and len(set(shades)) == count


def test_a_value_with_one_trial_gets_no_box() -> None:
    """Boxes by category: a value with one finished trial is a point labelled n=1, never a box."""
    from orchestrator.ledger_rows import Trial
    from orchestrator.report.plots import by_parameter
    from orchestrator.states import TrialState

    def trial(number: int, norm: str, loss: float) -> Trial:
        return Trial(id=number, sweep="s", number=number, config_hash=str(number),
                     params={"model.norm": norm}, state=TrialState.FINISHED, reason=None,
                     exit_code=0, attempts=1, created_at=0.0, started_at=0.0, ended_at=1.0,
                     run_dir=None, pid=None, pgid=None, slot=None, device=None, step=None,
                     max_steps=None, last_metric=loss, best_metric=loss,
                     final={"val_loss": loss}, best={}, program_wall=1.0)

    trials = [trial(1, "layernorm", 2.0), trial(2, "layernorm", 2.2), trial(3, "layernorm", 2.1),
              trial(4, "rmsnorm", 1.9)]
    ax = by_parameter("s", trials, "model.norm", "val_loss", "minimize").axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["layernorm\nn=3", "rmsnorm\nn=1"]
    # Box lines (box, whiskers, caps, median) sit only around x=1, the value with three trials.
    xs = {round(float(x)) for line in ax.lines for x in line.get_xdata()}
    assert xs == {1}
