"""W&B agents on this workstation: one `wandb agent` per slot, each pinned to its GPU.

W&B's controller hands out the trials; this module only keeps one agent process per slot
alive until it ends by itself (the sweep is finished, or its share of --count is done), prints
what the agents report, and stops them cleanly on Ctrl-C, SIGTERM or `--timeout`.

Agents run through the local launcher (own session, SIGKILL when `orch` dies, an ORCH_TRIAL
marker inherited by the trainers they start), or, with the Docker launcher, each in a container
of the trainer image (agent_containers.py) driven through the same launcher calls.
A stop is SIGTERM to each agent, which forwards it to its running trainer (--forward-signals);
the trainer writes result.json and ends its W&B run as failed. After the grace period the
agents are killed, and any trainer left over (the agent puts each in its own process group) is
found by its marker and ended too.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator.launch.local import LocalLauncher, kill_marked
from orchestrator.launch.protocol import Launch, Launcher, Run
from orchestrator.run.slots import Slot
from orchestrator.run.stopping import Stopper
from orchestrator.wandb.cloud import SweepRef, agent_argv, looks_offline

TICK = 0.5
# Agent log lines worth showing: a run starting or ending, and errors.
SHOWN = re.compile(r"About to run command|Cleaning up finished run|ERROR|Error:|"
                   r"Agent received command: (?:stop|exit)|[Ss]weep .*(?:finished|deleted)")


def split_count(total: int | None, slots: int) -> list[int | None]:
    """--count is the number of runs for this workstation, shared out over its agents (a W&B
    agent's own --count is per agent). Slots whose share is 0 start no agent."""
    if total is None:
        return [None] * slots
    return [total // slots + (1 if i < total % slots else 0) for i in range(slots)]


def agent_env(slot: Slot, home: Path, base: dict[str, str]) -> dict[str, str]:
    """The agent's environment: its slot's GPU pinning, and what the sweep's command expects.

    This interpreter's directory goes first on PATH because the command runs `/usr/bin/env
    python` (the `${env}` macro): the trainer then runs on the Python `orch` runs on. The API
    key is not added here: wandb finds it in the inherited environment or ~/.netrc.
    """
    path = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", os.defpath)])
    return {**base, **slot.env, "PATH": path, "ORCH_HOME": str(home),
            "ORCH_CACHE_DIR": base.get("ORCH_CACHE_DIR") or str(home / "cache"),
            "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class AgentCommand:
    """One slot's `wandb agent ...` (cloud.agent_argv): run here as it is, or in a container
    with the image's own `wandb` (agent_containers.py)."""

    argv: list[str]

    def host(self) -> list[str]:
        """The command on this machine."""
        return list(self.argv)

    def in_image(self) -> list[str]:
        """The command in a container: the image's wandb, not the host's path to one."""
        return ["wandb", *self.argv[1:]]


@dataclass
class Agent:
    """One agent process and how much of its log has been shown."""

    slot: Slot
    run: Run
    log_offset: int = 0
    code: int | None = None


@dataclass
class AgentPool:
    """Runs the agents of one sweep on this workstation until they end."""

    sweep: SweepRef
    slots: list[Slot]
    home: Path
    say: Callable[[str], None]
    count: int | None = None
    timeout: float | None = None
    kill_grace: float = 30.0
    wandb: str | None = None
    launcher: Launcher | None = None  # default: a LocalLauncher (agents as processes)
    _signal: int | None = None
    _agents: list[Agent] = field(default_factory=list)

    @property
    def marker(self) -> str:
        """The ORCH_TRIAL prefix of this sweep's agents and of the trainers they start."""
        return f"{self.home}:wandb-agent:{self.sweep.path}:"

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._signal is not None:  # a second Ctrl-C: no more grace
            for agent in self._agents:
                Stopper.hurry(agent.run)
        self._signal = signum

    def run(self) -> int:
        """Start the agents, wait for them all; 0 when every agent ended well."""
        launcher = self.launcher or LocalLauncher()
        try:
            launcher.prepare(sorted({s.device for s in self.slots}))  # an image, a GPU check
            leftovers = launcher.reap_orphans(self.marker)
        except BaseException:
            launcher.close()
            raise
        if leftovers:
            self.say(f"ended {leftovers} agent(s) left by an earlier `orch agent`")
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._start_all(launcher)
            timed_out = self._wait(launcher)
        finally:
            launcher.close()
            for s, handler in old.items():
                signal.signal(s, handler)
            stray = kill_marked(self.marker, grace=self.kill_grace)
            if stray:
                self.say(f"ended {len(stray)} trainer process(es) the agents left behind")
        if self._signal is not None:
            return 143 if self._signal == signal.SIGTERM else 130
        codes = [a.code for a in self._agents]
        if timed_out or any(c != 0 for c in codes):
            return 1
        return 0

    def _start_all(self, launcher: Launcher) -> None:
        base = dict(os.environ)
        for slot, count in zip(self.slots, split_count(self.count, len(self.slots))):
            if count == 0:
                continue
            agent_dir = self.home / "agents" / self.sweep.id / f"slot-{slot.index}"
            env = agent_env(slot, self.home, base)
            env["WANDB_DIR"] = str(agent_dir)  # the agent's sweep-*/config-*.yaml go here
            command = AgentCommand(agent_argv(self.sweep, count, self.wandb))
            run = launcher.start(Launch(
                trial_id=slot.index, number=slot.index, attempt=1, command=command,
                run_dir=agent_dir, env=env, marker=f"{self.marker}{slot.index}",
                device=slot.device))
            self._agents.append(Agent(slot, run))
            self.say(f"agent {slot.index} on {slot.device} started (pid {run.pid}, "
                     f"log {run.log})")

    def _wait(self, launcher: Launcher) -> bool:
        """Until every agent has ended; True when --timeout stopped them."""
        stopper = Stopper(launcher, self.timeout, self.kill_grace)
        stopping = False
        while True:
            now = time.time()
            if self._signal is not None and not stopping:
                stopping = True
                self.say("stopping the agents (SIGTERM; their runs end as failed on W&B)")
                for agent in self._agents:
                    stopper.stop(agent.run, "stopped")
            live = [a for a in self._agents if a.code is None]
            for agent in live:
                stopper.enforce(agent.run, now)
                self._show_log(agent)
                code = launcher.reap(agent.run)
                if code is not None:
                    agent.code = code
                    self._show_log(agent)
                    self._report_end(agent)
            if all(a.code is not None for a in self._agents):
                return any(a.run.timed_out for a in self._agents)
            launcher.wait_any(TICK)

    def _show_log(self, agent: Agent) -> None:
        try:
            with open(agent.run.log, "rb") as fh:
                fh.seek(agent.log_offset)
                chunk = fh.read()
        except OSError:
            return
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        agent.log_offset += end + 1
        for line in chunk[: end + 1].decode(errors="replace").splitlines():
            if SHOWN.search(line):
                self.say(f"agent {agent.slot.index}: {line.strip()}")

    def _report_end(self, agent: Agent) -> None:
        code = agent.code
        if agent.run.timed_out:
            self.say(f"agent {agent.slot.index} stopped by --timeout")
        elif code == 0 or self._signal is not None:
            self.say(f"agent {agent.slot.index} ended (exit {code})")
        else:
            tail = agent.run.log.read_text(errors="replace")[-4000:]
            hint = (" — W&B is not reachable from here (no network?)" if looks_offline(tail)
                    else "")
            self.say(f"agent {agent.slot.index} failed (exit {code}){hint}; see {agent.run.log}")
