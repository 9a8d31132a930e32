"""`orch results` on real ledgers from tiny real sweeps of the fake trainer.

Expected numbers are derived here from the scripted curves (and cross-checked against the
ledger's trials), never copied from a rendered table.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest
from orch_helpers import old_ledger, orch_env, run_orch, schema_version, write_spec

from orchestrator import ledger_schema
from orchestrator.ledger import Ledger
from orchestrator.report import results as results_mod
from orchestrator.report import tables

# Sweep "a" (now): final val_loss per (lr, seed); the last curve point is the final value.
A_FINAL = {("0.001", 1): 1.5, ("0.001", 2): 1.7, ("0.001", 3): 1.9,
           ("0.003", 1): 1.2, ("0.003", 2): 1.4}
# Sweep "b" (the previous run): every trial finishes.
B_FINAL = {("0.001", s): 1.6 + 0.2 * (s - 1) for s in (1, 2, 3)}
B_FINAL |= {("0.003", s): 1.0 + 0.2 * (s - 1) for s in (1, 2, 3)}
B_FINAL |= {("0.01", s): 2.5 for s in (1, 2, 3)}
GRID = {"optim.lr": {"values": [0.001, 0.003, 0.01]}, "train.seed": {"values": [1, 2, 3]}}


def _script(finals: dict[tuple[str, int], float], extra: dict[str, Any]) -> dict[str, Any]:
    cases = {f"{lr},{seed}": {"mode": "finish", "curve": [3.0, 2.0, v]}
             for (lr, seed), v in finals.items()}
    return {"key": ["optim.lr", "train.seed"], "default": {"mode": "crash"},
            "cases": {**cases, **extra}}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, fake_schema_file: Path) -> Path:
    """One ORCH_HOME holding sweeps a, b (same grid, for compare) and m (a maximize metric)."""
    root = tmp_path_factory.mktemp("results")
    home = root / "home"
    env = {"FAKE_SCHEMA_FILE": str(fake_schema_file)}
    # In "a", lr=0.01 seed 1 diverges after a first validation of 0.5: the lowest number in
    # the sweep, from a trial that did not finish; the other lr=0.01 trials and lr=0.003
    # seed 3 crash (default) and compute nothing.
    a = _script(A_FINAL, {"0.01,1": {"mode": "diverge", "curve": [0.5, 0.4]}})
    runs = [("a", GRID, a, "minimize"), ("b", GRID, _script(B_FINAL, {}), "minimize"),
            ("m", {"optim.lr": {"values": [0.001, 0.003, 0.01]}},
             {"key": "optim.lr", "cases": {"0.001": {"curve": [3, 1.1]},
                                            "0.003": {"curve": [3, 2.2]},
                                            "0.01": {"curve": [3, 1.7]}}}, "maximize")]
    for name, params, script, goal in runs:
        spec = write_spec(root / f"{name}.yaml", name=name, parameters=params,
                          metric={"name": "val_loss", "goal": goal},
                          resources={"cpu_slots": 3, "retries": 0})
        proc = run_orch(["sweep", str(spec)], orch_env(home, script, **env))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return home


def orch(home: Path, *args: str, **env: str) -> Any:
    """Run `orch ARGS` against the fixture's ledger."""
    return run_orch(list(args), orch_env(home, **env))


