"""The trainer contract, exercised through its real command line on the real titles."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer import dropout as drop
from trainer.config import ConfigError, load_config
from trainer.events import read_events

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "sweeps" / "base_tiny.yaml"


def trainer(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """Run `python -m trainer ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=240,
                          **kw)


def train_tiny(out: Path, titles: Path, cache: Path, *overrides: str, **kw):
    return trainer("--config", str(TINY), "--out", str(out), "--cache-dir", str(cache), "--quiet",
                   f"data.path={titles}", *overrides, **kw)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll until predicate() is true; fail after timeout (a deadline, not a synchronising sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- config ------------------------------------------------------------------------------------

def test_overrides_parse_as_yaml_scalars() -> None:
    cfg = load_config(TINY, ["optim.lr=3e-4", "train.compile=true", "optim.betas=[0.8, 0.9]"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.compile is True
    assert cfg.optim.betas == (0.8, 0.9)


@pytest.mark.parametrize("override, field", [
    ("model.n_heads=4", "model.n_heads"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.name=lion", "optim.name"),
    ("model.n_head=5", "model"),
    ("attention.type=dilated", "attention"),
    ("train.precision=fp8", "train.precision"),
])
def test_bad_config_exits_2_naming_the_field(tmp_path: Path, override: str, field: str) -> None:
    res = trainer("--config", str(TINY), "--out", str(tmp_path / "run"), override)
    assert res.returncode == 2
    assert f"`{field}" in res.stderr and str(TINY) in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1  # one paragraph
    assert not (tmp_path / "run").exists()  # nothing was started


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_base_config_is_the_challenge_baseline() -> None:
    cfg = load_config(ROOT / "sweeps" / "base.yaml")
    m, t, o = cfg.model, cfg.train, cfg.optim
    assert (m.d_model, m.n_layer, m.n_head, m.dropout) == (512, 6, 8, 0.1)
    assert (t.context_length, t.batch_size, t.epochs, t.seed) == (128, 64, 7, 1337)
    assert (o.name, o.lr, o.weight_decay, o.grad_clip) == ("sgd", 6e-3, 0.0, 1.0)
    assert cfg.schedule.name == "cosine" and cfg.tokenizer.vocab_size == 16000
    assert (cfg.data.num_titles, cfg.data.seed, cfg.data.val_frac) == (100_000, 1337, 0.1)


def test_schema_command_prints_the_config_schema() -> None:
    res = trainer("schema")
    schema = json.loads(res.stdout)
    assert set(schema["properties"]) >= {"data", "tokenizer", "model", "attention", "optim",
                                         "schedule", "train", "eval", "tracking"}


def test_validate_batch_gives_one_verdict_per_point() -> None:
    points = [{"optim.lr": 0.01}, {"model.n_head": 3}, {"model.n_heads": 2}]
    res = trainer("validate", "--config", str(TINY), "--batch",
                  input="\n".join(json.dumps(p) for p in points))
    verdicts = [json.loads(line) for line in res.stdout.splitlines()]
    assert [v["ok"] for v in verdicts] == [True, False, False]
    assert "n_head" in verdicts[1]["error"] and "n_heads" in verdicts[2]["error"]


