"""Titles -> split -> byte-level BPE -> token ids, exactly as the mainrun challenge does it, cached.

The challenge shuffles the hub dataset with a seed, takes `num_titles` stripped titles, splits
them train/val, fits a byte-level BPE on train+val, and encodes `"<eos>".join(titles) + "<eos>"`.
`prepare_data` reproduces that from the hub or a local file and caches the result on disk under a
key of everything that determines it, so a sweep's trials build it once and share it, even when
they all start at the same moment (a per-key flock plus an atomic rename of the finished entry).
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from trainer.config import DataConfig, TokenizerConfig

if TYPE_CHECKING:  # torch only where ids become tensors: `validate` checks a data file without it
    import torch

# Bump when the entry layout or the way ids are derived changes: old entries are then ignored.
FORMAT_VERSION = 1
SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]
SUFFIXES = (".csv", ".jsonl", ".txt", ".parquet")


class DataError(Exception):
    """Titles or a cache entry that cannot be used; the message names the file/field and the fix."""


@dataclass(frozen=True)
class Dataset:
    """Token ids of the train and validation splits plus what the loss needs to normalise by."""

    train_ids: torch.Tensor  # 1-D int64
    val_ids: torch.Tensor  # 1-D int64
    val_chars: int  # len(val_text): the challenge divides summed cross-entropy by this
    val_bytes: int  # len(val_text.encode("utf-8")), for bits per byte
    vocab_size: int
    eos_id: int
    tokenizer_path: Path
    info: dict


# ---------------------------------------------------------------- titles


def check_file(path: Path) -> None:
    """The checks that need no reading: the file exists, has a known suffix and is not empty."""
    if path.is_dir():
        raise DataError(f"data.path {path} is a directory; point it at a titles file "
                        f"({', '.join(SUFFIXES)}).")
    if not path.is_file():
        raise DataError(f"data.path {path} does not exist or is not a file; "
                        f"point it at a titles file ({', '.join(SUFFIXES)}).")
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"data.path {path} has suffix '{path.suffix}', which is not a known titles "
                        f"format; allowed: {', '.join(SUFFIXES)}.")
    if path.stat().st_size == 0:
        raise DataError(f"data.path {path} is empty; it must hold at least two titles.")


def batches_per_epoch(train_tokens: int, batch_size: int, context_length: int,
                      source: str) -> int:
    """Whole batches in the training tokens (from `source`, named in the error); none is a
    DataError (nothing could train)."""
    batches = train_tokens // (batch_size * context_length)
    if batches == 0:
        raise DataError(f"{train_tokens} training tokens from {source} do not fill one batch of "
                        f"train.batch_size x train.context_length = {batch_size} x "
                        f"{context_length}; raise data.num_titles, use a larger file, or lower "
                        "train.batch_size or train.context_length.")
    return batches


def _read_rows(path: Path) -> list[str]:
    """Every record's raw title, in file order (empty ones included: they are rows of the shuffle)."""
    check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    try:  # utf-8-sig: tolerate a BOM from spreadsheet tools
        if suffix == ".csv":
            # The csv module splits records itself (newline=""): str.splitlines would also break
            # on U+2028, U+0085, ... which real titles contain, inventing rows.
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames or "title" not in reader.fieldnames:
                    raise DataError(f"data.path {path}: the CSV header has no `title` column "
                                    f"(columns: {reader.fieldnames or 'none'}); add one.")
                return [row["title"] or "" for row in reader]
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"data.path {path} is not valid UTF-8 ({err}).") from None
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"data.path {path}: line {number} is not valid JSON ({err.msg}); "
                                "each line must be an object with a `title` field.") from None
            if not isinstance(record, dict) or "title" not in record:
                raise DataError(f"data.path {path}: line {number} has no `title` field; each "
                                "line must be an object with a `title` field.")
            rows.append("" if record["title"] is None else str(record["title"]))
        return rows
    lines = text.split("\n")  # not splitlines(): it also splits on U+2028 and friends inside titles
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _read_parquet(path: Path) -> list[str]:
    try:  # lazily: pyarrow is an optional extra, needed only for this format
        import pyarrow.parquet as pq
    except ImportError as err:
        raise DataError(f"data.path {path} is Parquet, which needs pyarrow ({err}); "
                        "pip install 'orch[parquet]' or convert the file to CSV/JSONL.") from None
    try:
        names = pq.read_schema(path).names
        if "title" not in names:
            raise DataError(f"data.path {path}: the Parquet file has no `title` column "
                            f"(columns: {names}); add one.")
        column = pq.read_table(path, columns=["title"]).column("title").to_pylist()
    except DataError:
        raise
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for unreadable files
        raise DataError(f"data.path {path} is not a readable Parquet file ({err}).") from None
    return ["" if t is None else str(t) for t in column]


