"""The trainer's whole configuration: one pydantic model, loaded from YAML plus dotted overrides.

The model is the single source of truth: `python -m trainer schema` prints its JSON Schema, the
orchestrator validates sweep parameters against that schema, and docs/trainer.md documents it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainer.attention_config import AttentionConfig, CausalAttention
from trainer.yaml12 import read_yaml


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, so typos fail before any work."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(Section):
    """Where the titles come from and how they are split."""

    path: Path | None = Field(
        None,
        description="Local titles file (CSV with a `title` column, JSONL with a `title` field, "
        "plain text one title per line, or Parquet). When unset, titles come from the hub.",
    )
    hub_dataset: str = Field("julien040/hacker-news-posts", description="Hugging Face dataset id.")
    num_titles: int = Field(100_000, gt=0, description="Titles taken after the seeded shuffle.")
    seed: int = Field(1337, description="Seed of the shuffle that picks and orders the titles.")
    val_frac: float = Field(0.1, gt=0, lt=1, description="Share of titles held out for validation.")


class TokenizerConfig(Section):
    """Byte-level BPE from HF `tokenizers`."""

    vocab_size: int = Field(16_000, ge=260, le=1_000_000)
    fit_on: Literal["train+val", "train"] = Field(
        "train+val", description="Titles the BPE is fit on: the challenge fits on train+val."
    )


class ModelConfig(Section):
    """The GPT's shape and architecture choices."""

    d_model: int = Field(512, gt=0)
    n_layer: int = Field(6, gt=0)
    n_head: int = Field(8, gt=0)
    mlp_ratio: float = Field(4.0, gt=0, description="MLP hidden width as a multiple of d_model.")
    dropout: float = Field(0.1, ge=0, lt=1)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_position: Literal["pre", "post"] = "pre"
    activation: Literal["gelu", "relu2", "swiglu"] = "gelu"
    positions: Literal["learned", "rotary"] = "learned"
    tie_embeddings: bool = True
    bias: bool = Field(True, description="Biases in the linear layers (the challenge has them).")
    init: Literal["normal", "scaled"] = Field(
        "normal",
        description="normal: N(0, init_std) everywhere (the challenge); scaled: residual output "
        "projections get init_std / sqrt(2 n_layer) (GPT-2).",
    )
    init_std: float = Field(0.02, gt=0)
    qk_norm: bool = Field(False, description="RMSNorm (learned scale, shared across heads) on "
                          "each head's queries and keys before rotary and the dot product.")
    logit_softcap: float | None = Field(
        None, gt=0, description="Soft-cap the output logits: cap * tanh(logits / cap), so "
        "|logit| < cap, in training and evaluation. null: off (the challenge).")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})"
            )
        return self


class OptimConfig(Section):
    """Optimizer and gradient clipping.

    `muon`: torch.optim.Muon for the 2-D weight matrices inside the blocks (attention qkv and
    proj, MLP fc/gate/proj), AdamW (lr, betas, eps, weight_decay) for everything else: the
    embeddings, positions, norms, biases and the head. The schedule scales both lrs alike.
    """

    name: Literal["sgd", "adam", "adamw", "adagrad", "rmsprop", "muon"] = "sgd"
    lr: float = Field(6e-3, gt=0, description="Learning rate; with `muon`, the AdamW part's.")
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD and RMSprop only.")
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0, description="Max global grad norm; null: off.")
    muon_lr: float = Field(0.02, gt=0, description="`muon` only: lr of the block matrices "
                           "(before muon_lr_adjust).")
    muon_momentum: float = Field(0.95, ge=0, lt=1, description="`muon` only.")
    muon_nesterov: bool = Field(True, description="`muon` only.")
    muon_ns_steps: int = Field(5, ge=1, lt=100, description="`muon` only: Newton-Schulz "
                               "iterations that orthogonalise each update.")
    muon_weight_decay: float = Field(0.0, ge=0, description="`muon` only: decoupled weight "
                                     "decay of the block matrices (p *= 1 - lr * wd).")
    muon_lr_adjust: Literal["original", "match_rms_adamw"] = Field(
        "original", description="`muon` only: per-matrix lr scale, torch's adjust_lr_fn. "
        "original: muon_lr * sqrt(max(1, rows/cols)) (Keller Jordan); match_rms_adamw: "
        "muon_lr * 0.2 * sqrt(max(rows, cols)), so muon_lr can equal an AdamW lr (Moonlight).")


