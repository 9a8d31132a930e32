"""W&B agents on Slurm: `orch agent SWEEP_ID --launcher slurm --count K` as one job array.

The common pattern for W&B sweeps on a cluster: K array tasks, each one `wandb agent --count 1`
on its own GPU (--gres=gpu:1), so each task runs one trial that W&B's controller hands out, and
Slurm, not orch, queues and places them. orch submits the array and returns; the queue runs it
with no orchestrator alive. `squeue -j ID` follows it and `scancel ID` stops it (the agents
forward the SIGTERM to their trainers, which end their W&B runs).

Resources come from the launcher section of the spec the sweep was created from (`orch sweep
--backend wandb` records it in the ledger) when it is a Slurm one, else from the defaults.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from orchestrator.launch.slurm import commands as slurm
from orchestrator.ledger import Ledger
from orchestrator.launch.slurm.launcher import batch_script, directives, home_tag, slurm_time
from orchestrator.spec.model import LauncherSettings
from orchestrator.wandb.cloud import SweepRef, agent_argv


@dataclass
class AgentArray:
    """A submitted array of agents."""

    job_id: str
    tasks: int
    logs: Path  # agent-<task>.log for each task

    def describe(self, gpus: int) -> str:
        """What was submitted and how to follow or stop it."""
        each = f"{gpus} GPU" if gpus else "no GPU"
        return (f"submitted {self.tasks} W&B agent(s) as Slurm job array {self.job_id} (one "
                f"agent and one run per task, {each} each); logs: {self.logs}/agent-<task>.log; "
                f"`squeue -j {self.job_id}` follows them, `scancel {self.job_id}` stops them")


def recorded_settings(ledger: Ledger, ref: SweepRef) -> LauncherSettings:
    """The Slurm launcher section of the spec this W&B sweep was created from, else defaults."""
    row = ledger.wandb_sweep(ref.path)
    launcher = (row or {}).get("spec", {}).get("launcher") or {}
    if launcher.get("type") == "slurm":
        return LauncherSettings.model_validate(launcher)
    return LauncherSettings(type="slurm")


def submit_agent_array(ref: SweepRef, count: int, settings: LauncherSettings, home: Path,
                       gpus: int = 1, time_limit: str | None = None,
                       wandb: str | None = None) -> AgentArray:
    """Submit `count` array tasks, each `wandb agent --count 1 SWEEP` with `gpus` GPUs.

    With setup lines or a container prefix, `wandb` is the job's own (as written), else the one
    beside this interpreter (on the shared filesystem). launcher.max_concurrent, when the spec
    sets it, throttles the array (`%M`).
    """
    from orchestrator.wandb.agents import agent_env
    from orchestrator.run.slots import Slot

    logs = home / "agents" / ref.id / "slurm"
    logs.mkdir(parents=True, exist_ok=True)
    own = settings.setup or settings.container_prefix
    argv = agent_argv(ref, 1, "wandb" if own and wandb is None else wandb)
    throttle = (f"%{settings.max_concurrent}" if "max_concurrent" in settings.model_fields_set
                else "")
    options = [f"--job-name=orch-agent:{ref.id}",
               f"--comment=orch home={home_tag(home)} wandb={ref.path}",
               f"--array=0-{count - 1}{throttle}", f"--output={logs}/agent-%a.log",
               f"--chdir={Path.cwd()}", "--export=ALL",
               *directives(settings, time_limit or slurm_time(settings.time, None, 0), gpus)]
    # Each agent keeps its sweep config files apart from the others'.
    setup = [f"export WANDB_DIR={shlex.quote(str(logs))}/task-$SLURM_ARRAY_TASK_ID",
             'mkdir -p "$WANDB_DIR"', *settings.setup]
    script = logs / "agents.sh"
    script.write_text(batch_script(f"orch: W&B agents for sweep {ref.path}, one per array "
                                   "task", options, setup, argv, settings.container_prefix))
    env = agent_env(Slot(0, "slurm", {}), home, dict(os.environ))
    if "OMP_NUM_THREADS" not in os.environ:
        env.update(OMP_NUM_THREADS=str(settings.cpus_per_trial),
                   MKL_NUM_THREADS=str(settings.cpus_per_trial))
    env.pop("CUDA_VISIBLE_DEVICES", None)  # Slurm sets it from the allocation
    job_id = slurm.submit(script, env)
    return AgentArray(job_id, count, logs)


def gpus_per_agent(text: str | None) -> int:
    """`orch agent --gpus` on Slurm: `none` asks for no GPU; anything else one GPU per agent
    (indices mean nothing on a cluster: Slurm picks the GPU)."""
    return 0 if (text or "").strip().lower() in ("none", "cpu", "0") else 1

