"""Before a sweep runs: how long a trial takes, and the whole sweep on the slots it gets.

A trial's time comes, in this order, from finished trials in the ledger with the same cost key
(the program says which configs cost the same: `validate` answers a `cost_key`, the trainer's
Config.cost_key), from a probe cached under ORCH_HOME, or from a fresh probe (`PROGRAM probe`,
which times a few real steps and one evaluation). A program without a probe gets no estimate,
never an invented one. A probe stopped at its time budget still answers from the last stage it
reported: its warm-up step (an estimate), or, before that step ended, a lower bound.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator.contract import EXIT_BAD_INPUT, ContractError, format_value, program_argv
from orchestrator.ledger import Ledger, Trial
from orchestrator.spec.plan import Plan
from orchestrator.run.reuse import reuse_lookup
from orchestrator.run.slots import Slot
from orchestrator.states import TERMINAL, TrialState

DAY = 86400.0
# Seconds all probes of one dry run may take together. The dry run is the inner loop, and a
# minute covers a probe's setup (imports, data, model) and several steps of a small model on a
# CPU or a full one on a GPU; a full-size step on a CPU takes minutes, so waiting longer buys
# little: the probe's warm-up time or a lower bound answers then, `--probe-budget` asks for more.
PROBE_BUDGET = 60.0
NO_PROBE = "program has no probe"
WARM_UP_ONLY = "probe, warm-up step only"
LOWER_BOUND = "probe stopped before its first step ended"


@dataclass
class TrialTime:
    """One cost key's estimated seconds per trial, and where the number comes from."""

    seconds: float | None
    source: str
    lower_bound: bool = False  # the trial takes more than `seconds`


@dataclass
class SweepEstimate:
    """Per-trial times of the trials still to run, and their wall clock on the slots."""

    keys: list[str]  # one cost key per trial to run
    times: dict[str, TrialTime]
    slots: list[Slot]
    notes: list[str] = field(default_factory=list)

    def bounded(self) -> bool:
        """Whether a trial's estimate is only a lower bound."""
        return any(self.times[k].lower_bound for k in self.keys)

    def known(self) -> list[float]:
        """Estimated seconds of each trial that has an estimate."""
        return [t.seconds for k in self.keys if (t := self.times[k]).seconds is not None]

    def wall(self) -> float | None:
        """The sweep's wall clock: trials packed longest-first onto the slots (None: nothing
        is known)."""
        known = sorted(self.known(), reverse=True)
        if not known:
            return None
        loads = [0.0] * max(1, len(self.slots))
        for seconds in known:
            loads[loads.index(min(loads))] += seconds
        return max(loads)

    def per_trial(self) -> float | None:
        """The mean estimated trial time (for the live ETA)."""
        known = self.known()
        return sum(known) / len(known) if known else None

    def line(self) -> str:
        """`~2.1 h per trial (probe, cpu); sweep ~6 d 10 h on 1 slot(s)`."""
        if not self.keys:
            return "estimate: nothing left to run"
        known, wall = self.known(), self.wall()
        reasons = sorted({t.source for k in self.keys if (t := self.times[k]).seconds is None})
        if wall is None:
            return f"estimate: no estimate ({'; '.join(reasons)})"
        device = ", ".join(sorted({s.device.split(":")[0] for s in self.slots}))
        sources = ", ".join(sorted({self.times[k].source for k in self.keys
                                    if self.times[k].seconds is not None}))
        low, high = min(known), max(known)
        each = f"~{duration(low)}" if duration(low) == duration(high) else \
            f"~{duration(low)} to {duration(high)}"
        if self.bounded():
            each = f"more than {duration(low)}"
        text = (f"estimate: {each} per trial ({sources}, {device}); sweep "
                f"{'more than ' if self.bounded() else '≥ ' if reasons else '~'}"
                f"{duration(wall)} on {len(self.slots)} slot(s)")
        missing = len(self.keys) - len(known)
        if missing:
            text += f"; {missing} trial(s) without an estimate ({'; '.join(reasons)})"
        return text

    def warning(self) -> str | None:
        """A warning when the sweep would run longer than a day."""
        wall = self.wall()
        if wall is None or wall <= DAY:
            return None
        return (f"warning: this sweep would take {'more than ' if self.bounded() else '~'}"
                f"{duration(wall)} on {len(self.slots)} "
                "slot(s), more than a day: fewer trials (--max-trials, a smaller grid), a "
                "smaller config, or more slots")


