"""The float precision a run computes in: `train.precision`, with `auto` resolved per device.

bf16 and fp16 pay only where the device computes them natively: CUDA GPUs that support bf16
(Ampere and later), CPUs with AVX512-BF16 or AMX-BF16. Elsewhere torch emulates them, and an
AVX2-only CPU runs a bf16 step more than 20x slower than fp32. So `auto` picks bf16 where it is
native and fp32 otherwise, and an explicit bf16 or fp16 on a device that emulates it still runs
as asked, with one warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

# /proc/cpuinfo flags that mean native arithmetic in that format (x86; `bf16`/`asimdhp` on ARM).
CPU_NATIVE_FLAGS = {"bf16": {"avx512_bf16", "amx_bf16", "bf16"},
                    "fp16": {"avx512_fp16", "amx_fp16", "asimdhp"}}


@dataclass(frozen=True)
class Device:
    """What matters of a device for its precision: its name and its native low precisions."""

    name: str
    native: frozenset[str]  # a subset of {"bf16", "fp16"}


def resolve(asked: str, device: Device) -> tuple[str, str | None]:
    """(the precision to use, a warning or None) for `train.precision=asked` on `device`."""
    if asked == "auto":
        return ("bf16" if "bf16" in device.native else "fp32"), None
    if asked in ("bf16", "fp16") and asked not in device.native:
        return asked, (f"train.precision={asked} on {device.name}, which emulates {asked}: "
                       "steps can be many times slower than fp32; train.precision=auto uses "
                       f"{'bf16' if 'bf16' in device.native else 'fp32'} here")
    return asked, None


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo; empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_native(flags: set[str]) -> frozenset[str]:
    """The low precisions a CPU with these /proc/cpuinfo flags computes natively."""
    return frozenset(p for p, names in CPU_NATIVE_FLAGS.items() if flags & names)


# /proc/cpuinfo flags worth naming beside a CPU timing: the vector width and the matrix units.
CPU_FEATURES = {"AVX2": "avx2", "AVX-512": "avx512f", "AVX512-BF16": "avx512_bf16",
                "AMX-BF16": "amx_bf16"}


def cpu_features() -> str:
    """One line for beside a CPU timing: torch's kernel capability, then which of the features
    that decide fp32/bf16 speed the CPU has (from /proc/cpuinfo; omitted where there is none),
    e.g. `torch AVX2; AVX2 yes, AVX-512 no, AVX512-BF16 no, AMX-BF16 no; bf16 emulated`."""
    line = f"torch {torch.backends.cpu.get_cpu_capability()}"
    flags = cpu_flags()
    if flags:
        have = ", ".join(f"{name} {'yes' if flag in flags else 'no'}"
                         for name, flag in CPU_FEATURES.items())
        native = "native" if "bf16" in cpu_native(flags) else "emulated"
        line += f"; {have}; bf16 {native}"
    return line


def probe(device: torch.device) -> Device:
    """The precision-relevant facts of a torch device."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        # fp16 is native on every CUDA GPU torch supports; bf16 from Ampere on.
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return Device(name, frozenset({"fp16", "bf16"} if bf16 else {"fp16"}))
    flags = cpu_flags()
    native = set(cpu_native(flags))
    if not flags:  # no /proc/cpuinfo (macOS, Windows): ask torch's own CPU probe
        cpu = torch.cpu
        if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
                cpu, "_is_amx_tile_supported", lambda: False)():
            native.add("bf16")
    capability = torch.backends.cpu.get_cpu_capability()
    return Device(f"a CPU ({capability})", frozenset(native))
