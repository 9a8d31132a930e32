"""Reusing results across sweeps (spec `reuse: true`): a pending trial whose program and config
hash match a finished trial of another sweep is recorded as finished from it, not run.

The config hash is the program's own (`validate`), over its whole resolved config, so the same
hash and the same program (argv as the spec writes it) train the same thing.
"""

from __future__ import annotations

import functools
from typing import Callable

from orchestrator.contract import finite
from orchestrator.launch.command import written
from orchestrator.ledger import Ledger, Trial
from orchestrator.spec.plan import Plan


def reuse_source(plan: Plan, ledger: Ledger, config_hash: str) -> Trial | None:
    """The finished trial of another sweep a trial of this config hash would be recorded from,
    if the spec asks for reuse and there is one."""
    if not plan.spec.reuse:
        return None
    program = written(plan.spec.program)
    return next((t for t, recorded in ledger.finished_elsewhere(plan.spec.name, config_hash)
                 if recorded is not None and written(recorded) == program), None)


def reuse_lookup(plan: Plan, ledger: Ledger) -> Callable[[str], Trial | None]:
    """`reuse_source` for this plan and ledger, each config hash looked up once."""
    return functools.cache(lambda config_hash: reuse_source(plan, ledger, config_hash))


def reuse(plan: Plan, ledger: Ledger, trial: Trial) -> str | None:
    """Record `trial` from a finished trial of another sweep with the same program and config
    hash, if the spec asks for reuse and there is one; the line that says so, else None."""
    found = reuse_source(plan, ledger, trial.config_hash)
    if found is None:
        return None
    origin = ledger.reuse(trial.id, found)
    metric = plan.spec.metric.name
    value = finite(found.final.get(metric))
    shown = f" {metric}={value:.4f}" if value is not None else ""
    return f"trial {trial.number} reused from {origin}{shown}, not run: {trial.point}"
