"""The value a trial had for a parameter its sweep did not vary, for tables across sweeps.

`orch results A B` shows every parameter either sweep varied; in a row of the sweep that kept
one fixed, the cell shows the value its trial ran with (the config the program resolved, else
the sweep's settings for all its trials), and stays missing only where the key does not
apply (no trial's config has it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from orchestrator.ledger import Trial


def sweep_fixed(spec: dict[str, Any], varied: Sequence[str], trials: Sequence[Trial],
                keys: Sequence[str]) -> dict[str, Any]:
    """What a recorded sweep sets alike for all its trials, of `keys`: its overrides and its
    parameters with one `value`, else, for a key it did not vary (nor a section around or
    inside it), the value in the first config one of its trials resolved."""
    params = spec.get("parameters") or {}
    fixed = {**(spec.get("overrides") or {}),
             **{k: p["value"] for k, p in params.items() if isinstance(p, dict) and "value" in p}}
    for key in keys:
        if key in fixed or any(_overlaps(key, v) for v in varied):
            continue
        found = next((hit for hit in (_lookup(t.config, key) for t in trials) if hit[0]), None)
        if found:
            fixed[key] = found[1]
    return fixed


def _overlaps(a: str, b: str) -> bool:
    """Whether dotted keys name the same setting or one holds the other (`model`, `model.n`)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _lookup(config: dict[str, Any], key: str) -> tuple[bool, Any]:
    """(found, value) of a dotted key in a nested config."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def known_params(t: Trial, keys: Sequence[str], fixed: dict[str, Any]) -> Trial:
    """The trial with the value of each of `keys` it did not vary filled in where it is known:
    from the config it resolved (result.json's), else from its sweep's fixed settings. A key
    known nowhere stays out (shown as missing: it does not apply)."""
    params = dict(t.params)
    for key in keys:
        if key in params:
            continue
        found, value = _lookup(t.config, key)
        if found:
            params[key] = value
        elif key in fixed:
            params[key] = fixed[key]
    return dataclasses.replace(t, params=params)