def _imported(calls: str, roots: tuple[str, ...], stdin: str = "") -> list[str]:
    """The modules under `roots` that importing the trainer and running `calls` (lines of
    `main([...])`, output captured as `out`) left loaded."""
    script = ("import contextlib, io, sys\n"
              "from trainer.__main__ import main\n"
              f"sys.stdin = io.StringIO({stdin!r})\n"
              "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
              + "".join(f"    {line}\n" for line in calls.strip().splitlines())
              + f"print(sorted(m for m in sys.modules if m.split('.')[0] in {roots!r}))\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_contract_commands_import_no_torch() -> None:
    # schema/validate/docs run on every `orch validate`; a torch import would cost seconds.
    sparse_point = json.dumps({"attention.type": "sparse", "attention.block": 48})
    assert _imported(f"""
main(['schema']); main(['docs']); main(['validate', '--config', {str(TINY)!r}])
main(['validate', '--config', {str(TINY)!r}, '--batch'])
assert 'local_attn_ctx' in out.getvalue(), out.getvalue()
""", ("torch", "numpy"), stdin=sparse_point + "\n") == []


def test_a_data_file_is_checked_and_prepared_without_torch(tmp_path: Path,
                                                            tiny_titles: Path) -> None:
    # `orch sweep` validates the points and prepares the data before any trial: seconds each
    # if they imported torch only to read a CSV.
    args = f"'--config', {str(TINY)!r}, 'data.path={tiny_titles}'"
    assert _imported(f"""
main(['validate', {args}])
main(['prepare', '--cache-dir', {str(tmp_path / 'cache')!r}, {args}])
assert '"cache_hit": false' in out.getvalue(), out.getvalue()
""", ("torch",)) == []
    assert list((tmp_path / "cache").iterdir())  # the entry a run then reads


# --- runs --------------------------------------------------------------------------------------

def test_a_run_writes_events_and_an_honest_result(tmp_path: Path, tiny_titles: Path) -> None:
    res = train_tiny(tmp_path / "run", tiny_titles, tmp_path / "cache")
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "finished" and result["exit_code"] == 0
    assert result["steps"] == result["max_steps"] > 0
    for key in ("val_loss", "val_loss_tok", "val_bpb", "val_coverage"):
        assert result["final"][key] is not None and result["best"][key] is not None
    assert result["best"]["val_loss"] <= result["final"]["val_loss"]
    assert result["tokens_per_s"] > 0 and result["parameters"] > 0
    names = [e["event"] for e in read_events(tmp_path / "run" / "events.jsonl")]
    for name in ("hyperparameters_configured", "device_info", "dataset_info", "model_configured",
                 "model_info", "training_step", "validation_step", "run_finished"):
        assert name in names
    evals = [e for e in read_events(tmp_path / "run" / "events.jsonl")
             if e["event"] == "validation_step"]
    # The challenge's schedule: step 1, every batches // evals_per_epoch steps, and the end.
    assert evals[0]["step"] == 1 and evals[-1]["step"] == result["max_steps"]


def test_same_config_and_seed_give_identical_losses(tmp_path: Path, tiny_titles: Path) -> None:
    runs = []
    for name in ("a", "b"):
        assert train_tiny(tmp_path / name, tiny_titles, tmp_path / "cache",
                          "model.dropout=0.1").returncode == 0
        runs.append([e["loss"] for e in read_events(tmp_path / name / "events.jsonl")
                     if e["event"] == "training_step"])
    assert runs[0] == runs[1] and len(runs[0]) > 10


def test_a_huge_learning_rate_diverges(tmp_path: Path, tiny_titles: Path) -> None:
    res = train_tiny(tmp_path / "run", tiny_titles, tmp_path / "cache", "optim.name=sgd",
                     "optim.lr=1e12", "optim.grad_clip=null")
    assert res.returncode == 3
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "diverged" and "step" in result["reason"]


def test_bad_data_file_fails_cleanly(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    res = train_tiny(tmp_path / "run", empty, tmp_path / "cache")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_and_writes_its_result(tmp_path: Path, tiny_titles: Path,
                                                      signum: int, code: int) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", "--config", str(TINY), "--out", str(out), "--quiet",
         "--cache-dir", str(tmp_path / "cache"), f"data.path={tiny_titles}", "train.epochs=200"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    events = out / "events.jsonl"
    wait_for(lambda: any(e["event"] == "training_step" for e in read_events(events)),
             what="the first training step")
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == code
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "stopped" and result["steps"] < result["max_steps"]
    assert read_events(events)[-1]["event"] == "run_failed"


def test_wandb_offline_logs_the_run_and_never_the_key(tmp_path: Path, tiny_titles: Path) -> None:
    secret = "abcd" * 10  # W&B keys are 40 characters
    res = train_tiny(tmp_path / "run", tiny_titles, tmp_path / "cache", "tracking.mode=offline",
                     env={"WANDB_API_KEY": secret, "WANDB_SILENT": "true"})
    assert res.returncode == 0, res.stderr
    offline_runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("*.wandb"))
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in res.stdout + res.stderr


def test_prepare_builds_the_cache_a_run_then_hits(tmp_path: Path, tiny_titles: Path) -> None:
    args = ["prepare", "--config", str(TINY), "--cache-dir", str(tmp_path / "cache"),
            f"data.path={tiny_titles}"]
    first, second = json.loads(trainer(*args).stdout), json.loads(trainer(*args).stdout)
    assert (first["cache_hit"], second["cache_hit"]) == (False, True)
    assert first["cache_key"] == second["cache_key"]
    assert train_tiny(tmp_path / "run", tiny_titles, tmp_path / "cache").returncode == 0
    info = next(e for e in read_events(tmp_path / "run" / "events.jsonl")
                if e["event"] == "dataset_info")
    assert info["cache_hit"] is True and info["cache_key"] == first["cache_key"]


# --- model-quality options -----------------------------------------------------------------------

import math  # noqa: E402

import torch  # noqa: E402

from trainer.config import build_config  # noqa: E402
from trainer.model import GPT  # noqa: E402
from trainer.optim import EMA, Combined, lr_factor, make_optimizer, muon_split  # noqa: E402

SMALL = {"model": {"d_model": 32, "n_layer": 2, "n_head": 2, "dropout": 0.0},
         "train": {"context_length": 16}}


def small_gpt(**sections) -> GPT:
    tree = {k: dict(v) for k, v in SMALL.items()}
    for name, fields in sections.items():
        tree.setdefault(name, {}).update(fields)
    torch.manual_seed(0)
    return GPT(build_config(tree), vocab_size=50, eos_id=0)


@pytest.mark.parametrize("tied", [True, False])
def test_muon_split_covers_every_parameter_once(tied: bool) -> None:
    model = small_gpt(model={"activation": "swiglu", "qk_norm": True, "tie_embeddings": tied})
    muon, adamw = muon_split(model)
    ids = [id(p) for p in muon + adamw]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    named = dict(model.named_parameters())
    in_muon = {n for n, p in named.items() if any(p is q for q in muon)}
    assert in_muon == {n for n, p in named.items() if n.startswith("blocks.") and p.ndim == 2}
    assert {n.split(".", 2)[2] for n in in_muon} == {
        "attn.qkv.weight", "attn.proj.weight", "mlp.fc.weight", "mlp.gate.weight",
        "mlp.proj.weight"}
    opt = make_optimizer(model, build_config({"optim": {"name": "muon", "lr": 1e-3,
                                                        "muon_lr": 0.02}}).optim)
    assert isinstance(opt, Combined) and isinstance(opt.optimizers[1], torch.optim.Muon)
    # The schedule scales both parts: their groups are the combined optimizer's groups.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5)
    assert [g["lr"] for o in opt.optimizers for g in o.param_groups] == [0.0005, 0.01]
    model(torch.randint(0, 50, (2, 16))).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    sched.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_wsd_schedule_values() -> None:
    def factors(**kw):
        s = build_config({"schedule": {"name": "wsd", **kw}}).schedule
        return [lr_factor(s, k, 10) for k in range(10)]

    # warmup 2, decay over the last 5 of 10 steps (starting at step 5, at full lr).
    f = factors(warmup_steps=2, decay_frac=0.5, decay_shape="linear")
    assert f == pytest.approx([0.5, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2])
    f = factors(decay_frac=0.5, decay_shape="cosine", min_lr_frac=0.1)
    assert f[4] == 1 and f[7] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.4)))
    f = factors(decay_frac=0.5, decay_shape="sqrt")
    assert f[6] == pytest.approx(1 - math.sqrt(0.2)) and f[9] == pytest.approx(1 - math.sqrt(0.8))
    assert factors(decay_frac=0.0) == [1.0] * 10  # no decay: constant