def _hub_titles(data: DataConfig) -> list[str]:
    """The challenge's own source; `datasets` is optional and the hub may be unreachable."""
    where = f"the Hugging Face hub dataset {data.hub_dataset}"
    try:
        import datasets
    except ImportError:
        raise DataError(f"the `datasets` library is not installed, so titles cannot come from "
                        f"{where}; pip install 'orch[hub]' or set data.path to a local titles "
                        "file.") from None
    try:
        ds = datasets.load_dataset(data.hub_dataset, split="train").shuffle(seed=data.seed)
        ds = ds.select(range(min(data.num_titles, len(ds))))
        titles = ds["title"]
    except Exception as err:  # offline, unknown id, no `title` column, ...: all mean "use a file"
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise DataError(f"cannot reach {where} ({detail}); set data.path to a local titles "
                        "file.") from None
    return ["" if t is None else str(t).strip() for t in titles]


def load_titles(data: DataConfig) -> list[str]:
    """The titles the challenge trains on: shuffled with `data.seed`, the first `num_titles`,
    stripped, empty ones dropped. Fewer than `num_titles` when the source has fewer."""
    if data.seed < 0:
        raise DataError(f"data.seed must be >= 0 (got {data.seed}): it seeds numpy's default_rng.")
    if data.path is None:
        return [t for t in _hub_titles(data) if t]
    rows = _read_rows(Path(data.path))
    # Same permutation as `datasets.Dataset.shuffle(seed=s)`, verified in huggingface/datasets
    # src/datasets/arrow_dataset.py: `generator = np.random.default_rng(seed)`, then
    # `permutation = generator.permutation(len(self))`, then `self.select(indices=permutation)`.
    # So a file holding the hub's rows in the hub's order yields the hub's titles for a seed.
    order = np.random.default_rng(data.seed).permutation(len(rows))[: data.num_titles]
    return [t for t in (rows[i].strip() for i in order) if t]


# ---------------------------------------------------------------- tokenizer and ids


