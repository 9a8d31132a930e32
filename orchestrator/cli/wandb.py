"""`orch` commands for the W&B cloud path: sweeps served by W&B agents, results and sync.

Registered on the main app by `orchestrator.cli.main`; every call to the cloud itself lives in
`orchestrator.wandb.cloud`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import typer

from orchestrator.report import results as results_mod
from orchestrator.report import tables
from orchestrator.launch.protocol import LauncherError
from orchestrator.ledger import Ledger, orch_home
from orchestrator.spec.plan import Plan
from orchestrator.run.slots import make_slots
from orchestrator.spec.document import SpecError
from orchestrator.cli.terminal import err, out, show, spec_errors
from orchestrator.cli.terminal import say as _say

if TYPE_CHECKING:
    from orchestrator.wandb.cloud import SweepRef


def _ledger() -> Ledger:
    return Ledger(orch_home())


def sweep_on_wandb(plan: Plan, ledger: Ledger, dry_run: bool, max_trials: int | None) -> None:
    """The W&B backend: the same checks ran; now create the cloud sweep and serve it here."""
    from orchestrator.wandb import backend as wandb_backend
    from orchestrator.wandb.cloud import CloudError
    from orchestrator.wandb.sweep_config import sweep_config

    try:
        if dry_run:
            import yaml

            out.print(yaml.safe_dump(sweep_config(plan), sort_keys=False), highlight=False,
                      markup=False)
            return
        ref = wandb_backend.create(plan, ledger, lambda m: out.print(m, highlight=False))
    except CloudError as e:
        err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except SpecError as e:
        spec_errors(e)
        raise typer.Exit(2) from None
    try:
        code = wandb_backend.run_agents(ref, make_slots(plan.spec.resources), ledger.home, _say,
                                        count=max_trials,
                                        kill_grace=max(plan.spec.resources.kill_grace, 30.0))
    except LauncherError as e:
        err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if code == 0:
        show_wandb_results(ledger, ref.path)
    raise typer.Exit(code)


def import_wandb(ledger: Ledger, sweep_ref: str) -> str:
    """Read a W&B sweep into the ledger; its ledger name."""
    from orchestrator.wandb import backend as wandb_backend
    from orchestrator.wandb.cloud import CloudError

    try:
        return wandb_backend.results(ledger, sweep_ref, ledger.home)
    except ValueError as e:
        err.print(f"error: {e}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    except CloudError as e:
        err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


def show_wandb_results(ledger: Ledger, sweep_ref: str) -> str:
    name = import_wandb(ledger, sweep_ref)
    report = results_mod.load(ledger, [name], per_trial=True)
    show(tables.rich_table(tables.report_grid(report, title=f"W&B sweep {sweep_ref}")))
    return name


def agent(sweep_id: str = typer.Argument(..., help="ENTITY/PROJECT/SWEEP_ID (what `orch sweep "
                                         "--backend wandb` printed), or its ledger name."),
          gpus: Optional[str] = typer.Option(None, "--gpus", help="GPU indices (0,1), `all` "
                                             "(default: nvidia-smi) or `none` for CPU slots."),
          jobs_per_gpu: int = typer.Option(1, "--jobs-per-gpu", min=1,
                                           help="Agents (so runs) sharing one GPU."),
          cpu_slots: int = typer.Option(1, "--cpu-slots", min=1,
                                        help="Agents when there is no GPU."),
          count: Optional[int] = typer.Option(None, "--count", min=1,
                                              help="Runs on this workstation, over all agents."),
          timeout: Optional[str] = typer.Option(None, "--timeout",
                                                help="Stop the agents after this long (2h)."),
          launcher: Optional[str] = typer.Option(
              None, "--launcher", help="`local`: processes; `docker`: a container of the "
              "trainer image each; `slurm`: submit --count agents as one Slurm job array (a GPU "
              "and one run each) and return. Default: docker when the sweep's spec says so, "
              "else local.")
          ) -> None:
    """Serve a W&B sweep on this workstation: one `wandb agent` per slot, GPU-pinned."""
    from orchestrator.wandb import backend as wandb_backend
    from orchestrator.spec.model import Resources, parse_duration

    ledger = _ledger()
    try:
        ref = wandb_backend.resolve(ledger, sweep_id)
        if launcher not in (None, "local", "docker", "slurm"):
            raise ValueError(f"--launcher {launcher}: choose local, docker or slurm")
        if launcher == "slurm":
            raise typer.Exit(_agents_on_slurm(ledger, ref, count, gpus, timeout))
        text = (gpus or "all").strip()
        picked = [int(g) for g in text.split(",") if g.strip()] if text[:1].isdigit() else text
        res = Resources(gpus=picked, jobs_per_gpu=jobs_per_gpu, cpu_slots=cpu_slots)
        limit = parse_duration(timeout)
    except ValueError as e:
        err.print(f"error: {e}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    try:
        code = wandb_backend.run_agents(ref, make_slots(res), ledger.home, _say, count=count,
                                        timeout=limit, launcher=launcher)
    except LauncherError as e:
        err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def _agents_on_slurm(ledger: Ledger, ref: SweepRef, count: int | None, gpus: str | None,
                     timeout: str | None) -> int:
    """`orch agent --launcher slurm`: one job array of agents; the exit code."""
    from orchestrator.launch.slurm.commands import SlurmError
    from orchestrator.wandb.slurm_agents import gpus_per_agent, recorded_settings, submit_agent_array
    from orchestrator.launch.slurm.launcher import slurm_time

    if count is None:
        err.print("error: --launcher slurm needs --count K (the array's size: K agents, one run "
                  "each)")
        return 2
    settings = recorded_settings(ledger, ref)
    limit = slurm_time(timeout, None, 0) if timeout else None
    try:
        array = submit_agent_array(ref, count, settings, ledger.home,
                                   gpus=gpus_per_agent(gpus), time_limit=limit)
    except SlurmError as e:
        err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
        return 1
    _say(array.describe(gpus_per_agent(gpus)))
    return 0


def sync_cmd(name: str = typer.Argument(..., help="Sweep name in the ledger."),
             timeout: float = typer.Option(600, "--timeout", help="Seconds to wait for "
                                           "`wandb sync`.")) -> None:
    """Upload a sweep's offline W&B runs (`wandb sync`) once a network is there."""
    from orchestrator.wandb import backend as wandb_backend

    ledger = _ledger()
    raise typer.Exit(wandb_backend.sync(ledger, ledger.home, name, _say, timeout))