class ScheduleConfig(Section):
    """Learning-rate schedule, applied per step, to every lr (optim.lr and optim.muon_lr).

    After `warmup_steps` of linear warmup: cosine or linear decay to min_lr_frac over the rest,
    constant, or `wsd` (warmup-stable-decay): constant until the last `decay_frac` of all steps,
    then `decay_shape` down towards min_lr_frac.
    """

    name: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_frac: float = Field(0.0, ge=0, le=1, description="Final lr as a share of optim.lr.")
    decay_frac: float = Field(0.2, ge=0, le=1, description="`wsd` only: share of all steps "
                              "spent decaying, at the end.")
    decay_shape: Literal["linear", "cosine", "sqrt"] = Field(
        "linear", description="`wsd` only: the decay's shape over progress p in [0, 1): "
        "linear 1 - p, cosine (1 + cos(pi p)) / 2, sqrt 1 - sqrt(p).")


class TrainConfig(Section):
    """The loop: how long, how big, on what."""

    epochs: int = Field(7, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop early after this many steps.")
    batch_size: int = Field(64, gt=0)
    context_length: int = Field(128, gt=0)
    evals_per_epoch: int = Field(3, gt=0)
    seed: int = Field(1337, description="Seed of model init and dropout.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast precision of the matmuls (weights stay fp32). auto: bf16 "
        "where the device computes it natively (CUDA with bf16, a CPU with AVX512-BF16 or "
        "AMX), else fp32; bf16/fp16 on a device that emulates them run with a warning.")
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, gt=0, description="CPU threads for torch; null: torch's.")
    ema: float | None = Field(None, gt=0, lt=1, description="Decay of an exponential moving "
                              "average of the weights, updated after every step; evaluation "
                              "then scores the averaged weights. null: off.")


CHALLENGE_EVAL_TOKENS = 64 * 128  # the challenge's eval batch x context


class EvalConfig(Section):
    """Validation pass settings.

    The challenge val_loss scores whole eval batches of batch_size x context_length tokens, so
    that product decides which validation tokens it covers. By default it stays at the
    challenge's 64 x 128 = 8192 whatever the context; a run whose product differs says so in a
    `warning` event and on stderr.
    """

    batch_size: int | None = Field(None, gt=0, description="Eval batch. null: tokens_per_batch "
                                   "// train.context_length (at least 1).")
    tokens_per_batch: int = Field(CHALLENGE_EVAL_TOKENS, gt=0, description="Eval batch x "
                                  "context when batch_size is null; 8192 is the challenge's.")

    def batch_for(self, context_length: int) -> int:
        """The eval batch at this context."""
        return self.batch_size or max(1, self.tokens_per_batch // context_length)


class TrackingConfig(Section):
    """Weights & Biases logging."""

    mode: Literal["disabled", "offline", "online"] = "disabled"
    project: str = "mainrun"
    entity: str | None = None
    tags: list[str] = Field(default_factory=list)


# Config fields that change what a run learns but not how long it takes (Config.cost_key).
COST_FREE: dict[str, tuple[str, ...]] = {
    "data": ("seed",),
    "model": ("init", "init_std"),
    "optim": ("lr", "betas", "momentum", "eps", "weight_decay", "grad_clip", "muon_lr",
              "muon_momentum", "muon_nesterov", "muon_weight_decay", "muon_lr_adjust"),
    "schedule": tuple(ScheduleConfig.model_fields),
    "train": ("seed",),
    "tracking": tuple(TrackingConfig.model_fields),
}


class Config(Section):
    """One training run."""

    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    attention: AttentionConfig = Field(default_factory=CausalAttention)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="before")
    @classmethod
    def _attention_type_defaults_to_causal(cls, tree: Any) -> Any:
        # `attention.doc_mask=true` alone (no type) means the default variant, causal.
        if isinstance(tree, dict) and isinstance(tree.get("attention"), dict):
            tree = {**tree, "attention": {"type": "causal", **tree["attention"]}}
        return tree

    @model_validator(mode="after")
    def _attention_fits_model(self) -> Config:
        self.attention.check(n_head=self.model.n_head, context_length=self.train.context_length,
                             d_model=self.model.d_model)
        return self

    def hash(self) -> str:
        """A short stable hash of the resolved config (what the run's numbers depend on)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def flops_per_token(self) -> float:
        """Training FLOPs per token, roughly (nanoGPT's 6N + 12 L T d, dense attention): only
        for ratios, to scale one measured shape's time to a similar one's."""
        m = self.model
        mlp = (3 if m.activation == "swiglu" else 2) * m.d_model * int(m.mlp_ratio * m.d_model)
        matmuls = m.n_layer * (4 * m.d_model ** 2 + mlp) + self.tokenizer.vocab_size * m.d_model
        return 6.0 * matmuls + 12.0 * m.n_layer * self.train.context_length * m.d_model

    def cost_key(self) -> str:
        """A short hash of what sets a run's wall time: the step's size (model, attention,
        batch, context, vocab, precision, device) and the number of steps and evaluations
        (data, epochs, max_steps, evals). Runs that differ only in what is learned (lr, seeds,
        schedule, init) share it, so one run's measured time estimates the others'."""
        tree = self.model_dump(mode="json")
        for section, keys in COST_FREE.items():
            for key in keys:
                tree[section].pop(key, None)
        tree["train"]["ema"] = tree["train"]["ema"] is not None  # on/off costs, not the decay
        blob = json.dumps(tree, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ConfigError(Exception):
    """A config that cannot run; its message is one paragraph naming the file and the fields."""


def parse_override(text: str) -> tuple[str, Any]:
    """Split `key.path=value`; the value parses as a YAML scalar (`3e-4` is a float)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not of the form key.path=value")
    value = read_yaml(raw) if raw.strip() else None
    return key.strip(), value


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `tree[a][b][c] = value` for key `a.b.c`, creating sections as needed."""
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def describe_errors(err: ValidationError, source: str) -> str:
    """Render pydantic errors as one paragraph: file, field path, what is wrong, what is allowed."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        loc = loc.replace(".causal.", ".").replace(".local.", ".").replace(".sparse.", ".")
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict) or e["type"] == "missing" else f" (got {got!r})"
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        # Cross-section checks (attention vs model) sit on the root and name their own fields.
        parts.append(f"`{loc}`: {msg}{shown}" if loc else msg)
    return f"invalid config {source}: " + "; ".join(parts) + "."