def as_json(home: Path, *args: str) -> dict[str, Any]:
    proc = orch(home, "results", *args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def parse_markdown(text: str) -> list[dict[str, str]]:
    """The first Markdown table in `text` as dicts (a small GFM table parser)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines]
    header, sep, body = split[0], lines[1], split[2:]
    assert set(sep.replace("|", "").replace("-", "").replace(":", "")) <= {""}
    assert all(len(r) == len(header) for r in body)
    return [dict(zip(header, r)) for r in body]


def test_rows_group_seeds_with_mean_std_and_n_over_finished_trials(home: Path) -> None:
    data = as_json(home, "a")
    assert data["grouped_by"] == ["optim.lr"]  # the default: every varied key but the seed
    rows = {r["optim.lr"]: r for r in data["rows"]}
    # Independent of the scripted numbers: recompute from the ledger's finished trials.
    trials = Ledger(home).trials("a")
    for lr, row in rows.items():
        done = [t.final["val_loss"] for t in trials
                if t.params["optim.lr"] == lr and t.state == "finished"]
        assert row["n"] == len(done) and row["n_total"] == 3
        if len(done) >= 2:
            assert row["val_loss"] == pytest.approx(statistics.fmean(done), abs=1e-6)
            assert row["val_loss_std"] == pytest.approx(statistics.stdev(done), abs=1e-6)
    # And against the script: lr=0.001 is 1.5/1.7/1.9; lr=0.003 has 2 of 3 finished.
    assert rows[0.001]["val_loss"] == pytest.approx(1.7) and rows[0.001]["val_loss_std"] == \
        pytest.approx(0.2)
    assert rows[0.003]["val_loss"] == pytest.approx(1.3) and rows[0.003]["n"] == 2
    assert rows[0.003]["status"] == "2 finished, 1 failed" and rows[0.003]["best"]
    # No finished trial: no mean at all, even though the diverged one computed 0.5.
    assert rows[0.01]["val_loss"] is None and rows[0.01]["n"] == 0
    assert [r["optim.lr"] for r in data["rows"]] == [0.003, 0.001, 0.01]


def test_failed_trials_never_rank_above_finished_and_missing_stays_missing(home: Path) -> None:
    proc = orch(home, "results", "a", "--group-by", "none", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    states = [r["status"] for r in rows]
    assert states == ["finished"] * 5 + sorted(states[5:], key=lambda s: s != "diverged")
    losses = [float(r["val_loss"]) for r in rows[:5]]
    assert losses == sorted(losses) == sorted(A_FINAL.values())
    diverged = next(r for r in rows if r["status"] == "diverged")
    assert float(diverged["val_loss"]) == 0.5  # its partial number, listed but not ranked
    assert rows[0]["best"] == "true" and sum(r["best"] == "true" for r in rows) == 1
    for r in rows:
        if r["status"] == "failed":
            assert r["val_loss"] == "" and r["val_bpb"] == "" and r["best_step"] == ""
    md = orch(home, "results", "a", "--group-by", "none", "--format", "markdown").stdout
    table = parse_markdown(md)
    failed = [r for r in table if r["status"] == "failed"]
    assert len(failed) == 3 and all(r["val_loss"] == "—" for r in failed)
    assert table[0]["val_loss"] == f"{min(A_FINAL.values()):.4f} ★"
    assert "0.0000" not in md


def _per_trial_json(home: Path) -> dict[str, Any]:
    """`orch results t --group-by none --format json`, in this process (a read-only open)."""
    ledger = Ledger(home, readonly=True)
    try:
        report = results_mod.load(ledger, ["t"], per_trial=True)
    finally:
        ledger.close()
    return json.loads(tables.to_json(tables.report_grid(report)))


def test_results_come_from_the_ledger_alone_and_old_ledgers_migrate(
        tmp_path: Path, fake_schema_file: Path) -> None:
    home, old = tmp_path / "home", tmp_path / "old"
    spec = write_spec(tmp_path / "s.yaml", parameters={"train.seed": {"values": [1, 2]}})
    script = {"key": "train.seed", "cases": {"1": {"curve": [3.0, 1.5]},
                                             "2": {"curve": [3.0, 1.25]}}}
    proc = run_orch(["sweep", str(spec)],
                    orch_env(home, script, FAKE_SCHEMA_FILE=str(fake_schema_file)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    before = as_json(home, "t", "--group-by", "none")
    assert _per_trial_json(home) == before
    rows = before["rows"]
    assert [r["val_loss"] for r in rows] == [1.25, 1.5]
    # What only result.json holds (the fake trainer writes 1000 tokens/s, 1 parameter).
    assert [(r["tokens_per_s"], r["parameters"]) for r in rows] == [(1000.0, 1)] * 2
    assert all(r["wall_time_s"] is not None for r in rows)
    # A ledger from before schema versions: read, it is migrated in memory and left as it is;
    # opened for writing, it is migrated for good (result.json values taken from the run dirs).
    old_ledger(home / "ledger.sqlite", old / "ledger.sqlite")
    assert _per_trial_json(old) == before
    assert schema_version(old / "ledger.sqlite") == 0
    Ledger(old).close()
    assert schema_version(old / "ledger.sqlite") == ledger_schema.VERSION
    # Without the run dirs, both ledgers still give the same numbers.
    shutil.rmtree(home / "runs")
    assert as_json(home, "t", "--group-by", "none") == before
    assert _per_trial_json(old) == before


def test_maximize_sorts_descending(home: Path) -> None:
    rows = as_json(home, "m")["rows"]
    values = [r["val_loss"] for r in rows]
    assert values == [2.2, 1.7, 1.1] and rows[0]["best"] and rows[0]["optim.lr"] == 0.003


def test_same_data_same_bytes_and_formats_round_trip(home: Path, tmp_path: Path) -> None:
    for form in ("markdown", "csv", "json"):
        first = orch(home, "results", "a", "b", "--format", form).stdout
        second = orch(home, "results", "a", "b", "--format", form).stdout
        assert first == second and first
        out = tmp_path / f"r.{form}"
        assert orch(home, "results", "a", "b", "--format", form, "--out", str(out)).returncode == 0
        assert out.read_text() == first
    data = json.loads(orch(home, "results", "a", "b", "--format", "json").stdout)
    rows = list(csv.DictReader(io.StringIO(orch(home, "results", "a", "b", "--format",
                                                "csv").stdout)))
    assert len(rows) == len(data["rows"]) == 6  # two sweeps x three learning rates
    for c, j in zip(rows, data["rows"]):
        assert c["sweep"] == j["sweep"] and float(c["optim.lr"]) == j["optim.lr"]
        for key in ("val_loss", "val_loss_std", "val_bpb", "tokens_per_s"):
            assert (c[key] == "") == (j[key] is None)
            if j[key] is not None:
                assert float(c[key]) == pytest.approx(j[key], abs=1e-6)
    md = parse_markdown(orch(home, "results", "a", "b", "--format", "markdown").stdout)
    assert [(r["sweep"], r["optim.lr"]) for r in md] == \
        [(j["sweep"], json.dumps(j["optim.lr"])) for j in data["rows"]]
    # The fake's val_bpb is val_loss * 1.4427: every format carries the trial's own number.
    for r in data["rows"]:
        if r["val_loss"] is not None:
            assert r["val_bpb"] == pytest.approx(r["val_loss"] * 1.4427, abs=1e-5)


def test_baseline_deltas(home: Path) -> None:
    data = as_json(home, "a", "--baseline", "optim.lr=0.001")
    rows = {r["optim.lr"]: r for r in data["rows"]}
    assert rows[0.001]["baseline"] and rows[0.001]["delta"] == 0
    assert rows[0.003]["delta"] == pytest.approx(1.3 - 1.7)
    assert rows[0.003]["delta_pct"] == pytest.approx((1.3 - 1.7) / 1.7 * 100, abs=1e-4)
    assert rows[0.01]["delta"] is None
    # Another sweep's best as the baseline: b's best configuration is lr=0.003 (mean 1.2).
    other = as_json(home, "a", "--baseline", "sweep:b")
    assert other["baseline"]["val_loss"] == pytest.approx(1.2)
    assert other["rows"][0]["delta"] == pytest.approx(0.1)
    # One trial: trial numbers come from the ledger, not from a guess about grid order.
    t = next(t for t in Ledger(home).trials("a") if t.state == "finished")
    per_trial = as_json(home, "a", "--group-by", "none", "--baseline", f"trial:{t.number}")
    for r in per_trial["rows"]:
        if r["val_loss"] is not None:
            assert r["delta"] == pytest.approx(r["val_loss"] - t.final["val_loss"], abs=1e-6)
    # Grouped (the default), trial:N stands for its configuration's row: seeds 1 and 2 of
    # lr=0.001 finished at 1.5 and 1.7 (seed 3 at 1.9): the row's mean is the baseline.
    lr1 = next(t for t in Ledger(home).trials("a") if t.params["optim.lr"] == 0.001)
    grouped = as_json(home, "a", "--baseline", f"trial:{lr1.number}")
    assert grouped["baseline"]["val_loss"] == pytest.approx(1.7)
    assert {r["optim.lr"]: r["delta"] for r in grouped["rows"]}[0.003] == pytest.approx(-0.4)
    bad = orch(home, "results", "a", "--baseline", "train.seed=1")
    assert bad.returncode == 2 and "matches 0 rows" in bad.stderr


def test_baseline_delta_std_pairs_trials_by_seed(home: Path) -> None:
    # In b every trial finished: the per-seed differences against lr=0.001 are recomputed from
    # the ledger, and their sample std is the Δ's spread.
    trials = Ledger(home).trials("b")
    final = {(t.params["optim.lr"], t.params["train.seed"]): t.final["val_loss"] for t in trials}
    data = as_json(home, "b", "--baseline", "optim.lr=0.001")
    rows = {r["optim.lr"]: r for r in data["rows"]}
    for lr in (0.003, 0.01):
        diffs = [final[lr, s] - final[0.001, s] for s in (1, 2, 3)]
        assert rows[lr]["delta"] == pytest.approx(statistics.fmean(diffs), abs=1e-6)
        assert rows[lr]["delta_std"] == pytest.approx(statistics.stdev(diffs), abs=1e-6)
    # lr=0.003 is 0.6 lower at every seed: paired, no spread (unpaired stds would say 0.28).
    assert rows[0.003]["delta_std"] == pytest.approx(0.0, abs=1e-6)
    assert rows[0.001]["delta_std"] is None  # the baseline itself
    table = orch(home, "results", "b", "--baseline", "optim.lr=0.001", "--format", "markdown")
    assert "+0.7000 ± 0.2000" in table.stdout and "per-seed differences" in table.stdout
    # In a, lr=0.003 finished seeds 1 and 2 only: no one-to-one pairing with lr=0.001's three
    # seeds, so Δ is the difference of means with no spread claimed.
    partial = as_json(home, "a", "--baseline", "optim.lr=0.001")["rows"]
    partial = {r["optim.lr"]: r for r in partial}
    assert partial[0.003]["delta"] is not None and partial[0.003]["delta_std"] is None


def test_compare_and_regression_gate(home: Path) -> None:
    data = as_json(home, "a", "--compare", "b")
    pairs = {r["optim.lr"]: r for r in data["rows"]}
    assert pairs[0.003]["other_val_loss"] == pytest.approx(1.2)
    assert pairs[0.003]["this_val_loss"] == pytest.approx(1.3)
    assert pairs[0.003]["change"] == pytest.approx(0.1)
    assert pairs[0.003]["verdict"] == "worse"
    assert pairs[0.001]["change"] == pytest.approx(1.7 - 1.8)  # b had 1.6/1.8/2.0
    assert pairs[0.001]["verdict"] == "better"
    assert pairs[0.01]["change"] is None and pairs[0.01]["this_val_loss"] is None
    back = as_json(home, "b", "--compare", "a")
    assert {r["optim.lr"]: r["verdict"] for r in back["rows"]}[0.003] == "better"
    # a's best (1.3) is 8.33 % worse than b's best (1.2).
    fail = orch(home, "results", "a", "--compare", "b", "--max-regression", "5")
    assert fail.returncode == 1 and "regressed by 8.33%" in fail.stderr
    assert orch(home, "results", "a", "--compare", "b", "--max-regression", "10").returncode == 0
    assert orch(home, "results", "b", "--compare", "a", "--max-regression", "0").returncode == 0


def test_compare_matches_on_a_parameter_only_the_other_sweep_varies(
        tmp_path: Path, fake_schema_file: Path) -> None:
    """`fixed` holds model.n_layer at 2, `varied` sweeps it: the comparison pairs fixed's rows
    with varied's n_layer=2 rows and lists the n_layer=1 rows apart, instead of averaging
    varied's rows over depths (which turned a worse result into a "better" one)."""
    home = tmp_path / "home"
    env = {"FAKE_SCHEMA_FILE": str(fake_schema_file)}
    lrs = {"optim.lr": {"values": [0.001, 0.003]}}
    fixed = {"key": "optim.lr", "cases": {"0.001": {"curve": [3, 1.5]},
                                          "0.003": {"curve": [3, 1.2]}}}
    varied = {"key": ["optim.lr", "model.n_layer"], "cases": {
        "0.001,1": {"curve": [3, 2.0]}, "0.001,2": {"curve": [3, 1.4]},
        "0.003,1": {"curve": [3, 2.2]}, "0.003,2": {"curve": [3, 1.1]}}}
    for name, params, script, extra in (
            ("fixed", lrs, fixed, {"overrides": {"model.n_layer": 2}}),
            ("varied", {**lrs, "model.n_layer": {"values": [1, 2]}}, varied, {})):
        spec = write_spec(tmp_path / f"{name}.yaml", name=name, parameters=params,
                          resources={"cpu_slots": 2, "retries": 0}, **extra)
        proc = run_orch(["sweep", str(spec)], orch_env(home, script, **env))
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def rows(*args: str) -> dict[tuple[float, int], dict[str, Any]]:
        data = as_json(home, *args)
        assert data["grouped_by"] == ["optim.lr", "model.n_layer"]
        return {(r["optim.lr"], r["model.n_layer"]): r for r in data["rows"]}

    pairs = rows("fixed", "--compare", "varied")
    assert set(pairs) == {(0.001, 1), (0.001, 2), (0.003, 1), (0.003, 2)}
    for lr, theirs, ours in ((0.001, 1.4, 1.5), (0.003, 1.1, 1.2)):
        pair = pairs[(lr, 2)]
        assert (pair["other_val_loss"], pair["this_val_loss"]) == (pytest.approx(theirs),
                                                                   pytest.approx(ours))
        assert pair["change"] == pytest.approx(0.1) and pair["verdict"] == "worse"
    assert pairs[(0.001, 1)]["this_status"] == "absent" and pairs[(0.001, 1)]["other_n"] == 1
    back = rows("varied", "--compare", "fixed")
    assert back[(0.003, 2)]["change"] == pytest.approx(-0.1)
    assert back[(0.003, 1)]["other_status"] == "absent"
    # Asked to match on the learning rate alone, both sides group by it alone.
    by_lr = as_json(home, "fixed", "--compare", "varied", "--group-by", "optim.lr")
    assert {r["optim.lr"]: r["other_val_loss"] for r in by_lr["rows"]} == {
        0.001: pytest.approx(1.7), 0.003: pytest.approx(1.65)}


def test_fail_if_worse_than(home: Path) -> None:
    fail = orch(home, "results", "a", "--fail-if-worse-than", "1.25")
    assert fail.returncode == 1 and "1.3000" in fail.stderr and "1.2500" in fail.stderr
    assert orch(home, "results", "a", "--fail-if-worse-than", "1.35").returncode == 0
    # For a maximize metric, worse means lower: m's best is 2.2.
    assert orch(home, "results", "m", "--fail-if-worse-than", "2.5").returncode == 1
    assert orch(home, "results", "m", "--fail-if-worse-than", "2.0").returncode == 0
    assert orch(home, "results", "nope").returncode == 2
    # A nan threshold passed every sweep.
    for gate in (["--fail-if-worse-than", "nan"], ["--compare", "b", "--max-regression", "nan"]):
        refused = orch(home, "results", "a", *gate)
        assert refused.returncode == 2 and "give a finite number" in refused.stderr


@pytest.mark.parametrize("columns", [None, "80"])
def test_piped_tables_keep_every_column_and_cell(home: Path, tmp_path: Path,
                                                 columns: str | None) -> None:
    """A pipe or CI log (80 columns, or no COLUMNS at all) gets the whole table, not rich's
    80-column squeeze that dropped val_bpb, best step and status."""
    env = orch_env(home)
    env.pop("COLUMNS")
    if columns:
        env["COLUMNS"] = columns
    md = parse_markdown(orch(home, "results", "a", "b", "--format", "markdown").stdout)
    text = run_orch(["results", "a", "b"], env).stdout
    header = next(line for line in text.splitlines() if "val_loss" in line)
    assert [c.strip() for c in header.strip("┃").split("┃")] == list(md[0])
    body = [line for line in text.splitlines() if line.startswith("│")]
    for row in md:
        line = next(x for x in body if f" {row['optim.lr']} " in x and f" {row['sweep']} " in x)
        cells = [c.strip() for c in line.strip("│").split("│")]
        assert cells[:-1] == [v for k, v in row.items() if k != "note"]
    out = tmp_path / "table.txt"  # --out at the width the table needs too
    assert run_orch(["results", "a", "b", "--out", str(out)], env).returncode == 0
    assert all(h in out.read_text() for h in md[0])
    status = run_orch(["status", "a"], env).stdout
    for head in ("trial", "optim.lr", "state", "best val_loss", "attempts", "exit", "run dir"):
        assert f" {head} " in status
    for t in Ledger(home).trials("a"):
        assert t.run_dir and t.run_dir in status  # whole paths, not "/tmp/…"


def test_a_terminal_too_narrow_gets_every_number_whole(home: Path) -> None:
    """A 60-column terminal: the table keeps its columns and numbers whole (the terminal
    wraps the long lines) instead of rich cropping them at the edge."""
    from rich.console import Console

    from orchestrator.report import results, tables
    from orchestrator.cli.terminal import show

    grid = tables.report_grid(results.load(Ledger(home), ["a"], per_trial=True))
    buf = io.StringIO()
    show(tables.rich_table(grid), Console(file=buf, width=60, force_terminal=True,
                                          color_system=None))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) > 60
    for cells in grid.cells:
        for head, cell in zip(grid.headers, cells):
            if head != "note":
                assert cell in text, (head, cell)