def test_qk_norm_makes_attention_scale_invariant_in_q_and_k() -> None:
    x = torch.randint(0, 50, (2, 16))
    for qk_norm in (False, True):
        model = small_gpt(model={"qk_norm": qk_norm}).eval()
        before = model(x)
        with torch.no_grad():
            for block in model.blocks:
                block.attn.qkv.weight[:64] *= 10  # the query and key rows (d_model 32 each)
                block.attn.qkv.bias[:64] *= 10
        after = model(x)
        assert torch.allclose(before, after, atol=1e-4) == qk_norm


def test_logit_softcap_bounds_the_logits() -> None:
    x = torch.randint(0, 50, (2, 16))
    raw = small_gpt(model={"init_std": 1.0}).eval()
    capped = small_gpt(model={"init_std": 1.0, "logit_softcap": 2.0}).eval()
    plain = raw(x)
    assert plain.abs().max() > 2.0
    logits = capped(x)
    assert logits.abs().max() <= 2.0
    torch.testing.assert_close(logits, 2.0 * torch.tanh(plain / 2.0))


def test_ema_follows_the_recurrence_and_is_swapped_in_for_eval() -> None:
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, model.parameters())]
    raw = [p.detach().clone() for p in model.parameters()]
    with ema.swapped():
        for p, e, r in zip(model.parameters(), expected, raw):
            torch.testing.assert_close(p.detach(), e)
            assert not torch.equal(p, r)
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), raw))


