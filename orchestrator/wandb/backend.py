"""The W&B backend's commands, end to end up to the cloud boundary: create the sweep from a
checked plan, run agents here, import results, sync offline runs.

The cloud calls come in as parameters defaulting to `wandb_cloud`'s, so every step before and
after them runs in tests with stand-ins; only those calls themselves are untested.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

from orchestrator.ledger import Ledger
from orchestrator.run.slots import Slot
from orchestrator.spec.model import WandbSettings
from orchestrator.spec.plan import Plan
from orchestrator.states import SweepState
from orchestrator.wandb import cloud as wandb_cloud
from orchestrator.wandb.agents import AgentPool
from orchestrator.wandb.cloud import RemoteSweep, SweepRef
from orchestrator.wandb.run_import import import_sweep
from orchestrator.wandb.sweep_config import sweep_config

Say = Callable[[str], None]


def create(plan: Plan, ledger: Ledger, say: Say, root: Path | None = None,
           make: Callable[..., SweepRef] = wandb_cloud.create_sweep) -> SweepRef:
    """Create the W&B sweep of a checked plan and record it in the ledger under the spec's name."""
    spec = plan.spec
    config = sweep_config(plan, root)
    wb = spec.tracking.wandb or WandbSettings()
    try:
        ref = make(config, wb.project, wb.entity)
    except Exception as err:  # whatever wandb raises: login, network, a refused config
        raise wandb_cloud.explain(err, "create the W&B sweep") from None
    ledger.upsert_sweep(spec.name, str(plan.doc.path), spec.model_dump(mode="json"), plan.varied,
                        spec.metric.name, spec.metric.goal, wandb_sweep=ref.path)
    ledger.release(spec.name, SweepState.ON_WANDB)
    say(f"W&B sweep {ref.path}\n  {ref.url()}\n"
        f"more workstations join with: orch agent {ref.path}")
    return ref


def resolve(ledger: Ledger, text: str) -> SweepRef:
    """A sweep given as a ledger name (recorded by `orch sweep --backend wandb` or an import)
    or as ENTITY/PROJECT/SWEEP_ID."""
    row = ledger.sweep(text)
    return SweepRef.parse((row or {}).get("wandb_sweep") or text)


def run_agents(ref: SweepRef, slots: list[Slot], home: Path, say: Say, count: int | None = None,
               timeout: float | None = None, kill_grace: float = 30.0,
               launcher: str | None = None) -> int:
    """`orch agent`: one W&B agent per slot until the sweep (or --count) is done; in containers
    when `launcher` or the sweep's recorded spec says docker."""
    from orchestrator.wandb.agent_containers import agent_launcher

    containers = agent_launcher(Ledger(home), ref, home, kill_grace, say, launcher)
    return AgentPool(ref, slots, home, say, count=count, timeout=timeout,
                     kill_grace=kill_grace, launcher=containers).run()


def results(ledger: Ledger, text: str, home: Path,
            fetch: Callable[[SweepRef], RemoteSweep] = wandb_cloud.fetch_sweep) -> str:
    """Read a W&B sweep's runs into the ledger; returns the ledger sweep name to show."""
    ref = resolve(ledger, text)
    try:
        remote = fetch(ref)
    except Exception as err:  # whatever wandb raises: login, network, no such sweep
        raise wandb_cloud.explain(err, f"read sweep {ref.path} from W&B") from None
    return import_sweep(ledger, remote, home)


def offline_runs(home: Path, name: str) -> list[Path]:
    """A sweep's offline W&B runs: RUN_DIR/wandb/offline-run-* under ORCH_HOME/runs/NAME."""
    return sorted((home / "runs" / name).glob("*/wandb/offline-run-*"))


def sync(ledger: Ledger, home: Path, name: str, say: Say, timeout: float = 600,
         run: Callable[[list[str], float], subprocess.CompletedProcess[str]]
         = wandb_cloud.run_sync) -> int:
    """`orch sync`: upload a sweep's offline runs with `wandb sync`; exit code for the CLI."""
    row = ledger.sweep(name)
    dirs = offline_runs(home, name)
    if not dirs:
        say(f"no offline W&B runs under {home / 'runs' / name} (tracking.mode offline writes "
            "them; online runs are uploaded as they run)")
        return 0 if row is not None else 2
    path = (row or {}).get("wandb_sweep")
    ref = SweepRef.parse(path) if path else None
    argv = wandb_cloud.sync_argv(dirs, ref)
    say(f"syncing {len(dirs)} offline run(s) of {name}" + (f" into {ref.path}" if ref else ""))
    try:
        proc = run(argv, timeout)
    except subprocess.TimeoutExpired:
        say(f"`wandb sync` did not finish in {timeout:.0f} s: is W&B reachable? Nothing is "
            "lost; run `orch sync` again later")
        return 1
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode == 0:
        say(f"synced {len(dirs)} run(s)")
        return 0
    if wandb_cloud.looks_offline(output):
        say("W&B is not reachable from here (no network?): nothing was uploaded, the offline "
            "runs stay as they are; run `orch sync` again when there is a network")
    else:
        say(f"`wandb sync` failed (exit {proc.returncode}):\n{output.strip()[-2000:]}")
    return 1
