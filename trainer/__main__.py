"""Command line of the trainer contract.

    python -m trainer --config FILE --out RUN_DIR [key.path=value ...]   train one run
    python -m trainer schema                                           JSON Schema of the config
    python -m trainer docs                                             Markdown config reference
    python -m trainer describe                                         what it declares (JSON)
    python -m trainer validate --config FILE [key=value ...] [--batch] check configs, train nothing
    python -m trainer prepare --config FILE [key=value ...]            build the data cache only
    python -m trainer probe --config FILE [key=value ...]              time a few steps (JSON)
    python -m trainer attention-mask --config FILE --out mask.png      draw the attention pattern
"""

from __future__ import annotations

import time

STARTED = time.time()  # before the heavy imports: `probe` counts a trial's start-up from here

import argparse
import json
import os
import re
import sys
from pathlib import Path

from trainer.config import (Config, ConfigError, build_config, config_reference, json_schema,
                            load_config, set_dotted)
from trainer.exitcodes import BAD_INPUT


def default_cache_dir() -> Path:
    """Data cache: ORCH_CACHE_DIR when set (the orchestrator shares one per sweep), else ~/.cache."""
    return Path(os.environ.get("ORCH_CACHE_DIR") or Path.home() / ".cache" / "orch" / "data")


def _train(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer", description="Train one GPT run.")
    p.add_argument("--config", type=Path, required=True, help="trainer config YAML")
    p.add_argument("--out", type=Path, required=True, help="run dir for events.jsonl, result.json")
    p.add_argument("--cache-dir", type=Path, default=None, help="data cache (ORCH_CACHE_DIR)")
    p.add_argument("--quiet", action="store_true", help="no console lines")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    args = p.parse_args(argv)
    out = expand_run_id(args.out)
    cfg = load_config(args.config, args.overrides)
    from trainer.loop import run  # torch import only once the config is known good

    return run(cfg, out, cache_dir=args.cache_dir or default_cache_dir(), quiet=args.quiet)


def expand_run_id(out: Path) -> Path:
    """`{run_id}` in --out becomes WANDB_RUN_ID, so each run of a W&B sweep gets its own dir.

    A W&B sweep's command is fixed when the sweep is created and W&B has no run-id macro, so
    the one command the agents run names its run dir with this placeholder.
    """
    text = str(out)
    if "{run_id}" not in text:
        return out
    run_id = os.environ.get("WANDB_RUN_ID", "")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", run_id):
        raise ConfigError(f"--out {text} contains {{run_id}} but WANDB_RUN_ID is "
                          f"{'not set' if not run_id else repr(run_id)}; a W&B agent sets it")
    return Path(text.replace("{run_id}", run_id))


def _validate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer validate")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--batch", action="store_true",
                   help="read JSON objects of {dotted.key: value} overrides, one per stdin line; "
                        "print one JSON verdict per line ({ok, error, config_hash})")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    args = p.parse_args(argv)
    base = load_config(args.config, args.overrides)
    if not args.batch:
        check_data_file(base)
        print(f"ok {base.hash()}")
        return 0
    tree = base.model_dump(mode="json")
    for line in sys.stdin:
        if not line.strip():
            continue
        point = json.loads(line)
        trial = json.loads(json.dumps(tree))
        try:
            for key, value in point.items():
                set_dotted(trial, key, value)
            cfg = build_config(trial, f"{args.config} at {json.dumps(point, sort_keys=True)}")
            check_data_file(cfg)
            print(json.dumps({"ok": True, "config_hash": cfg.hash(),
                              "cost_key": cfg.cost_key(),
                              "flops_per_token": cfg.flops_per_token()}), flush=True)
        except ConfigError as err:
            print(json.dumps({"ok": False, "error": str(err)}), flush=True)
    return 0


def check_data_file(cfg: Config) -> None:
    """What `validate` can tell of data.path without reading it: exists, a known suffix, not
    empty (a run or `prepare` reads it)."""
    if cfg.data.path is None:
        return
    from trainer.data import DataError, check_file

    try:
        check_file(cfg.data.path)
    except DataError as err:
        raise ConfigError(str(err)) from None


def _prepare(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer prepare",
                                description="Build the data cache entry a run would use, then exit.")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--cache-dir", type=Path, default=None, help="data cache (ORCH_CACHE_DIR)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    from trainer.data import DataError, batches_per_epoch, prepare_ids

    try:
        data = prepare_ids(cfg.data, cfg.tokenizer, args.cache_dir or default_cache_dir())
        # What a run checks right after this: a file too small for one batch fails here too.
        batches_per_epoch(len(data.train), cfg.train.batch_size, cfg.train.context_length,
                          data.info["source"])
    except DataError as err:
        raise ConfigError(str(err)) from None
    print(json.dumps({k: data.info[k] for k in ("cache_key", "cache_hit", "train_tokens",
                                                "val_tokens")}))
    return 0


def _probe(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer probe",
                                description="Time one warm-up step, then --steps steps and one "
                                            "evaluation; print one JSON line per stage (setup, "
                                            "warm-up, done), the last with seconds_per_step, "
                                            "steps, eval_seconds, evals and seconds_per_trial.")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--cache-dir", type=Path, default=None, help="data cache (ORCH_CACHE_DIR)")
    p.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    from trainer.data import DataError
    from trainer.probe import probe

    def report(stage: dict) -> None:  # each stage at once: a caller may stop the probe
        print(json.dumps(stage), flush=True)

    try:
        report(probe(cfg, args.cache_dir or default_cache_dir(), max(1, args.steps), STARTED,
                     report))
    except DataError as err:
        raise ConfigError(str(err)) from None
    return 0


def _attention_mask(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer attention-mask")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    from trainer.maskplot import draw_mask

    draw_mask(cfg, args.out)
    print(args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand, or train; config errors exit 2 with one paragraph, no traceback."""
    argv = sys.argv[1:] if argv is None else argv
    commands = {"validate": _validate, "prepare": _prepare, "probe": _probe,
                "attention-mask": _attention_mask}
    try:
        if argv[:1] == ["schema"]:
            print(json.dumps(json_schema(), indent=2))
            return 0
        if argv[:1] == ["describe"]:
            from trainer.describe import description

            print(json.dumps(description(), indent=2))
            return 0
        if argv[:1] == ["docs"]:
            print(config_reference())
            return 0
        if argv[:1] and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        return _train(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