def test_github_step_summary_gets_the_markdown_table(home: Path, tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    proc = orch(home, "results", "a", "--fail-if-worse-than", "1.0", **env)
    assert proc.returncode == 1
    text = summary.read_text()
    assert text.startswith("# earlier step\n")  # appended, not overwritten
    rows = parse_markdown(text)
    assert rows[0]["optim.lr"] == "0.003" and rows[0]["val_loss"].endswith("★")
    assert "gate failed" in text
    orch(home, "results", "a", **env)
    assert summary.read_text().count("### sweep a") == 2


def test_whole_section_values_show_only_what_differs() -> None:
    from orchestrator.report.tables import fmt_param

    recipe = {"d_model": 128, "norm": "rmsnorm", "positions": "rotary", "bias": False}
    values = [recipe, {**recipe, "norm": "layernorm"}, {**recipe, "positions": "learned"}]
    assert [fmt_param(v, values) for v in values] == [
        "norm=rmsnorm,positions=rotary", "norm=layernorm,positions=rotary",
        "norm=rmsnorm,positions=learned"]
    assert fmt_param(recipe, [recipe]) == json.dumps(recipe)  # nothing differs: the whole value
    assert fmt_param(recipe) == json.dumps(recipe)  # no siblings: the whole value
    # Named (legends): a section's entries by their dotted paths, anything else key=value.
    assert fmt_param(values[1], values, key="model") == \
        "model.norm=layernorm,model.positions=rotary"
    assert fmt_param(recipe, [recipe], key="model") == "model=" + json.dumps(recipe)
    # A sweep without the parameter (None, shown as missing) leaves the others short.
    assert fmt_param(values[2], [*values, None]) == "norm=rmsnorm,positions=learned"
    # Bare floats: 4 significant digits, more only where siblings would otherwise look alike.
    lrs = [0.0024839686544256994, 0.003218332319410923]
    assert [fmt_param(v, lrs) for v in lrs] == ["0.002484", "0.003218"]
    close = [0.0024839686544256994, 0.0024841]
    assert [fmt_param(v, close) for v in close] == ["0.002484", "0.0024841"]
    assert fmt_param([0.9, 0.95], values) == "[0.9, 0.95]"
    ratios = [{"mlp_ratio": 8 / 3}, {"mlp_ratio": 4.0}]
    assert [fmt_param(v, ratios) for v in ratios] == ["mlp_ratio=2.667", "mlp_ratio=4"]