def test_eval_batch_keeps_the_challenge_tokens_per_batch() -> None:
    base = ROOT / "sweeps" / "base.yaml"
    assert load_config(base).eval.batch_for(128) == 64
    cfg = load_config(base, ["train.context_length=256"])
    assert cfg.eval.batch_for(256) * 256 == 8192
    assert load_config(base, ["eval.batch_size=8"]).eval.batch_for(256) == 8


def test_doc_mask_alone_means_causal() -> None:
    cfg = load_config(TINY, ["attention.doc_mask=true"])
    assert cfg.attention.type == "causal" and cfg.attention.doc_mask


@pytest.mark.parametrize("overrides", [
    ["optim.name=muon", "optim.lr=3e-3", "schedule.name=wsd", "schedule.decay_shape=sqrt"],
    ["attention.doc_mask=true", "model.qk_norm=true", "model.logit_softcap=15", "train.ema=0.9"],
    ["attention.type=sparse", "attention.pattern=strided", "attention.local_attn_ctx=8",
     "attention.doc_mask=true", "model.dropout=0.1"],
])
def test_quality_options_train_through_the_cli(tmp_path: Path, tiny_titles: Path,
                                               overrides: list[str]) -> None:
    res = train_tiny(tmp_path / "run", tiny_titles, tmp_path / "cache", "train.max_steps=6",
                     *overrides)
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "finished" and result["steps"] == 6
    assert result["final"]["val_loss"] is not None
    events = read_events(tmp_path / "run" / "events.jsonl")
    configured = next(e for e in events if e["event"] == "eval_configured")
    assert configured["tokens_per_batch"] == 16 * 64  # base_tiny's explicit eval batch
    assert any(e["event"] == "warning" and "coverage" in e["message"] for e in events)


from trainer.precision import Device, cpu_native, probe, resolve  # noqa: E402

AVX2 = Device("a CPU (AVX2)", frozenset())
AMX = Device("a CPU (AVX512)", frozenset({"bf16"}))
AMPERE = Device("NVIDIA A100", frozenset({"bf16", "fp16"}))
TURING = Device("Tesla T4", frozenset({"fp16"}))


def test_auto_precision_is_bf16_only_where_native() -> None:
    assert [resolve("auto", d)[0] for d in (AVX2, AMX, AMPERE, TURING)] == \
        ["fp32", "bf16", "bf16", "fp32"]
    assert all(resolve("auto", d)[1] is None for d in (AVX2, AMX, AMPERE, TURING))


