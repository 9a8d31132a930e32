"""Attention variants: fast paths equal the dense-mask reference; causal; nothing allowed dropped."""

from __future__ import annotations

import copy

import pytest
import torch

from trainer import attention, sparse
from trainer.attention import SelfAttention
from trainer.attention_config import CausalAttention, LocalAttention, SparseAttention
from trainer.config import ConfigError, build_config

# (config, n_head, context_length): small shapes that still cross chunk and block boundaries.
VARIANTS = [
    (CausalAttention(), 2, 24),
    (CausalAttention(qk_dim=8), 2, 24),
    (LocalAttention(window=1), 2, 24),
    (LocalAttention(window=3), 2, 24),
    (LocalAttention(window=8, qk_dim=8), 4, 24),
    (SparseAttention(pattern="strided", local_attn_ctx=4), 2, 24),
    (SparseAttention(pattern="strided", local_attn_ctx=5, qk_dim=8), 4, 24),
    (SparseAttention(pattern="fixed", block=2, local_attn_ctx=8), 2, 24),
    (SparseAttention(pattern="fixed", block=2, local_attn_ctx=8, num_verts=2, vertsize=2), 4, 24),
    (SparseAttention(pattern="fixed", block=1, local_attn_ctx=4, num_verts=4, vertsize=1), 4, 24),
    (SparseAttention(pattern="fixed", block=4, local_attn_ctx=8, num_verts=2, qk_dim=8), 2, 24),
]
IDS = [f"{c.type}-{getattr(c, 'pattern', '')}-{i}" for i, (c, _, _) in enumerate(VARIANTS)]
D_MODEL = 16


def layer(cfg, n_head: int, ctx: int, rotary: bool = False, dropout: float = 0.0) -> SelfAttention:
    torch.manual_seed(0)
    cfg.check(n_head=n_head, context_length=ctx, d_model=D_MODEL)
    return SelfAttention(cfg, D_MODEL, n_head, dropout, bias=True, rotary=rotary,
                         context_length=ctx)


def run(m: SelfAttention, x: torch.Tensor, g: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    m.zero_grad()
    y = m(x)
    y.backward(g)
    return y, x.grad, m.qkv.weight.grad.clone()


@pytest.mark.parametrize("cfg,n_head,ctx", VARIANTS, ids=IDS)
# bf16: against a float64 run of the same weights, both paths' qkv weight gradients (sums over
# every position) are off by up to ~0.03, so they may differ from each other by a bit more.
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 4e-2)])
def test_fast_path_equals_reference(cfg, n_head, ctx, dtype, tol):
    fast = layer(cfg, n_head, ctx, rotary=True).to(dtype)
    ref = copy.deepcopy(fast)
    ref.impl = "reference"
    for T in (1, 7, 16, ctx):
        x = torch.randn(3, T, D_MODEL, dtype=dtype)
        g = torch.randn(3, T, D_MODEL, dtype=dtype)
        for a, b in zip(run(fast, x, g), run(ref, x, g)):
            torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("T", [1, 9, 24, 40])
