"""Where trials run: slots are GPUs x jobs_per_gpu, CPU shares, or places in a batch queue."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from orchestrator.spec.document import SpecDoc
from orchestrator.spec.model import Resources, SweepSpec


@dataclass
class Slot:
    """One place a trial can run: a GPU share or a CPU share."""

    index: int
    device: str
    env: dict[str, str]


def detect_gpus() -> list[int]:
    """GPU indices from nvidia-smi; none when it is missing or fails."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [int(x) for x in out.stdout.split() if x.strip().isdigit()]


def missing_gpus(spec: SweepSpec, doc: SpecDoc) -> tuple[list[str], list[str]]:
    """(problems, notes) of the GPUs a local sweep lists: each must be one nvidia-smi lists, or
    the trials would say cuda:N while running on the CPU. (Docker checks its engine's GPUs.)"""
    res = spec.resources
    if spec.launcher.type != "local" or not isinstance(res.gpus, list) or not res.gpus:
        return [], []
    found = detect_gpus()
    missing = [g for g in res.gpus if g not in found]
    if not missing:
        return [], []
    seen = f"nvidia-smi lists {', '.join(map(str, found))}" if found else \
        "nvidia-smi finds no usable GPU here"
    listed = ", ".join(map(str, missing))
    if res.cpu_fallback:
        left = [g for g in res.gpus if g in found]
        where = (f"GPU(s) {', '.join(map(str, left))}" if left
                 else f"the CPU ({res.cpu_slots} slot(s))")
        return [], [f"resources.gpus: GPU(s) {listed} not usable ({seen}); "
                    f"resources.cpu_fallback is true, so the trials run on {where}"]
    return [doc.error(("resources", "gpus"), f"GPU(s) {listed} asked for, but {seen}; list "
                      "only GPUs this machine has, set `resources.gpus: null` to run on the "
                      "CPU, or `resources.cpu_fallback: true` to use the CPU when the listed "
                      "GPUs are missing")], []


def make_slots(res: Resources, gpus_found: list[int] | None = None) -> list[Slot]:
    """GPUs x jobs_per_gpu (spread over GPUs first), else cpu_slots CPU slots.

    CPU threads are shared out so parallel trials do not oversubscribe the cores, unless the
    user already pinned OMP_NUM_THREADS.
    """
    if res.gpus == "all":
        gpus = detect_gpus() if gpus_found is None else gpus_found
    else:
        gpus = list(res.gpus or [])
        if gpus and res.cpu_fallback:  # only the usable ones; none left: the CPU
            found = detect_gpus() if gpus_found is None else gpus_found
            gpus = [g for g in gpus if g in found]
    if gpus:
        slots = [Slot(i, f"cuda:{g}", {"CUDA_VISIBLE_DEVICES": str(g)})
                 for i, g in enumerate(g for _ in range(res.jobs_per_gpu) for g in gpus)]
    else:
        slots = [Slot(i, "cpu", {"CUDA_VISIBLE_DEVICES": ""}) for i in range(res.cpu_slots)]
    threads = str(max(1, (os.cpu_count() or 1) // len(slots)))
    if "OMP_NUM_THREADS" not in os.environ:
        for s in slots:
            s.env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return slots


def queue_slots(n: int) -> list[Slot]:
    """Slots of a batch queue (Slurm): n jobs in flight; the queue, not orch, picks devices."""
    return [Slot(i, "slurm", {}) for i in range(n)]


def ran_on(reported: str, slot: Slot) -> str:
    """Where a trial runs, as its program reports it (`cpu`, `cuda`, `cuda:0`). A CUDA device
    under a GPU slot is named by the slot's GPU: the only one CUDA_VISIBLE_DEVICES let it see."""
    if reported.split(":")[0] == "cuda" and slot.device.startswith("cuda:"):
        return slot.device
    return reported


def sweep_slots(spec: SweepSpec) -> list[Slot]:
    """The slots a sweep gets: the queue's for Slurm, else this machine's."""
    if spec.launcher.type == "slurm":
        return queue_slots(spec.launcher.max_concurrent)
    return make_slots(spec.resources)