def duration(seconds: float) -> str:
    """Seconds as `40 s`, `12 min`, `2.1 h`, `6 d 10 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY:
        return f"{seconds / 3600:.1f} h"
    days, rest = divmod(seconds, DAY)
    return f"{days:.0f} d {rest / 3600:.0f} h"


def points_to_run(plan: Plan, trials: list[Trial], max_trials: int | None,
                  reuse_of: Callable[[str], Trial | None] = lambda config_hash: None
                  ) -> list[dict]:
    """The points a run of this plan would start: grid points the ledger holds no result of
    (or, for random and bayes, run_cap draws at the fixed config), capped by run_cap and
    max_trials. Trials a resume runs again (interrupted, left running) count as to run; grid
    points `reuse_of` finds finished in another sweep (`reuse: true`, `reuse_lookup`) do not:
    they are recorded from there without a slot, within run_cap, outside max_trials."""
    if plan.grid is None:  # trials to run again (interrupted, left running), then new draws
        again = [t for t in trials
                 if t.state in (TrialState.PENDING, TrialState.RUNNING) or t.interrupted]
        count = len(again) + max(0, (plan.spec.run_cap or max_trials or 0) - len(trials))
        points: list[dict] = [{}] * count
    else:
        points = [p for p, h in _grid_todo(plan, trials) if reuse_of(h) is None]
    return points if max_trials is None else points[:max_trials]


def reused_count(plan: Plan, trials: list[Trial],
                 reuse_of: Callable[[str], Trial | None]) -> int:
    """How many grid points the run would record from other sweeps instead of running."""
    return 0 if plan.grid is None else \
        sum(reuse_of(h) is not None for _, h in _grid_todo(plan, trials))


def _grid_todo(plan: Plan, trials: list[Trial]) -> list[tuple[dict, str]]:
    """Grid points and their config hashes the ledger holds no result of, within run_cap."""
    done = {t.config_hash for t in trials if t.state in TERMINAL and not t.interrupted}
    todo = [(p, h) for p, h in plan.grid or [] if h not in done]
    cap = plan.spec.run_cap
    return todo if cap is None else todo[:max(0, cap - len(trials))]


def cost_keys(plan: Plan, points: list[dict[str, Any]]) -> list[tuple[str, float | None]]:
    """The program's cost key of each point (its config hash when the program has none), with
    its FLOPs per token when the program says."""
    verdicts = plan.validator.check([plan.resolved(p) for p in points])
    return [(str(v.get("cost_key") or v.get("config_hash")),
             v.get("flops_per_token") if isinstance(v.get("flops_per_token"), (int, float))
             else None) for v in verdicts]


def ledger_times(plan: Plan, ledger: Ledger, device: str) -> dict[str, list[float]]:
    """Measured wall times of finished trials of this program on this device type, by cost
    key. Each stored config is re-keyed by the program, section by section over the base."""
    rows = [r for r in ledger.finished_walls() if r["program"] is not None
            and program_argv(r["program"]) == plan.program
            and (r["device"] or "").split(":")[0] == device]
    configs = {json.dumps(r["config"], sort_keys=True): r["config"] for r in rows}
    try:
        keys = dict(zip(configs, [k for k, _ in cost_keys(plan, list(configs.values()))]))
    except ContractError:
        return {}
    times: dict[str, list[float]] = {}
    for r in rows:
        times.setdefault(keys[json.dumps(r["config"], sort_keys=True)], []).append(
            r["program_wall"])
    return times


class ProbeCache:
    """Probe answers by program, cost key and device type, in ORCH_HOME/estimates.json."""

    def __init__(self, home: Path) -> None:
        self.path = home / "estimates.json"

    @staticmethod
    def key(program: list[str], cost_key: str, device: str) -> str:
        """The cache key."""
        return hashlib.sha256(json.dumps([program, cost_key, device]).encode()).hexdigest()[:24]

    def get(self, key: str) -> dict[str, Any] | None:
        """A cached answer, or None."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            return None

    def put(self, key: str, answer: dict[str, Any]) -> None:
        """Store an answer (written whole, then renamed: a kill leaves the old file)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        data[key] = answer
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)


def run_probe(plan: Plan, point: dict[str, Any], slot: Slot, home: Path,
              timeout: float) -> tuple[dict[str, Any] | None, str]:
    """`PROGRAM probe --config BASE k=v...` on the slot's device: (answer, '') or (None, why).
    Stopped at `timeout`, it answers from the last stage the probe reported (`partial` says
    which: the warm-up step, or a lower bound)."""
    sets = [f"{key}={format_value(value)}" for key, value in plan.resolved(point).items()]
    argv = [*plan.program, "probe", "--config", str(plan.base), *sets]
    env = {**os.environ, **slot.env,
           "ORCH_CACHE_DIR": os.environ.get("ORCH_CACHE_DIR") or str(home / "cache")}
    stages: list[tuple[float, dict[str, Any]]] = []  # (when it arrived, the stage's JSON)
    with tempfile.TemporaryFile("w+") as stderr:
        try:  # its own session: a stop ends the probe's children too
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=stderr,
                                    text=True, start_new_session=True)
        except OSError as err:
            return None, f"the probe could not run: {err}"
        reader = threading.Thread(target=_read_stages, args=(proc, stages), daemon=True)
        reader.start()
        stopped = None
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stopped = time.monotonic()
        finally:  # at the budget, or on Ctrl-C: its own session does not get the SIGINT
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        reader.join()
        stderr.seek(0)
        error = stderr.read()
    if stopped is not None:
        return _partial(stages, stopped, timeout)
    try:
        answer = stages[-1][1]
        seconds = float(answer["seconds_per_trial"])
    except (IndexError, ValueError, KeyError, TypeError):
        if proc.returncode == EXIT_BAD_INPUT and error.startswith("error:"):
            # The contract's bad-input answer: the program probes, this config could not.
            return None, "the probe failed: " + error.strip().splitlines()[0][7:][:300]
        return None, NO_PROBE
    return ({**answer, "seconds_per_trial": seconds}, "") if seconds > 0 else \
        (None, "the probe measured no time")


def _read_stages(proc: subprocess.Popen[str], stages: list[tuple[float, dict[str, Any]]]
                 ) -> None:
    """Collect the probe's JSON lines as they come, with when each came."""
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            stage = json.loads(line)
        except ValueError:
            continue
        if isinstance(stage, dict):
            stages.append((time.monotonic(), stage))


