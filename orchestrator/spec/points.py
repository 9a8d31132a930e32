"""The last check of a spec: the trial configs its search space makes, validated by the program
itself (`validate --batch`, one process): every grid point, or for random and bayes the fixed part
and a seeded sample of proposals."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from orchestrator.contract import ContractError, Validator
from orchestrator.search import Engine, varied
from orchestrator.spec.document import SpecDoc
from orchestrator.spec.model import SweepSpec
from orchestrator.spec.rejections import Rejections, group, render

# Random/bayes proposals drawn to check a search space: a 5% invalid region shows up with
# near certainty, for about a second of sampling and validation.
SAMPLE = 200


@dataclass(frozen=True)
class Points:
    """The program's verdict on a search space, and the problems that fail the spec."""

    grid: list[tuple[dict[str, Any], str]] | None = None  # (point, config hash), valid only
    invalid: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (point, error)
    # Grid points, or sampled random/bayes proposals, the program rejected, grouped by reason.
    rejected: Rejections | None = None
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_points(spec: SweepSpec, doc: SpecDoc, validator: Validator,
                 fixed: dict[str, Any]) -> Points:
    """Validate the trial configs (`fixed` plus each point) with the program. Any invalid point
    fails the spec unless it sets `skip_invalid`; a space where every point is invalid fails it
    regardless, since nothing could run."""
    search = spec.search_config()
    try:
        if spec.method == "grid":
            points = Engine(search).grid()
        else:
            base = validator.check([fixed])[0]
            if not base.get("ok"):  # the base with the overrides: no point can be valid
                return Points(problems=[doc.error(("base",), base.get("error", "invalid"))])
            points = Engine(search).sample(SAMPLE)
        verdicts = validator.check([{**fixed, **p} for p in points])
    except ContractError as err:
        return Points(problems=[doc.error(("base",), str(err))])
    except ValueError as err:  # the engine refuses a space (e.g. a distribution in a grid)
        return Points(problems=[doc.error(("parameters",), str(err))])
    bad = [(p, str(v.get("error"))) for p, v in zip(points, verdicts) if not v.get("ok")]
    what = "grid points" if spec.method == "grid" else "sampled proposals"
    rejected = group([(p, e, {**fixed, **p}) for p, e in bad], len(points), what,
                     varied(spec.parameters))
    grid, notes = _distinct(points, verdicts) if spec.method == "grid" else (None, [])
    problems = []
    if bad and not (spec.skip_invalid and len(bad) < len(points)):
        problems = [_refusal(spec, doc, rejected)]
    return Points(grid=grid, invalid=bad if spec.method == "grid" else [], rejected=rejected,
                  notes=notes, problems=problems)


def _refusal(spec: SweepSpec, doc: SpecDoc, rejected: Rejections) -> str:
    """The paragraph that fails a spec with invalid points: what to change, then the reasons."""
    if rejected.count == rejected.checked:
        lead = (f"all {rejected.checked} grid points are invalid for the program; nothing could "
                "run" if spec.method == "grid" else f"all {rejected.checked} sampled proposals "
                f"are invalid for the program: the {spec.method} search would find nothing to "
                "run")
    elif spec.method == "grid":
        lead = (f"{rejected.share()}. Change the parameters so that every combination "
                f"is valid, or set `skip_invalid: true` to run the other "
                f"{rejected.checked - rejected.count}")
    else:
        lead = (f"{rejected.share()}. Narrow the parameters, or set `skip_invalid: true` "
                "to let the search skip such proposals (they do not count towards run_cap)")
    return render(rejected, doc.error(("parameters",), lead + ". Reasons:"), first=len("error: "))


def _distinct(points: list[dict[str, Any]],
              verdicts: list[dict[str, Any]]) -> tuple[list[tuple[dict[str, Any], str]], list[str]]:
    """The valid grid points in order, each distinct config once, and a note per repeat."""
    grid: list[tuple[dict[str, Any], str]] = []
    notes: list[str] = []
    seen: set[str] = set()
    for point, verdict in zip(points, verdicts):
        if not verdict.get("ok"):
            continue
        if verdict["config_hash"] in seen:
            notes.append(f"grid point {json.dumps(point)} resolves to the same config as an "
                         "earlier point; it runs once")
        else:
            seen.add(verdict["config_hash"])
            grid.append((point, verdict["config_hash"]))
    return grid, notes