def test_matmul_path_equals_reference(T):
    """The kernels' dropout path (matmuls, joint softmax) at p=0 equals the reference."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4, T, 8, requires_grad=True) for _ in range(3))
    cases = [
        (LocalAttention(window=5), lambda f: sparse.local_attention(q, k, v, 5, 0.3, flash=f)),
        (SparseAttention(block=2, local_attn_ctx=8, num_verts=2, vertsize=2),
         lambda f: sparse.fixed_attention(q, k, v, 2, 8, 2, 2, 0.3, flash=f)),
    ]
    for cfg, fn in cases:
        ref = sparse.reference_attention(q, k, v, sparse.pattern_mask(cfg, 4, T), scale=0.3)
        g = torch.randn_like(ref)
        want = torch.autograd.grad(ref, (q, k, v), g)
        for flash in (True, False):
            y = fn(flash)
            torch.testing.assert_close(y, ref, atol=2e-5, rtol=2e-5)
            for a, b in zip(torch.autograd.grad(y, (q, k, v), g), want):
                torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("pieces", [1, 2, 3, 7, 9])
@pytest.mark.parametrize("flash", [True, False])
def test_band_pieces_cover_the_window_exactly(pieces, flash, monkeypatch):
    """Cutting each chunk's keys into pieces (uneven ones included) changes only the work done."""
    monkeypatch.setattr(sparse, "PIECES", pieces)
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 3, 30, 8, requires_grad=True) for _ in range(3))
    ref = sparse.reference_attention(q, k, v, sparse.pattern_mask(LocalAttention(window=7), 3, 30),
                                     scale=0.3)
    g = torch.randn_like(ref)
    y = sparse.local_attention(q, k, v, 7, 0.3, flash=flash)
    torch.testing.assert_close(y, ref, atol=2e-5, rtol=2e-5)
    for a, b in zip(torch.autograd.grad(y, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("cfg,n_head,ctx", VARIANTS, ids=IDS)
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_causal(cfg, n_head, ctx, dropout):
    """d out[t] / d x[s] is exactly zero for every s > t, with and without attention dropout."""
    m = layer(cfg, n_head, ctx, rotary=True, dropout=dropout)
    m.train(dropout > 0)
    T = 19
    x = torch.randn(1, T, D_MODEL, requires_grad=True)
    torch.manual_seed(2)
    y = m(x)
    for t in range(T):
        (grad,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        assert torch.all(grad[0, t + 1:] == 0), f"output {t} depends on a later input"


@pytest.mark.parametrize("cfg,n_head,ctx", VARIANTS, ids=IDS)
def test_reachability(cfg, n_head, ctx):
    """Query i's output has a non-zero gradient in value j exactly where the pattern allows (h,i,j)."""
    m = layer(cfg, n_head, ctx)
    T = ctx
    torch.manual_seed(3)
    q, k = (torch.randn(1, n_head, T, m.qk_head_dim) for _ in range(2))
    v = torch.randn(1, n_head, T, m.head_dim, requires_grad=True)
    y = m.attend(q, k, v)
    mask = sparse.pattern_mask(cfg, n_head, T)
    for i in range(T):
        (grad,) = torch.autograd.grad(y[0, :, i].sum(), v, retain_graph=True)
        reached = grad[0].abs().sum(-1) != 0  # (heads, T)
        assert torch.equal(reached, mask[:, i]), f"query {i}: reached keys differ from the pattern"


def test_dropout_drops_weights_in_training():
    m = layer(SparseAttention(block=2, local_attn_ctx=8), 2, 24, dropout=0.5)
    x = torch.randn(2, 24, D_MODEL)
    m.eval()
    y_eval = m(x)
    m.train()
    assert not torch.allclose(m(x), y_eval)
    assert torch.equal(m.eval()(x), y_eval)


CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


@pytest.mark.parametrize("cfg,device,dropout,kernel", [
    (CausalAttention(), CUDA, 0.0, "_causal"),
    (LocalAttention(window=4), CPU, 0.0, "_local"),
    (LocalAttention(window=4), CUDA, 0.0, "_flex"),
    (LocalAttention(window=4), CUDA, 0.1, "_local"),  # FlexAttention cannot drop weights
    (SparseAttention(pattern="strided", local_attn_ctx=4), CPU, 0.0, "_strided"),
    (SparseAttention(pattern="fixed", block=2, local_attn_ctx=8), CPU, 0.1, "_fixed"),
    (SparseAttention(pattern="fixed", block=2, local_attn_ctx=8), CUDA, 0.0, "_flex"),
    (CausalAttention(doc_mask=True), CPU, 0.0, "_doc_blocked"),
    (LocalAttention(window=4, doc_mask=True), CUDA, 0.0, "_doc_flex"),
    (LocalAttention(window=4, doc_mask=True), CUDA, 0.1, "_doc_blocked"),
])
def test_kernel_dispatch_follows_its_rules(cfg, device, dropout, kernel):
    """`kernel` picks by config, device and dropout as its docstring lists; reference overrides."""
    m = layer(cfg, 2, 24, dropout=dropout)
    assert m.kernel(device, dropout).__name__ == kernel
    m.impl = "reference"
    assert m.kernel(device, dropout).__name__ == "_reference"


def test_strided_heads_split_in_halves():
    mask = sparse.pattern_mask(SparseAttention(pattern="strided", local_attn_ctx=4), 4, 12)
    i = 11
    assert mask[0, i].nonzero().flatten().tolist() == [8, 9, 10, 11]  # local heads
    assert mask[2, i].nonzero().flatten().tolist() == [3, 7, 11]      # strided heads


def test_fixed_summary_blocks_follow_openai_layout():
    # L=8, block=2: s=4 blocks per chunk; num_verts=2, vertsize=1: head 0 sums block 3, head 1 block 2.
    cfg = SparseAttention(block=2, local_attn_ctx=8, num_verts=2, vertsize=1)
    mask = sparse.pattern_mask(cfg, 2, 16)
    assert mask[0, 15, :8].nonzero().flatten().tolist() == [6, 7]
    assert mask[1, 15, :8].nonzero().flatten().tolist() == [4, 5]
    assert mask[:, 15, 8:].all()


@pytest.mark.parametrize("cfg,n_head,ctx", VARIANTS, ids=IDS)
def test_flex_mask_mod_equals_reference(cfg, n_head, ctx):
    i = torch.arange(ctx)[None, :, None]
    j = torch.arange(ctx)[None, None, :]
    h = torch.arange(n_head)[:, None, None]
    got = sparse.mask_mod(cfg, n_head)(0, h, i, j).expand(n_head, ctx, ctx)
    assert torch.equal(got, sparse.pattern_mask(cfg, n_head, ctx))


@pytest.mark.parametrize("attention,model,needles", [
    ({"type": "sparse", "block": 24, "local_attn_ctx": 64}, {},
     ["attention.local_attn_ctx (64)", "attention.block (24)"]),
    ({"type": "sparse", "block": 16, "local_attn_ctx": 64, "vertsize": 3}, {},
     ["attention.vertsize (3)"]),
    ({"type": "sparse", "block": 16, "local_attn_ctx": 64, "num_verts": 8}, {"n_head": 8},
     ["attention.num_verts * attention.vertsize"]),
    ({"type": "sparse", "block": 16, "local_attn_ctx": 64, "num_verts": 3}, {"n_head": 8},
     ["model.n_head (8)", "attention.num_verts (3)"]),
    ({"type": "sparse", "local_attn_ctx": 96}, {}, ["train.context_length (128)"]),
    ({"type": "sparse", "pattern": "strided"}, {"n_head": 3, "d_model": 96}, ["model.n_head (3)"]),
    ({"type": "sparse", "pattern": "strided", "local_attn_ctx": 16, "num_verts": 2, "block": 8},
     {}, ["attention.block (8)", "attention.num_verts (2)", "pattern=fixed"]),
    ({"type": "local", "qk_dim": 20}, {}, ["attention.qk_dim (20)", "2 * model.n_head"]),
    ({"type": "causal", "qk_dim": 1024}, {}, ["attention.qk_dim (1024)", "model.d_model"]),
    ({"type": "local", "windw": 3}, {}, ["attention.windw", "unknown field"]),
])
def test_constraint_errors_name_the_parameters(attention, model, needles):
    with pytest.raises(ConfigError) as err:
        build_config({"attention": attention, "model": model})
    for needle in needles:
        assert needle in str(err.value)


def test_valid_configs_pass():
    cfg = build_config({"attention": {"type": "sparse", "block": 16, "local_attn_ctx": 64,
                                      "num_verts": 2, "vertsize": 2}})
    assert isinstance(cfg.attention, SparseAttention)


def test_attention_mask_command_draws_png(tmp_path):
    pytest.importorskip("matplotlib")
    from trainer.maskplot import draw_mask

    cfg = build_config({"attention": {"type": "sparse", "block": 8, "local_attn_ctx": 32,
                                      "num_verts": 2}, "model": {"n_head": 4, "d_model": 64}})
    out = tmp_path / "mask.png"
    draw_mask(cfg, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- title-boundary mask (attention.doc_mask) ---------------------------------------------------

from trainer import segments  # noqa: E402

EOS = 0


def doc_ids(B: int, T: int, seed: int = 4) -> torch.Tensor:
    """Token ids whose rows cover the edge cases: titles of random lengths, `<eos>` first and
    last, two `<eos>` in a row, and a row with no `<eos>` at all (one title fills it)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 6, (B, T), generator=g)
    ids[ids == 5] = EOS
    ids[0, 0] = ids[0, -1] = EOS
    if T > 3:
        ids[0, 2] = ids[0, 3] = EOS
    if B > 1:
        ids[-1] = 1
    return ids


def doc_layer(cfg, n_head: int, ctx: int, **kw) -> SelfAttention:
    return layer(cfg.model_copy(update={"doc_mask": True}), n_head, ctx, **kw)


def test_segments_put_eos_in_the_title_it_closes():
    ids = torch.tensor([[7, 8, EOS, 9, EOS, EOS, 3, 4]])
    assert segments.segment_ids(ids, EOS).tolist() == [[0, 0, 0, 1, 1, 2, 3, 3]]
    assert segments.Segments.from_tokens(ids, EOS).longest() == 3


@pytest.mark.parametrize("cfg,n_head,ctx", VARIANTS, ids=IDS)
def test_doc_fast_path_equals_reference(cfg, n_head, ctx):
    """Fast path (the chunked kernel) == dense reference (pattern AND same title), values and
    gradients, also through the dropout (matmul) path at p=0."""
    fast = doc_layer(cfg, n_head, ctx, rotary=True)
    ref = copy.deepcopy(fast)
    ref.impl = "reference"
    for T in (7, 16, ctx):
        ids = doc_ids(3, T)
        x = torch.randn(3, T, D_MODEL)
        g = torch.randn(3, T, D_MODEL)
        want = run_doc(ref, x, g, ids)
        for a, b in zip(run_doc(fast, x, g, ids), want):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
    q, k, v = (torch.randn(2, n_head, ctx, 8) for _ in range(3))
    seg = segments.Segments.from_tokens(doc_ids(2, ctx), EOS)
    want = sparse.reference_attention(q, k, v, segments.reference_mask(fast.cfg, n_head, seg.ids),
                                      scale=0.3)
    for flash in (True, False):
        got = segments.segment_attention(q, k, v, fast.cfg, seg, 0.3, flash=flash)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def run_doc(m: SelfAttention, x: torch.Tensor, g: torch.Tensor, ids: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    m.zero_grad()
    y = m(x, segments.Segments.from_tokens(ids, EOS))
    y.backward(g)
    return y, x.grad, m.qkv.weight.grad.clone()


@pytest.mark.parametrize("cfg,n_head,ctx", VARIANTS, ids=IDS)
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_doc_mask_isolates_titles(cfg, n_head, ctx, dropout):
    """d out[t] / d x[s] is exactly zero for every s in another title or after t."""
    m = doc_layer(cfg, n_head, ctx, rotary=True, dropout=dropout)
    m.train(dropout > 0)
    T = 19
    ids = doc_ids(1, T)
    seg = segments.segment_ids(ids, EOS)[0]
    x = torch.randn(1, T, D_MODEL, requires_grad=True)
    torch.manual_seed(2)
    y = m(x, segments.Segments.from_tokens(ids, EOS))
    for t in range(T):
        (grad,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        outside = (seg != seg[t]) | (torch.arange(T) > t)
        assert torch.all(grad[0, outside] == 0), f"output {t} depends on another title"


@pytest.mark.parametrize("cfg,n_head,ctx", VARIANTS, ids=IDS)
def test_doc_reachability(cfg, n_head, ctx):
    """Within its title, query i reaches exactly the keys the pattern allows."""
    m = doc_layer(cfg, n_head, ctx)
    T = ctx
    ids = doc_ids(2, T)
    seg = segments.Segments.from_tokens(ids, EOS)
    torch.manual_seed(3)
    q, k = (torch.randn(2, n_head, T, m.qk_head_dim) for _ in range(2))
    v = torch.randn(2, n_head, T, m.head_dim, requires_grad=True)
    y = m.attend(q, k, v, seg)
    mask = segments.reference_mask(m.cfg, n_head, seg.ids)
    assert torch.equal(mask, sparse.pattern_mask(cfg, n_head, T)[None]
                       & (seg.ids[:, None, :, None] == seg.ids[:, None, None, :]))
    for b in range(2):
        for i in range(T):
            (grad,) = torch.autograd.grad(y[b, :, i].sum(), v, retain_graph=True)
            reached = grad[b].abs().sum(-1) != 0
            assert torch.equal(reached, mask[b, :, i]), f"row {b} query {i}"


@pytest.mark.parametrize("cfg,n_head,ctx", VARIANTS[::3], ids=IDS[::3])
def test_doc_flex_block_mask_equals_reference(cfg, n_head, ctx):
    """The CUDA path's mask_mod, through create_block_mask (blocks of 8, so whole blocks are
    skipped) and eager FlexAttention on the CPU, equals the dense reference."""
    import warnings

    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    cfg = cfg.model_copy(update={"doc_mask": True})
    seg = segments.Segments.from_tokens(doc_ids(2, ctx), EOS).ids
    i = torch.arange(ctx)[None, None, :, None]
    j = torch.arange(ctx)[None, None, None, :]
    h = torch.arange(n_head)[None, :, None, None]
    b = torch.arange(2)[:, None, None, None]
    mask = segments.reference_mask(cfg, n_head, seg)
    assert torch.equal(segments.mask_mod(cfg, n_head, seg)(b, h, i, j).expand_as(mask), mask)
    block_mask = create_block_mask(segments.mask_mod(cfg, n_head, seg), B=2, H=n_head,
                                   Q_LEN=ctx, KV_LEN=ctx, device="cpu", BLOCK_SIZE=8)
    q, k, v = (torch.randn(2, n_head, ctx, 8) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = flex_attention(q, k, v, block_mask=block_mask, scale=0.3)
    torch.testing.assert_close(got, sparse.reference_attention(q, k, v, mask, scale=0.3),
                               atol=2e-5, rtol=2e-5)


def test_doc_mask_needs_segments():
    m = doc_layer(CausalAttention(), 2, 8)
    with pytest.raises(ValueError, match="segments"):
        m(torch.randn(1, 8, D_MODEL))


# --- on a GPU: benchmarks/gpu_check.sh runs these on CUDA (FlexAttention); `-k cpu` smoke-runs them

ON_DEVICE = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device (benchmarks/gpu_check.sh runs these)"))]
# One config per kernel: each FlexAttention block mask compiles, and the GPU check has minutes.
KERNEL_VARIANTS = [VARIANTS[i] for i in (1, 4, 6, 8, 9)]
KERNEL_IDS = [IDS[i] for i in (1, 4, 6, 8, 9)]


def run_on(m: SelfAttention, x: torch.Tensor, g: torch.Tensor, ids: torch.Tensor | None):
    x = x.detach().clone().requires_grad_(True)
    m.zero_grad()
    y = m(x, segments.Segments.from_tokens(ids, EOS) if ids is not None else None)
    y.backward(g)
    return y, x.grad, m.qkv.weight.grad.clone()


@pytest.mark.parametrize("device", ON_DEVICE)
@pytest.mark.parametrize("doc", [False, True], ids=["pattern", "doc"])
@pytest.mark.parametrize("cfg,n_head,ctx", KERNEL_VARIANTS, ids=KERNEL_IDS)
def test_on_device_fast_path_equals_reference(cfg, n_head, ctx, doc, device):
    """The kernel the device picks (FlexAttention on CUDA) equals the dense reference: values
    and gradients, fp32 and bf16, with and without the title mask."""
    cfg = cfg.model_copy(update={"doc_mask": doc})
    fp32_tol = 2e-5 if device == "cpu" else 1e-4  # GPU kernels sum in other orders
    for dtype, tol in ((torch.float32, fp32_tol), (torch.bfloat16, 4e-2)):
        fast = layer(cfg, n_head, ctx, rotary=True).to(device, dtype)
        ref = copy.deepcopy(fast)
        ref.impl = "reference"
        x, g = (torch.randn(3, ctx, D_MODEL, dtype=dtype).to(device) for _ in range(2))
        ids = doc_ids(3, ctx).to(device) if doc else None
        for a, b in zip(run_on(fast, x, g, ids), run_on(ref, x, g, ids)):
            torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("device", ON_DEVICE)
@pytest.mark.parametrize("doc", [False, True], ids=["pattern", "doc"])
@pytest.mark.parametrize("cfg,n_head,ctx", KERNEL_VARIANTS, ids=KERNEL_IDS)
def test_on_device_causal(cfg, n_head, ctx, doc, device):
    """d out[t] / d x[s] is exactly zero for every s after t (or in another title)."""
    m = layer(cfg.model_copy(update={"doc_mask": doc}), n_head, ctx, rotary=True).to(device)
    ids = doc_ids(1, ctx)
    seg = segments.segment_ids(ids, EOS)[0].to(device)
    x = torch.randn(1, ctx, D_MODEL, device=device, requires_grad=True)
    y = m(x, segments.Segments.from_tokens(ids.to(device), EOS) if doc else None)
    later = torch.arange(ctx, device=device)[None, :] > torch.arange(ctx, device=device)[:, None]
    for t in range(ctx):
        (grad,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        hidden = later[t] | (seg != seg[t]) if doc else later[t]
        assert torch.all(grad[0, hidden] == 0), f"output {t} sees a later input or another title"


def test_causal_on_a_cpu_is_the_challenges_arithmetic_up_to_its_lengths():
    m = layer(CausalAttention(), 2, 24, dropout=0.1)
    assert m.kernel(CPU, 0.1, 128).__name__ == "_scores"  # the baseline's context
    assert m.kernel(CPU, 0.0, attention.SCORES_MAX_T).__name__ == "_scores"
    assert m.kernel(CPU, 0.0, attention.SCORES_MAX_T + 1).__name__ == "_causal"  # O(T) memory
    assert m.kernel(CUDA, 0.1, 128).__name__ == "_causal"