def _partial(stages: list[tuple[float, dict[str, Any]]], stopped: float, budget: float
             ) -> tuple[dict[str, Any] | None, str]:
    """The answer of a probe stopped at its budget, from the last stage it reported: after the
    warm-up step, that step's time per step (evaluations untimed); before, a lower bound: the
    step had taken the time since setup ended, and every step takes as long (not counted when
    the first step compiles: only that one then)."""
    out = f"the probe ran out of its {budget:.0f} s"
    try:
        came, last = stages[-1]
        steps, setup = int(last["steps"]), float(last["setup_seconds"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None, out + " before it was set up"
    if isinstance(last.get("warmup_seconds"), (int, float)):
        seconds, partial = setup + steps * last["warmup_seconds"], "warm-up"
    else:
        waited = stopped - came
        seconds = setup + waited * (1 if last.get("compile") else steps)
        partial = "lower bound"
    return {**last, "seconds_per_trial": seconds, "partial": partial, "budget": budget}, ""


def _trial_time(answer: dict[str, Any]) -> TrialTime:
    """A probe's answer (fresh or cached) as a trial time, labelled with how complete it is."""
    partial = answer.get("partial")
    source = {"warm-up": WARM_UP_ONLY, "lower bound": LOWER_BOUND}.get(partial, "probe")
    return TrialTime(answer["seconds_per_trial"], source, partial == "lower bound")


def _scaled(flops: float | None, measured: dict[str, tuple[float, float, float | None, bool]]
            ) -> tuple[float, bool] | None:
    """A trial time from the measured shape nearest in FLOPs per token, its training part
    scaled by the ratio (setup, when known, kept as it is), and whether it is a lower bound."""
    near = [(abs(f - flops), seconds, setup, f, low) for seconds, setup, f, low
            in measured.values() if f] if flops else []
    if not near:
        return None
    _, seconds, setup, f, low = min(near)
    return setup + (seconds - setup) * flops / f, low


def estimate(plan: Plan, ledger: Ledger, slots: list[Slot], max_trials: int | None = None,
             probe: bool = True, say: Callable[[str], None] | None = None,
             budget: float | None = None) -> SweepEstimate:
    """Estimate the trials this plan would run. Probes (only when `probe` and the launcher is
    local: a probe runs here, where Docker or Slurm trials would not) time the largest and the
    smallest shape within `budget` seconds (PROBE_BUDGET); the other shapes are scaled from
    them by FLOPs. A cached partial probe (stopped at its budget) answers unless `budget` is
    given: then that shape is probed again, for that long."""
    trials = ledger.trials(plan.spec.name) if ledger.sweep(plan.spec.name) else []
    points = points_to_run(plan, trials, max_trials, reuse_lookup(plan, ledger))
    try:
        keyed = cost_keys(plan, points) if points else []
    except ContractError as err:
        return SweepEstimate(["?"] * len(points), {"?": TrialTime(None, str(err)[:300])}, slots)
    result = SweepEstimate([k for k, _ in keyed], {}, slots)
    device = slots[0].device.split(":")[0] if slots else "cpu"
    history = ledger_times(plan, ledger, device) if keyed else {}
    cache = ProbeCache(ledger.home)
    shapes = {k: (p, f) for (k, f), p in zip(keyed, points)}
    # key: (seconds, setup, flops, lower bound)
    measured: dict[str, tuple[float, float, float | None, bool]] = {}
    partial: list[dict[str, Any]] = []  # the partial probe answers used
    for key, (_, flops) in shapes.items():
        if key in history:
            seconds = statistics.median(history[key])
            measured[key] = (seconds, 0.0, flops, False)
            result.times[key] = TrialTime(seconds, "ledger")
        elif ((hit := cache.get(cache.key(plan.program, key, device))) is not None
              and not (budget is not None and probe and hit.get("partial"))):
            result.times[key] = _trial_time(hit)
            measured[key] = (hit["seconds_per_trial"], hit.get("setup_seconds") or 0.0, flops,
                             result.times[key].lower_bound)
            partial += [hit] if hit.get("partial") else []
    why = ("no finished trial of this shape in the ledger" if plan.spec.launcher.type != "local"
           else "not probed yet: `orch sweep --dry-run` probes" if not probe else "")
    left = PROBE_BUDGET if budget is None else budget
    order = sorted((k for k in shapes if k not in result.times),
                   key=lambda k: -(shapes[k][1] or 0))
    if why or not order:
        targets: list[str] = []
    elif all(f for _, f in shapes.values()):  # scalable: the extremes, unless one is measured
        targets = [] if measured else list(dict.fromkeys([order[0], order[-1]]))
    else:
        targets = order  # each shape its own probe, as far as the budget goes
    for n, key in enumerate(targets):
        if left <= 0:
            break
        slot = slots[0] if slots else Slot(0, "cpu", {})
        if say is not None:
            say(f"probing a trial's speed on {slot.device} (shape {n + 1} of {len(targets)}; "
                f"{len(shapes)} in the sweep; at most {left:.0f} s)…")
        began = time.time()
        answer, failed = run_probe(plan, shapes[key][0], slot, ledger.home, left)
        left -= time.time() - began
        if answer is None:
            why = failed
            break
        cache.put(cache.key(plan.program, key, device), answer)
        result.times[key] = _trial_time(answer)
        measured[key] = (answer["seconds_per_trial"], answer.get("setup_seconds") or 0.0,
                         shapes[key][1], result.times[key].lower_bound)
        partial += [answer] if answer.get("partial") else []
    for key in shapes:
        if key not in result.times:
            scaled = _scaled(shapes[key][1], measured)
            result.times[key] = TrialTime(scaled[0], "FLOPs-scaled", scaled[1]) if scaled \
                else TrialTime(None, why or "the probe time budget ran out")
    if partial:
        budgets = ", ".join(sorted({f"{a.get('budget', 0):.0f} s" for a in partial}))
        result.notes.append(
            f"the probe ran out of its time budget ({budgets}) "
            + ("before its first step ended: a lower bound" if any(
                a["partial"] == "lower bound" for a in partial) else "after its warm-up step")
            + "; `--probe-budget SECONDS` probes again for longer, and a finished trial of the "
            "shape replaces the estimate")
    return result
