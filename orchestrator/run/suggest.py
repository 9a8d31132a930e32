"""New trials from the search engine: its proposals checked by the program, added as pending
(or as invalid, with the program's reason, so the engine moves past them)."""

from __future__ import annotations

import json
from typing import Any, Callable

from orchestrator.ledger import Ledger
from orchestrator.search import Engine
from orchestrator.spec.plan import Plan
from orchestrator.spec.rejections import group, no_new_point, one_line
from orchestrator.states import TrialState


def suggest(plan: Plan, ledger: Ledger, engine: Engine, n: int,
            note: Callable[[str], None]) -> bool:
    """Add up to n pending trials from the engine; True when the search space is exhausted."""
    name = plan.spec.name
    trials = ledger.trials(name)
    cap = plan.spec.run_cap
    if cap is not None:
        n = min(n, cap - len([t for t in trials if t.state != TrialState.INVALID]))
    known = {t.config_hash for t in trials}
    grid = {json.dumps(p, sort_keys=True): h for p, h in plan.grid or []}
    # Invalid grid points count as tried, so the engine moves past them.
    extra = [engine.point_run(p, TrialState.INVALID) for p, _ in plan.invalid]
    tries = 20 if plan.grid is None else len(plan.grid) + len(plan.invalid) + 1
    rejected: list[tuple[dict[str, Any], str, dict[str, Any]]] = []
    proposed = 0
    for _ in range(tries):
        # An early-stopped trial's curve is what it gave (Optuna reads it as a pruned trial).
        runs = [engine.sweep_run(t, [v.metrics for v in ledger.history(t)]
                                 if t.state == TrialState.STOPPED else None)
                for t in ledger.trials(name)] + extra
        points = engine.suggest(runs, n)
        if points is None:
            return True
        proposed += len(points)
        if plan.grid is not None:
            # A grid point missing from the map resolved to the same config as another.
            verdicts = [{"ok": True, "config_hash": grid.get(json.dumps(p, sort_keys=True))}
                        for p in points]
        else:
            verdicts = plan.validator.check([plan.resolved(p) for p in points])
        added = 0
        for point, verdict in zip(points, verdicts):
            h = verdict.get("config_hash")
            if verdict.get("ok") and h and h not in known:
                ledger.add_trial(name, h, point)
                known.add(h)
                added += 1
            elif verdict.get("ok"):
                # A config already tried: shown to the engine as taken (pending), so grid
                # moves on and bayes looks elsewhere.
                extra.append(engine.point_run(point, TrialState.PENDING))
            else:
                error = str(verdict.get("error"))
                rejected.append((point, error, plan.resolved(point)))
                key = "invalid-" + json.dumps(point, sort_keys=True)
                if key not in known:
                    t = ledger.add_trial(name, key, point, TrialState.INVALID, error)
                    known.add(key)
                    note(f"trial {t.number}: invalid, skipped: " + one_line(
                        point, error, plan.resolved(point), plan.varied))
        if added:
            return False
    note(no_new_point(group(rejected, proposed, "proposals", plan.varied)))
    return True