def fit_tokenizer(titles: list[str], vocab_size: int) -> Tokenizer:
    """The challenge's byte-level BPE (show_progress only silences the bar; merges are the same)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  show_progress=False)
    tokenizer.train_from_iterator(titles, trainer)
    return tokenizer


def encode_titles(tokenizer: Tokenizer, titles: list[str], eos_id: int, dtype: type) -> np.ndarray:
    """Ids of `"<eos>".join(titles) + "<eos>"`, computed per title in parallel.

    Equal to `tokenizer.encode(joined).ids` because `<eos>` is an added token, split off before
    the ByteLevel pre-tokenizer runs, which then sees each title as its own piece (prefix space
    included); tests/test_data.py checks this on the real titles.
    """
    encodings = tokenizer.encode_batch(titles)
    out = np.empty(sum(len(e.ids) for e in encodings) + len(titles), dtype=dtype)
    pos = 0
    for enc in encodings:
        out[pos: pos + len(enc.ids)] = enc.ids
        pos += len(enc.ids)
        out[pos] = eos_id
        pos += 1
    return out


# ---------------------------------------------------------------- cache


def _source_identity(data: DataConfig) -> str:
    if data.path is None:
        return f"hub:{data.hub_dataset}"
    path = Path(data.path)
    if not path.is_file():
        _read_rows(path)  # raises the same "does not exist" DataError that loading would
    digest = hashlib.sha256()
    with path.open("rb") as fh:  # content, not path: a copied file shares the entry
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"file{path.suffix.lower()}:{digest.hexdigest()}"


def cache_key(data: DataConfig, tok: TokenizerConfig) -> str:
    """Hash of everything that determines the ids (tokenizers' version too: it owns the merges)."""
    parts = {"format": FORMAT_VERSION, "source": _source_identity(data), "num_titles":
             data.num_titles, "seed": data.seed, "val_frac": data.val_frac, "vocab_size":
             tok.vocab_size, "fit_on": tok.fit_on, "tokenizers": tokenizers.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _read_entry(entry: Path) -> dict | None:
    """A complete entry's meta and arrays, or None for anything missing or inconsistent."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("format") != FORMAT_VERSION or not (entry / "tokenizer.json").is_file():
            return None
        train = np.load(entry / "train.npy", allow_pickle=False)
        val = np.load(entry / "val.npy", allow_pickle=False)
        if train.shape != (meta["train_tokens"],) or val.shape != (meta["val_tokens"],):
            return None
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
        return None  # whatever is wrong with it, an entry we cannot fully read is rebuilt
    return {"meta": meta, "train": train, "val": val}


def _build_entry(data: DataConfig, tok: TokenizerConfig, out: Path, key: str, source: str) -> None:
    """Everything of one entry, written into `out` (a temp dir the caller renames into place)."""
    titles = load_titles(data)
    n = int(len(titles) * (1 - data.val_frac))  # the challenge's split, on the titles there are
    train, val = titles[:n], titles[n:]
    if not train or not val:
        raise DataError(f"{len(titles)} non-empty titles from {source} give {len(train)} train and "
                        f"{len(val)} val titles with data.val_frac={data.val_frac}; both need at "
                        "least one (raise data.num_titles or use a larger file).")
    tokenizer = fit_tokenizer(train + val if tok.fit_on == "train+val" else train, tok.vocab_size)
    eos_id = tokenizer.token_to_id("<eos>")
    vocab = tokenizer.get_vocab_size()
    dtype = np.uint16 if vocab <= 65536 else np.uint32  # ids < vocab; halves the files
    train_ids = encode_titles(tokenizer, train, eos_id, dtype)
    val_ids = encode_titles(tokenizer, val, eos_id, dtype)
    val_text = "<eos>".join(val) + "<eos>"
    tokenizer.save(str(out / "tokenizer.json"))
    np.save(out / "train.npy", train_ids)
    np.save(out / "val.npy", val_ids)
    meta = {"format": FORMAT_VERSION, "cache_key": key, "source": source, "vocab_size": vocab,
            "eos_id": eos_id, "val_chars": len(val_text), "val_bytes": len(val_text.encode()),
            "train_titles": len(train), "val_titles": len(val),
            "train_tokens": int(train_ids.size), "val_tokens": int(val_ids.size)}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))  # last: its presence = complete


def _build_locked(data: DataConfig, tok: TokenizerConfig, cache_dir: Path, key: str,
                  source: str) -> tuple[dict, bool]:
    """(entry, cache_hit) with `cache_dir/<key>.lock` held, so one process builds and others wait."""
    entry = cache_dir / key
    with open(cache_dir / f"{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if we crash
        found = _read_entry(entry)  # whoever held the lock before us may have built it
        if found is not None:
            return found, True
        # Nobody else builds this key now, so leftovers are garbage: a corrupt or old-format
        # entry (never trusted; renamed aside first so no reader sees it half-deleted) and
        # temp dirs of a killed builder.
        leftovers = [p for p in [entry] if p.exists()] + list(cache_dir.glob(f".tmp-{key}-*"))
        for old in leftovers:
            trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=cache_dir))
            os.rename(old, trash / "x")
            shutil.rmtree(trash, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=cache_dir))
        try:
            _build_entry(data, tok, tmp, key, source)
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; trials may run as another user
            try:
                os.rename(tmp, entry)  # atomic: readers see all of the entry or none of it
            except OSError:
                if not entry.is_dir():  # a real failure, not "another builder got there first"
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing left after a successful rename
    found = _read_entry(entry)
    if found is None:
        raise DataError(f"cache entry {entry} is unreadable right after being written; check "
                        "the disk behind the cache directory.")
    return found, False


@dataclass(frozen=True)
class Prepared:
    """A cache entry as read: token ids as numpy arrays, its meta, and how it was found."""

    train: np.ndarray
    val: np.ndarray
    meta: dict
    info: dict
    tokenizer_path: Path


def prepare_ids(data: DataConfig, tok: TokenizerConfig, cache_dir: Path) -> Prepared:
    """Titles, split, tokenizer and ids for these settings, from the cache or built into it.
    Torch-free, so `python -m trainer prepare` fills the cache without importing torch.

    Concurrent callers with the same settings and cache_dir build once: the first holds
    `cache_dir/<key>.lock` while it builds in a temp dir and renames it to `cache_dir/<key>`;
    the others wait on the lock and then read that entry. Incomplete entries are rebuilt.
    """
    start = time.perf_counter()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(data, tok)
    source = f"file:{Path(data.path).resolve()}" if data.path else f"hub:{data.hub_dataset}"
    found, hit = _read_entry(cache_dir / key), True  # lock-free: entries appear by atomic rename
    if found is None:
        found, hit = _build_locked(data, tok, cache_dir, key, source)
    meta = found["meta"]
    info = {k: meta[k] for k in ("train_titles", "val_titles", "train_tokens", "val_tokens")}
    info.update(source=source, cache_key=key, cache_hit=hit,
                seconds=round(time.perf_counter() - start, 4))
    return Prepared(found["train"], found["val"], meta, info, cache_dir / key / "tokenizer.json")


def prepare_data(data: DataConfig, tok: TokenizerConfig, cache_dir: Path) -> Dataset:
    """`prepare_ids` as the Dataset a run trains on (int64 tensors)."""
    import torch

    p = prepare_ids(data, tok, cache_dir)
    return Dataset(
        train_ids=torch.from_numpy(p.train.astype(np.int64)),
        val_ids=torch.from_numpy(p.val.astype(np.int64)),
        val_chars=p.meta["val_chars"], val_bytes=p.meta["val_bytes"],
        vocab_size=p.meta["vocab_size"], eos_id=p.meta["eos_id"],
        tokenizer_path=p.tokenizer_path, info=p.info,
    )