def build_config(tree: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a config tree as a whole; raise ConfigError with a one-paragraph message."""
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(describe_errors(err, source)) from None


def load_config(path: Path | None, overrides: list[str] = ()) -> Config:
    """Load YAML (or defaults when path is None), apply `key=value` overrides, validate."""
    tree: dict[str, Any] = {}
    source = str(path) if path else "<defaults>"
    if path is not None:
        tree = _read_config_file(Path(path))
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    if overrides:
        source += " with overrides " + " ".join(overrides)
    return build_config(tree, source)


def _read_config_file(path: Path) -> dict[str, Any]:
    """The sections of a config file; every way it can be unusable is one ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; --config names a YAML file")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {err.start}: "
                          f"{err.reason}); a trainer config is a YAML file") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror or err}") from None
    try:
        tree = read_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if tree is None:
        # An empty file would silently train the full-size defaults, which nobody means.
        raise ConfigError(f"config file {path} is empty; write the sections to change "
                          "(data, model, optim, train, ...), e.g. `train: {max_steps: 100}`; "
                          "`python -m trainer docs` lists every field and its default")
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections (data, model, "
                          f"optim, train, ...), not a {type(tree).__name__}")
    return tree


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the whole config (what `python -m trainer schema` prints)."""
    return Config.model_json_schema()


def _type_name(annotation: Any) -> str:
    # A bare `|` would end the Markdown table cell, even inside backticks.
    return (str(annotation).replace("typing.", "").replace("pathlib.", "")
            .replace("<class '", "").replace("'>", "").replace("|", "\\|"))


def _section_rows(prefix: str, model: type[BaseModel], note: str = "") -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default
        desc = " ".join(filter(None, [note, field.description or ""]))
        rows.append(f"| `{prefix}.{name}` | `{_type_name(field.annotation)}` | `{default}` "
                    f"| {desc} |")
    return rows


def config_reference() -> str:
    """The Markdown table of every config field (`python -m trainer docs`, in docs/trainer.md)."""
    from typing import get_args

    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for section, field in Config.model_fields.items():
        if section == "attention":
            union = get_args(AttentionConfig)[0]
            for variant in get_args(union) or (union,):
                kind = variant.model_fields["type"].default
                rows += _section_rows(section, variant, f"(type `{kind}`)")
        else:
            rows += _section_rows(section, field.default_factory)
    return "\n".join(rows)
