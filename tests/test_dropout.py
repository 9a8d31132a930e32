"""trainer.dropout: torch's own dropout masks from a compiled kernel, or F.dropout itself."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from orch_helpers import unavailable

from trainer import dropout as drop


@pytest.fixture(scope="module")
def compiler() -> str:
    """The C compiler the kernel is built with: skip without one, but fail in CI, whose
    machines have gcc."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        unavailable("no C compiler on this machine", "CI machines have gcc")
    return cc


@pytest.fixture(scope="module")
def masks(compiler: str) -> drop.Masks:
    found = drop.compiled_masks()
    assert found.draw is not None, found.why  # a compiler is here: the kernel must be used
    return found


def test_the_kernel_is_built_and_trusted_where_there_is_a_compiler(masks: drop.Masks) -> None:
    assert masks.describe() == drop.COMPILED
    assert drop.agrees(masks)


@pytest.mark.parametrize("shape", [(7,), (3, 5), (625,), (4, 2, 33, 33)])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("drawn_before", [0, 1, 623, 624, 1250])
def test_masks_outputs_gradients_and_later_draws_are_torchs(
        masks: drop.Masks, shape: tuple[int, ...], p: float, drawn_before: int) -> None:
    """From every position of the generator's state (even and odd words, right before and
    after a twist), ours and F.dropout give the same output, the same gradient and leave the
    generator where the next draws are the same."""

    def run(dropout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        torch.manual_seed(1337)
        torch.rand(drawn_before)  # one 32-bit word each: moves the state's position
        x = torch.randn(shape, requires_grad=True)
        y = dropout(x, p)
        (grad,) = torch.autograd.grad((y * torch.arange(y.numel()).view(shape)).sum(), x)
        return y, grad, torch.rand(drop.N_AFTER)  # past the next twist: a state handed back
        # a word off (or twisted at another time) makes these differ

    theirs = run(F.dropout)
    ours = run(lambda x, q: drop.dropout(x, q, masks=masks))
    assert all(torch.equal(a, b) for a, b in zip(theirs, ours))
    assert 0 < int((ours[0] == 0).sum()) < ours[0].numel() or ours[0].numel() < 20


def test_without_the_kernel_dropout_is_torchs_own() -> None:
    none = drop.Masks(None, "no C compiler: nocc not found")
    x = torch.randn(64, 64)
    torch.manual_seed(3)
    theirs = F.dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(drop.dropout(x, 0.2, masks=none), theirs)
    assert none.describe() == "torch (no C compiler: nocc not found)"


def test_eval_p0_and_other_dtypes_take_torchs_path(masks: drop.Masks) -> None:
    x = torch.randn(10, 10)
    state = torch.get_rng_state()
    assert drop.dropout(x, 0.5, training=False, masks=masks) is x
    assert torch.equal(drop.dropout(x, 0.0, masks=masks), x)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn
    h = x.bfloat16()
    torch.manual_seed(5)
    theirs = F.dropout(h, 0.3)
    torch.manual_seed(5)
    assert torch.equal(drop.dropout(h, 0.3, masks=masks), theirs)


def test_a_kernel_that_draws_otherwise_is_not_trusted() -> None:
    """The check before trusting the kernel can fail: a draw that leaves the generator where
    it was (and the noise unset) is refused."""
    assert not drop.agrees(drop.Masks(lambda *args: None))


def test_dropout_module_keeps_nn_dropouts_interface(masks: drop.Masks) -> None:
    layer = drop.Dropout(0.25)
    x = torch.randn(8, 16)
    torch.manual_seed(9)
    theirs = torch.nn.Dropout(0.25)(x)
    torch.manual_seed(9)
    assert torch.equal(layer(x), theirs)
    assert torch.equal(layer.eval()(x), x) and repr(layer) == "Dropout(p=0.25, inplace=False)"


def test_build_caches_the_library_and_says_why_it_fails(compiler: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lib = drop.build(drop.SOURCE)
    assert lib.parent == tmp_path / "orch" / "kernels" and lib.suffix == ".so"
    built = lib.stat().st_mtime_ns
    assert drop.build(drop.SOURCE) == lib and lib.stat().st_mtime_ns == built  # not rebuilt
    assert [p.name for p in lib.parent.iterdir()] == [lib.name]  # no build folder left behind

    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    with pytest.raises(drop.BuildError, match=r"^cc failed: .*broken\.c"):
        drop.build(broken)
    monkeypatch.setenv("CC", "no-such-cc")
    with pytest.raises(drop.BuildError, match="no C compiler: no-such-cc not found"):
        drop.build(drop.SOURCE)


def test_under_torch_compile_dropout_traces_into_the_graph(masks: drop.Masks) -> None:
    """torch.compile draws masks its own way: our layer must not break its graph."""
    layer = drop.Dropout(0.5)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)  # fails on a graph break
    y = compiled(torch.ones(100))
    assert set(y.unique().tolist()) == {0.0, 2.0}


def test_a_kernel_folder_others_can_write_is_not_used(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    shared = tmp_path / "orch" / "kernels"
    shared.mkdir(parents=True)
    shared.chmod(0o777)
    assert drop.cache_dir() != shared