def test_cpu_flags_that_mean_native_bf16() -> None:
    assert cpu_native({"avx2", "fma"}) == frozenset()  # AVX2-only: bf16 is emulated
    assert cpu_native({"avx2", "avx512f", "avx512_bf16"}) == {"bf16"}
    assert cpu_native({"amx_tile", "amx_bf16", "amx_fp16"}) == {"bf16", "fp16"}


def test_cpu_features_name_what_decides_cpu_speed(monkeypatch) -> None:
    from trainer import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f", "amx_bf16"})
    line = precision.cpu_features()
    assert line.startswith("torch ") and "AVX-512 yes" in line and "AVX512-BF16 no" in line
    assert "AMX-BF16 yes" in line and line.endswith("bf16 native")
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    assert "AVX-512 no" in precision.cpu_features() and "bf16 emulated" in precision.cpu_features()


def test_emulated_low_precision_runs_as_asked_with_a_warning() -> None:
    used, warning = resolve("bf16", AVX2)
    assert used == "bf16" and "emulates bf16" in warning and "auto uses fp32" in warning
    assert resolve("fp16", AMX)[1] is not None and resolve("fp16", TURING)[1] is None
    assert resolve("bf16", AMPERE) == ("bf16", None) and resolve("fp32", AVX2) == ("fp32", None)


def test_runs_report_the_precision_they_used_and_warn_once(tmp_path: Path,
                                                          tiny_titles: Path) -> None:
    native = "bf16" in probe(torch.device("cpu")).native
    for asked in ("auto", "bf16"):
        out = tmp_path / asked
        res = train_tiny(out, tiny_titles, tmp_path / "cache", "train.max_steps=2",
                         "train.device=cpu", f"train.precision={asked}", "model.dropout=0.1")
        assert res.returncode == 0, res.stderr
        events = read_events(out / "events.jsonl")
        info = next(e for e in events if e["event"] == "device_info")
        assert info["precision"] == ("bf16" if asked == "bf16" or native else "fp32")
        # Where a C compiler is, a CPU run with dropout draws its masks with the compiled kernel.
        masks = info["dropout_masks"]
        assert masks == drop.COMPILED or (masks.startswith("torch (") and not shutil.which("cc"))
        warned = [e for e in events if e["event"] == "warning" and "emulates" in e["message"]]
        assert len(warned) == (1 if asked == "bf16" and not native else 0)


def test_training_steps_equal_the_challenges_bit_for_bit() -> None:
    """Our GPT and train_step against the challenge's model and loop (the benchmark's faithful
    copy) at head size 64, as the baseline's: every step's loss the same float, dropout on."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from challenge import build_reference, challenge_step

    from trainer import loop

    shape = {"d_model": 128, "n_layer": 2, "n_head": 2, "context": 32}
    vocab, B, steps = 300, 4, 4
    cfg = build_config({"model": {k: shape[k] for k in ("d_model", "n_layer", "n_head")},
                        "train": {"context_length": shape["context"], "batch_size": B}})
    torch.manual_seed(1)
    ids = [torch.randint(0, vocab, (B, shape["context"] + 1)) for _ in range(steps)]
    batches = [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in ids]

    torch.manual_seed(1337)
    ref = build_reference(shape, vocab)
    step = challenge_step(ref, 100)
    theirs = [step(x, y) for x, y in batches]

    torch.manual_seed(1337)
    model = GPT(cfg, vocab)
    opt = make_optimizer(model, cfg.optim)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(cfg.schedule, k, 100))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ours = [loop.train_step(model, model, x, y, opt, sched, scaler,
                            loop.autocast_for("fp32", torch.device("cpu")), cfg.optim.grad_clip)
            for x, y in batches]
    assert cfg.model.dropout > 0 and ours == theirs
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), f"{name} differs after {steps} steps"
