"""`orch report` (the HTML page, in a real headless browser), parameter importance, and
`orch best` (the winner as a config the trainer resolves to the same hash).

Expected numbers come from the fake trainer's scripted curves (and the ledger), never from a
rendered page.
"""

from __future__ import annotations

import io
import statistics
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from headless_browser import Browser, find_chromium
from orch_helpers import BASE_TINY, FAKE, orch_env, run_orch, unavailable, wait_for, write_spec

from orchestrator.ledger import Ledger
from orchestrator.report import figures, importance
from orchestrator.report.results import load, trial_values
from orchestrator.states import TrialState

LRS = {0.001: 2.0, 0.003: 1.6, 0.01: 1.2}  # lr matters most: a larger lr, a lower val_loss
LAYERS = {1: 0.05, 2: 0.0}  # a small effect
SEEDS = {1: 0.0, 2: 0.02}  # noise
DIVERGED = (0.01, 1, 2)  # lr, n_layer, seed of the one trial that diverges


def final(lr: float, layers: int, seed: int) -> float:
    """The final val_loss the script gives a trial."""
    return LRS[lr] + LAYERS[layers] + SEEDS[seed]


def _script() -> dict[str, Any]:
    cases = {f"{lr},{n},{s}": {"curve": [3.0, 2.5, final(lr, n, s)]}
             for lr in LRS for n in LAYERS for s in SEEDS}
    cases[",".join(map(str, DIVERGED))] = {"mode": "diverge", "curve": [3.0, 2.9]}
    return {"key": ["optim.lr", "model.n_layer", "train.seed"], "cases": cases}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, fake_schema_file: Path) -> Path:
    """ORCH_HOME with sweep `grid` (lr x n_layer x 2 seeds, 11 of 12 finished) and sweep
    `few` (3 trials, one seed each)."""
    root = tmp_path_factory.mktemp("report")
    home = root / "home"
    env = orch_env(home, _script(), FAKE_SCHEMA_FILE=str(fake_schema_file))
    grid = {"optim.lr": {"values": list(LRS)}, "model.n_layer": {"values": list(LAYERS)},
            "train.seed": {"values": list(SEEDS)}}
    few = {"optim.lr": {"values": list(LRS)}, "model.n_layer": {"value": 2},
           "train.seed": {"value": 1}}
    for name, params in (("grid", grid), ("few", few)):
        spec = write_spec(root / f"{name}.yaml", name=name, parameters=params,
                          resources={"cpu_slots": 2})
        proc = run_orch(["sweep", str(spec)], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return home


def orch(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_orch(list(args), orch_env(home))


# -- the page in a browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        unavailable("no chromium installed (Debian: apt-get install chromium)",
                    "CI installs it in .ci/run")
    return path


def _inked(png: bytes) -> tuple[float, int]:
    """Share of non-white pixels, and how many pixels are coloured (not grey), of a PNG."""
    from PIL import Image

    data = Image.open(io.BytesIO(png)).convert("RGB").tobytes()
    pixels = [tuple(data[i:i + 3]) for i in range(0, len(data), 3)]
    ink = sum(1 for r, g, b in pixels if min(r, g, b) < 235)
    colour = sum(1 for r, g, b in pixels if max(r, g, b) - min(r, g, b) > 60)
    return ink / len(pixels), colour


ROWS = "Array.from(document.querySelectorAll('#results tbody tr'))"


def _column(browser: Browser, header: str) -> list[tuple[str, str]]:
    """(data-v, text) of every row's cell under `header`, in the page's current row order."""
    return browser.eval(f"""(() => {{
        const heads = Array.from(document.querySelectorAll('#results thead th'));
        const i = heads.findIndex(h => h.textContent.replace(/ [▲▼]$/, '') === {header!r});
        return {ROWS}.map(r => [r.cells[i].dataset.v, r.cells[i].textContent]);
    }})()""")


def _click_header(browser: Browser, header: str) -> None:
    x, y = browser.eval(f"""(() => {{
        const th = Array.from(document.querySelectorAll('#results thead th'))
            .find(h => h.textContent.replace(/ [▲▼]$/, '') === {header!r});
        th.scrollIntoView();
        const r = th.getBoundingClientRect();
        return [r.x + r.width / 2, r.y + r.height / 2];
    }})()""")
    browser.click(x, y)


def test_report_in_a_browser(home: Path, chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    proc = orch(home, "report", "grid", "--out", str(page))
    assert proc.returncode == 0, proc.stderr
    with Browser(chromium, tmp_path / "profile") as browser:
        browser.open(page.as_uri())
        figs = browser.eval("document.querySelectorAll('div[id^=fig-]').length")
        # Curves (step, wall time), parallel coordinates, importance, marginal effects.
        assert figs == 5
        # Plotly draws as the page loads; WebGL traces (parallel coordinates) may finish later.
        wait_for(lambda: browser.eval("document.querySelectorAll('div[id^=fig-]"
                                      ".js-plotly-plot .main-svg').length") >= figs
                 and browser.eval("document.querySelectorAll('.parcoords canvas, "
                                  ".gl-container canvas').length") > 0,
                 timeout=30, what="every figure drawn")
        assert browser.errors() == []
        boxes = browser.eval("Array.from(document.querySelectorAll('div[id^=fig-]')).map(d => "
                             "{const r = d.getBoundingClientRect(); return {x: r.x + scrollX, "
                             "y: r.y + scrollY, width: r.width, height: r.height};})")
        for box in boxes:
            ink, colour = _inked(browser.screenshot(box))
            assert ink > 0.02 and colour > 200, (box, ink, colour)

        # The numbers are the ledger's: a mean over each configuration's finished trials.
        ledger = Ledger(home, readonly=True)
        done = [t for t in ledger.trials("grid") if t.state == TrialState.FINISHED]
        lrs = [float(v) for v, _ in _column(browser, "optim.lr")]
        layers = [int(v) for v, _ in _column(browser, "model.n_layer")]
        shown = _column(browser, "val_loss")
        for lr, n, (value, text) in zip(lrs, layers, shown):
            mine = [trial_values(t, ["val_loss"])["val_loss"] for t in done
                    if (t.params["optim.lr"], t.params["model.n_layer"]) == (lr, n)]
            assert mine == pytest.approx([final(lr, n, s) for s in SEEDS
                                          if (lr, n, s) != DIVERGED])
            assert float(value) == pytest.approx(statistics.fmean(mine), abs=1e-6)
            assert text.startswith(f"{statistics.fmean(mine):.4f}")
            assert ("±" in text) == (len(mine) > 1)  # no spread where n = 1
        assert [float(v) for v, _ in shown] == sorted(float(v) for v, _ in shown)

        # Clicking a header sorts by that column, then the other way round.
        _click_header(browser, "optim.lr")
        up = [float(v) for v, _ in _column(browser, "optim.lr")]
        assert up == sorted(up) and up != lrs
        _click_header(browser, "optim.lr")
        down = [float(v) for v, _ in _column(browser, "optim.lr")]
        assert down == sorted(up, reverse=True)
        assert browser.errors() == []


def test_report_is_one_offline_file(home: Path, tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    proc = orch(home, "report", "grid", "few", "--out", str(page))
    assert proc.returncode == 0, proc.stderr
    text = page.read_text(encoding="utf-8")
    assert _fetched(text) == []
    assert text.count("plotly.js v") >= 1 and text.count('<div id="fig-') == 5
    # Every trial with its state and run dir.
    ledger = Ledger(home, readonly=True)
    for name in ("grid", "few"):
        for t in ledger.trials(name):
            assert t.run_dir and t.run_dir in text
    assert "non-finite loss at step 20" in text
    # The best config is runnable with the sweep's own program (it always said the trainer).
    assert f"<code>{sys.executable} {FAKE} --config best.yaml --out RUN_DIR</code>" in text


class _Fetches(HTMLParser):
    """Every URL a page's tags would fetch (script src, link href, img src, iframe src)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (name, tag) in (("src", "script"), ("href", "link"), ("src", "img"),
                                         ("src", "iframe")):
                self.urls.append(value)


def _fetched(text: str) -> list[str]:
    parser = _Fetches()
    parser.feed(text)
    return parser.urls


def test_report_refuses_an_unknown_sweep(home: Path, tmp_path: Path) -> None:
    proc = orch(home, "report", "nosuch", "--out", str(tmp_path / "r.html"))
    assert proc.returncode == 2
    assert "no sweep named 'nosuch'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.html").exists()


# -- importance -----------------------------------------------------------------------------------


def test_importance_names_the_parameter_that_matters(home: Path) -> None:
    ledger = Ledger(home, readonly=True)
    keys = load(ledger, ["grid"]).keys
    assert keys == ["optim.lr", "model.n_layer"]  # seeds are not parameters here
    imp = importance.compute(ledger.trials("grid"), keys, "val_loss", "minimize")
    assert imp.reason is None and imp.n == 11
    assert [p.name for p in imp.params] == ["optim.lr", "model.n_layer"]  # seeds left out
    lr, layers = imp.params
    assert lr.importance > 0.8 and lr.importance + layers.importance == pytest.approx(1)
    assert lr.rho is not None and lr.rho < 0  # a larger lr, a lower val_loss
    assert layers.rho is not None and layers.rho < 0

    proc = orch(home, "results", "grid", "--importance")
    assert proc.returncode == 0, proc.stderr
    lines = [ln.split() for ln in proc.stderr.splitlines() if ln.startswith("  ")]
    assert [ln[0] for ln in lines] == ["optim.lr", "model.n_layer"]
    assert lines[0][-1].startswith("-") or lines[0][-1].startswith("−")


def test_importance_beside_the_page_equals_importance_in_line(home: Path) -> None:
    ledger = Ledger(home, readonly=True)
    keys, trials = load(ledger, ["grid"]).keys, ledger.trials("grid")
    beside = importance.start(trials, keys, "val_loss", "minimize")  # a forked child fits it
    assert beside() == importance.compute(trials, keys, "val_loss", "minimize")
    assert beside().params  # not two empty answers


def test_importance_says_when_there_are_too_few_trials(home: Path) -> None:
    proc = orch(home, "results", "few", "--importance")
    assert proc.returncode == 0, proc.stderr
    assert (f"too few finished trials for parameter importance: 3 with val_loss, at least "
            f"{importance.MIN_TRIALS} needed") in proc.stderr


# -- plots that do not overstate ------------------------------------------------------------------


def test_one_seed_draws_no_spread_and_says_n(home: Path) -> None:
    ledger = Ledger(home, readonly=True)
    few = ledger.trials("few")
    few = figures.marginals(few, ["optim.lr"], figures.names(few, ["optim.lr"]), "val_loss")
    assert few is not None
    means = [t for t in few.data if t.mode and "text" in t.mode][0]
    assert list(means.text) == ["n=1"] * 3
    assert not means.error_y.visible and all(s is None for s in means.error_y.array)
    grid = ledger.trials("grid")
    grid = figures.marginals(grid, ["optim.lr"], figures.names(grid, ["optim.lr"]), "val_loss")
    assert grid is not None
    means = [t for t in grid.data if t.mode and "text" in t.mode][0]
    assert list(means.text) == ["n=4", "n=4", "n=3"]  # lr 0.01 lost a trial (diverged)
    assert means.error_y.visible and all(s is not None for s in means.error_y.array)


def test_wall_time_curves_start_at_zero(home: Path) -> None:
    ledger = Ledger(home, readonly=True)
    trials = ledger.trials("grid")
    histories = {t.id: ledger.history(t) for t in trials}
    fig = figures.curves(histories, trials, ["optim.lr"], figures.names(trials, ["optim.lr"]),
                         "val_loss", set(), "time")
    assert fig is not None and fig["layout"]["xaxis"]["rangemode"] == "tozero"
    assert len(fig["data"]) == 12 and all(min(trace["x"]) >= 0 for trace in fig["data"])


def test_axis_titles_carry_the_unit_the_program_declares(home: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_HOME", str(home))  # the describe cache the sweeps filled
    ledger = Ledger(home, readonly=True)
    report = load(ledger, ["grid"])
    assert report.axis_title() == "val_loss (nats per character)"  # trainer/describe.py
    assert report.axis_title("val_bpb") == "val_bpb (bits per UTF-8 byte)"
    assert report.axis_title("undeclared") == "undeclared"
    trials = ledger.trials("grid")
    fig = figures.curves({t.id: ledger.history(t) for t in trials}, trials, report.keys,
                         figures.names(trials, report.keys), "val_loss", set(), "step",
                         report.axis_title())
    assert fig is not None and fig["layout"]["yaxis"]["title"]["text"] == report.axis_title()


# -- the best config, runnable --------------------------------------------------------------------


def _trainer_hash(config: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "trainer", "validate", "--config", str(config)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[1]


def _best_trial(home: Path, name: str) -> Any:
    done = [t for t in Ledger(home, readonly=True).trials(name)
            if t.state == TrialState.FINISHED]
    return min(done, key=lambda t: trial_values(t, ["val_loss"])["val_loss"])


def test_best_is_base_plus_point_with_the_trials_hash(home: Path, tmp_path: Path) -> None:
    """Fake runs leave no config in result.json: the base with the trial's overrides."""
    out = tmp_path / "best.yaml"
    proc = orch(home, "best", "grid", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    trial = _best_trial(home, "grid")
    assert (trial.params["optim.lr"], trial.params["model.n_layer"]) == (0.01, 2)
    assert _trainer_hash(out) == trial.config_hash
    assert f"config hash {trial.config_hash}" in out.read_text()


def test_best_of_a_real_sweep_trains_the_same_config(tiny_titles: Path, tmp_path: Path,
                                                     fake_schema_file: Path) -> None:
    """Real trainer runs: the config is result.json's own, and --as-spec re-runs it."""
    home = tmp_path / "home"
    spec = write_spec(tmp_path / "real.yaml", name="real", program="python -m trainer",
                      base=str(BASE_TINY), overrides={"train.max_steps": 2},
                      parameters={"optim.lr": {"values": [0.003]}},
                      resources={"cpu_slots": 2})
    proc = run_orch(["sweep", str(spec), "--data", str(tiny_titles)], orch_env(home),
                    timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trial = _best_trial(home, "real")
    out = tmp_path / "best.yaml"
    proc = run_orch(["best", "real", "--out", str(out)], orch_env(home))
    assert proc.returncode == 0, proc.stderr
    assert "(from result.json)" in out.read_text()
    assert _trainer_hash(out) == trial.config_hash
    assert yaml.safe_load(out.read_text())["optim"]["lr"] == trial.params["optim.lr"]

    spec_out = tmp_path / "again.yaml"
    proc = run_orch(["best", "real", "--as-spec", "--seeds", "3", "--out", str(spec_out)],
                    orch_env(home))
    assert proc.returncode == 0, proc.stderr
    again = yaml.safe_load(spec_out.read_text())
    assert again["base"] == "again.config.yaml"
    assert again["parameters"] == {"train.seed": {"values": [1337, 1338, 1339]}}
    assert _trainer_hash(tmp_path / "again.config.yaml") == trial.config_hash
    proc = run_orch(["validate", str(spec_out)], orch_env(home))
    assert proc.returncode == 0 and "valid (3 grid trials)" in proc.stdout, proc.stderr


def test_best_of_a_sweep_with_nothing_finished(tmp_path: Path, fake_schema_file: Path) -> None:
    home = tmp_path / "home"
    spec = write_spec(tmp_path / "bad.yaml", name="bad",
                      parameters={"train.seed": {"values": [1]}})
    env = orch_env(home, {"default": {"mode": "crash"}}, FAKE_SCHEMA_FILE=str(fake_schema_file))
    run_orch(["sweep", str(spec)], env)
    proc = run_orch(["best", "bad"], orch_env(home))
    assert proc.returncode == 2
    assert "sweep bad has no finished trial with val_loss" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_sweep_workflow_uploads_the_report_and_links_it() -> None:
    workflow = yaml.safe_load((Path(__file__).resolve().parents[1] / ".github" / "workflows"
                               / "sweep.yml").read_text())
    steps = workflow["jobs"]["sweep"]["steps"]
    runs = [s.get("run", "") for s in steps]
    report = next(i for i, r in enumerate(runs) if 'orch report "$SWEEP" --out "$OUT/report.html"'
                  in r)
    upload = next(i for i, s in enumerate(steps) if s.get("id") == "upload")
    assert report < upload  # the page lies in the uploaded folder
    link = steps[upload + 1]
    assert link["env"]["ARTIFACT_URL"] == "${{ steps.upload.outputs.artifact-url }}"
    assert "$GITHUB_STEP_SUMMARY" in link["run"] and "report.html" in link["run"]


def test_report_of_a_sweep_where_nothing_finished(tmp_path: Path) -> None:
    """No finished trial: the page says so where each plot would be, and lists the trials."""
    from orchestrator.report import html

    ledger = Ledger(tmp_path / "home")
    ledger.upsert_sweep("e", "e.yaml", {}, ["optim.lr"], "val_loss", "minimize")
    failed = ledger.add_trial("e", "h1", {"optim.lr": 0.1})
    ledger.add_trial("e", "h2", {"optim.lr": 0.2})
    ledger.finish(failed.id, state=TrialState.FAILED, reason="boom", exit_code=1, ended_at=1.0,
                  final={}, best={}, program_wall=None)
    page = html.render(ledger, ["e"])
    assert "no finished trial yet" in page and "boom" in page
    assert page.count("nothing to plot: no finished trial with val_loss") == 3
    assert "too few finished trials for parameter importance: 0 with val_loss" in page


def test_a_parameter_one_sweep_held_fixed_shows_its_value_in_the_trials_table(
        tmp_path: Path, fake_schema_file: Path) -> None:
    """A report of two sweeps, one varying model.n_layer and one holding it at 1 in its
    overrides: the second's trials show n_layer 1 (its value), not a missing cell."""
    import re

    from orchestrator.report import html

    home = tmp_path / "home"
    env = orch_env(home, _script(), FAKE_SCHEMA_FILE=str(fake_schema_file))
    lrs = {"optim.lr": {"values": [0.001, 0.01]}, "train.seed": {"value": 1}}
    for name, params, extra in (
            ("depths", {**lrs, "model.n_layer": {"values": [1, 2]}}, {}),
            ("shallow", lrs, {"overrides": {"model.n_layer": 1}})):
        spec = write_spec(tmp_path / f"{name}.yaml", name=name, parameters=params,
                          resources={"cpu_slots": 2}, **extra)
        proc = run_orch(["sweep", str(spec)], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    page = html.render(Ledger(home), ["depths", "shallow"])
    table = page[page.index('id="trials"'):]
    table = table[:table.index("</table>")]
    heads = re.findall(r"<th>(.*?)</th>", table)
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr class.*?</tr>",
                                                                          table)]
    sweep, layers = heads.index("sweep"), heads.index("model.n_layer")
    shown = {(r[sweep], r[layers]) for r in rows}
    assert shown == {("depths", "1"), ("depths", "2"), ("shallow", "1")}
