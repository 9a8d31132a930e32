"""Dropout with torch's own masks, drawn faster on the CPU.

torch draws a CPU dropout mask one element at a time: `bernoulli_(1 - p)` takes two 32-bit
Mersenne Twister numbers from the generator per element (7 ns an element on an AVX2 core, about
a tenth of a baseline training step). `dropout.c` draws the very same numbers from the very same
generator state, a whole state at a time in loops the compiler vectorizes (1.3 ns an element),
and hands the state back where bernoulli_ would have left it: the masks, the generator's later
draws and so the losses are bit for bit torch's. The kernel is built with the machine's C
compiler on first use (cached in ~/.cache/orch/kernels) and compared with `F.dropout` before it
is trusted; without a compiler, or if the comparison fails (another torch's generator layout),
dropout is `F.dropout` itself.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

SOURCE = Path(__file__).with_name("dropout.c")
FLAGS = ("-O3", "-shared", "-fPIC")
COMPILED = "compiled kernel for float32 (torch's masks)"
STATE_WORDS = 624  # MT19937's state, as torch's at::mt19937 holds it
N_AFTER = 2 * STATE_WORDS + 1  # draws after each checked call: odd, and past the next twist

# torch's saved CPU generator state (CPUGeneratorImplState, 5056 bytes): the legacy header,
# the 624 state words as 64-bit integers, then cached normal samples this module never touches.
# `left` counts down to 1, when the next draw twists the state first; `next` is the word it reads.
GENERATOR_STATE = np.dtype([("seed", "<i8"), ("left", "<i4"), ("seeded", "<i4"), ("next", "<u8"),
                            ("words", "<u8", (STATE_WORDS,)), ("normal", "V40")])


@dataclass(frozen=True)
class Masks:
    """Where dropout masks come from in this process: `draw` is the compiled kernel, or None
    when dropout is `F.dropout` (then `why` says why)."""

    draw: Callable[..., None] | None
    why: str = ""

    def describe(self) -> str:
        """One line for the run's device info."""
        return COMPILED if self.draw else f"torch ({self.why})"

    def noise(self, shape: torch.Size, p: float) -> Tensor:
        """The float tensor F.dropout multiplies by: 0 where dropped, 1 / (1 - p) where kept,
        drawn from the default CPU generator, which it leaves as bernoulli_ would."""
        keep = 1.0 - p
        out = torch.empty(shape, dtype=torch.float32, device="cpu")
        state = torch.get_rng_state()
        s = state.numpy().view(GENERATOR_STATE)  # one record, in the tensor's own memory
        position = np.array([STATE_WORDS if s["left"][0] == 1 else s["next"][0]], np.int64)
        # u < keep, u = m / 2**53 with m an integer, holds exactly when m < ceil(keep * 2**53).
        below = math.ceil(keep * 2.0**53)
        # The float that torch's noise.div_(1 - p) makes of a kept element.
        scale = torch.ones((), dtype=torch.float32, device="cpu").div_(keep).item()
        self.draw(s["words"][0].ctypes.data, position.ctypes.data, out.numel(), below, scale,
                  out.data_ptr())
        if out.numel():
            s["next"], s["left"] = position[0], STATE_WORDS + 1 - position[0]
        torch.set_rng_state(state)
        return out


def dropout(x: Tensor, p: float, training: bool = True, masks: Masks | None = None) -> Tensor:
    """`F.dropout(x, p, training)`, the same result and the same generator state after; with
    the compiled masks for float32 CPU tensors (`masks`: the process's own by default)."""
    if (not training or not 0.0 < p < 1.0 or x.device.type != "cpu" or x.dtype != torch.float32
            or torch.compiler.is_compiling()):  # torch.compile draws its own masks in its graph
        return F.dropout(x, p, training)
    masks = masks or compiled_masks()
    if masks.draw is None:
        return F.dropout(x, p, training)
    return x * masks.noise(x.shape, p)


class Dropout(nn.Dropout):
    """`nn.Dropout` drawing its masks with `dropout`."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)


@functools.cache
def compiled_masks() -> Masks:
    """The process's masks: built, loaded and checked against F.dropout once."""
    size = torch.get_rng_state().numel()
    if size != GENERATOR_STATE.itemsize:
        return Masks(None, f"this torch saves a {size}-byte generator state, not "
                           f"{GENERATOR_STATE.itemsize}")
    try:
        masks = Masks(_load(build(SOURCE)))
    except BuildError as err:
        return Masks(None, str(err))
    if not agrees(masks):
        return Masks(None, "the compiled masks differ from this torch's")
    return masks


def agrees(masks: Masks) -> bool:
    """Whether `masks` gives F.dropout's outputs and leaves the default generator as it does,
    over calls that start on even and odd words and cross the state's twists. The caller's
    generator state is kept."""
    sizes = (1, 5, 311, 623, 3001, 2)

    def run(drop) -> list[Tensor]:
        torch.manual_seed(1337)
        out = []
        for i, n in enumerate(sizes):
            x = torch.ones(n, dtype=torch.float32, device="cpu")
            out.append(drop(x, 0.1 if i % 2 else 0.5))
            # An odd number of words, past a twist: the next call starts on the other parity,
            # and a state handed back one word off would twist at another time.
            out.append(torch.rand(N_AFTER, device="cpu"))
        return out

    with torch.random.fork_rng(devices=[]):
        theirs = run(F.dropout)
        try:
            ours = run(lambda x, p: dropout(x, p, masks=masks))
        except RuntimeError:  # torch refused the state handed back
            return False
    return all(torch.equal(a, b) for a, b in zip(theirs, ours))


class BuildError(Exception):
    """The kernel could not be built or loaded here."""


def build(source: Path) -> Path:
    """The shared library of `source`, compiled with $CC (or cc) into the cache on first use;
    concurrent builders each write their own file and rename it into place."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise BuildError(f"no C compiler: {cc} not found")
    key = hashlib.sha256(source.read_bytes())
    key.update(" ".join((cc, *FLAGS, platform.machine(), platform.system())).encode())
    lib = cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if lib.exists():
        return lib
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        out = Path(tmp) / lib.name
        try:
            subprocess.run([cc, *FLAGS, str(source), "-o", str(out)], check=True,
                           capture_output=True, text=True, timeout=120)
        except subprocess.CalledProcessError as err:
            first = (err.stderr.strip().splitlines() or ["no message"])[0]
            raise BuildError(f"{cc} failed: {first}") from err
        except (OSError, subprocess.TimeoutExpired) as err:
            raise BuildError(f"{cc} failed: {err}") from err
        os.replace(out, lib)
    return lib


def cache_dir() -> Path:
    """~/.cache/orch/kernels (or under $XDG_CACHE_HOME); a private temp folder where that is
    not writable."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    for folder in (home / "orch" / "kernels",
                   Path(tempfile.gettempdir()) / f"orch-kernels-{os.getuid()}"):
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Only a folder of this user's that nobody else can write: what is loaded from it
            # runs in this process.
            info = folder.stat()
            private = info.st_uid == os.getuid() and not info.st_mode & 0o022
            if private and os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    raise BuildError("no writable cache folder for the kernel")


def _load(lib: Path) -> Callable[..., None]:
    try:
        draw = ctypes.CDLL(str(lib)).dropout_noise
    except (OSError, AttributeError) as err:
        raise BuildError(f"could not load {lib.name}: {err}") from err
    draw.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64,
                     ctypes.c_float, ctypes.c_void_p]
    draw.restype = None
    return draw
