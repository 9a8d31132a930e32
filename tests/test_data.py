"""trainer.data on the real Hacker News titles: loaders, errors, the split, ids, and the cache."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from trainer.config import DataConfig, TokenizerConfig
from trainer.data import (
    DataError,
    cache_key,
    encode_titles,
    fit_tokenizer,
    load_titles,
    prepare_data,
)

REPO = Path(__file__).resolve().parents[1]
SMALL_TOK = TokenizerConfig(vocab_size=512)


def raw_titles(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [row["title"] for row in csv.DictReader(fh)]


def data_cfg(path: Path, **kw) -> DataConfig:
    return DataConfig(path=path, **{"num_titles": 2000, **kw})


def challenge_reference(titles: list[str], val_frac: float, vocab: int, fit_on: str):
    """The challenge's code path, written out independently: fit, join with <eos>, encode."""
    n = int(len(titles) * (1 - val_frac))
    train, val = titles[:n], titles[n:]
    tokenizer = fit_tokenizer(train + val if fit_on == "train+val" else train, vocab)
    train_text, val_text = "<eos>".join(train) + "<eos>", "<eos>".join(val) + "<eos>"
    return tokenizer.encode(train_text).ids, tokenizer.encode(val_text).ids, val_text


# ---------------------------------------------------------------- loaders


def test_csv_loader_shuffles_like_hf_datasets(tiny_titles: Path):
    rows = raw_titles(tiny_titles)
    # datasets.Dataset.shuffle(seed) == select(np.random.default_rng(seed).permutation(len)).
    expected = [rows[i].strip() for i in np.random.default_rng(1337).permutation(len(rows))]
    assert load_titles(data_cfg(tiny_titles, seed=1337)) == [t for t in expected if t]


def write_as(suffix: str, titles: list[str], path: Path) -> Path:
    out = path.with_suffix(suffix)
    if suffix == ".jsonl":
        out.write_text("".join(json.dumps({"title": t, "id": i}) + "\n" for i, t in enumerate(titles)))
    elif suffix == ".txt":
        out.write_text("\n".join(titles) + "\n", encoding="utf-8")
    elif suffix == ".parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"title": titles, "n": list(range(len(titles)))}), out)
    return out


def test_full_file_keeps_every_record(titles_csv: Path):
    # Some real titles hold U+2028 and friends; they must not split a record in two.
    titles = load_titles(DataConfig(path=titles_csv, num_titles=10**6))
    assert len(titles) == len(raw_titles(titles_csv)) == 20099


@pytest.mark.parametrize("suffix", [".jsonl", ".txt", ".parquet"])
def test_other_formats_give_the_csv_titles(tiny_titles: Path, tmp_path: Path, suffix: str):
    converted = write_as(suffix, raw_titles(tiny_titles), tmp_path / "titles")
    assert load_titles(data_cfg(converted)) == load_titles(data_cfg(tiny_titles))


def test_shuffle_is_deterministic_and_take_is_a_prefix(tiny_titles: Path):
    a = load_titles(data_cfg(tiny_titles, seed=7))
    assert a == load_titles(data_cfg(tiny_titles, seed=7))
    assert a != load_titles(data_cfg(tiny_titles, seed=8))
    assert sorted(a) == sorted(t.strip() for t in raw_titles(tiny_titles) if t.strip())
    assert load_titles(data_cfg(tiny_titles, seed=7, num_titles=300)) == a[:300]


def test_empty_titles_are_dropped(tmp_path: Path):
    path = tmp_path / "t.txt"
    path.write_text("one\n  \ntwo \n\n three\n")
    assert sorted(load_titles(data_cfg(path))) == ["one", "three", "two"]


# ---------------------------------------------------------------- errors


def error_case(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A bad titles file and a fragment its DataError message must contain."""
    if case == "missing":
        return tmp_path / "nope.csv", "does not exist"
    if case == "empty":
        (tmp_path / "e.csv").write_text("")
        return tmp_path / "e.csv", "is empty"
    if case == "csv-no-title":
        (tmp_path / "c.csv").write_text("id,name\n1,foo\n")
        return tmp_path / "c.csv", "no `title` column"
    if case == "jsonl-malformed":
        (tmp_path / "j.jsonl").write_text('{"title": "a"}\n{"title": "b"}\n{"title": oops}\n')
        return tmp_path / "j.jsonl", "line 3 is not valid JSON"
    if case == "jsonl-no-title":
        (tmp_path / "j.jsonl").write_text('{"title": "a"}\n{"name": "b"}\n')
        return tmp_path / "j.jsonl", "line 2 has no `title` field"
    if case == "suffix":
        (tmp_path / "t.xlsx").write_text("title\nfoo\n")
        return tmp_path / "t.xlsx", "allowed: .csv, .jsonl, .txt, .parquet"
    if case == "parquet-no-title":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"name": ["a", "b"]}), tmp_path / "p.parquet")
        return tmp_path / "p.parquet", "no `title` column"
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    return tmp_path / "bad.parquet", "not a readable Parquet file"


@pytest.mark.parametrize("case", ["missing", "empty", "csv-no-title", "jsonl-malformed",
                                  "jsonl-no-title", "suffix", "parquet-no-title", "parquet-bad"])
def test_bad_files_raise_data_error(tmp_path: Path, case: str):
    path, fragment = error_case(tmp_path, case)
    with pytest.raises(DataError, match="data.path") as err:
        load_titles(data_cfg(path))
    assert fragment in str(err.value) and str(path) in str(err.value)
    with pytest.raises(DataError):  # prepare_data fails the same way and caches nothing
        prepare_data(data_cfg(path), SMALL_TOK, tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").glob("*") if p.is_dir()]


def test_hub_without_datasets_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match=r"not installed.*set data\.path"):
        prepare_data(DataConfig(num_titles=100), SMALL_TOK, tmp_path)


def test_hub_unreachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    class OfflineDatasets:
        @staticmethod
        def load_dataset(*args, **kwargs):
            raise ConnectionError("Couldn't reach 'julien040/hacker-news-posts' on the Hub\n"
                                  "(LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", OfflineDatasets)
    with pytest.raises(DataError) as err:
        load_titles(DataConfig(num_titles=100))
    message = str(err.value)
    assert "cannot reach" in message and "julien040/hacker-news-posts" in message
    assert "set data.path" in message and "\n" not in message


# ---------------------------------------------------------------- split and ids


@pytest.mark.parametrize(("num_titles", "val_frac"), [(1000, 0.1), (999, 0.15), (1500, 0.5)])
def test_split_sizes(tiny_titles: Path, tmp_path: Path, num_titles: int, val_frac: float):
    ds = prepare_data(data_cfg(tiny_titles, num_titles=num_titles, val_frac=val_frac), SMALL_TOK,
                      tmp_path)
    n = int(num_titles * (1 - val_frac))
    assert (ds.info["train_titles"], ds.info["val_titles"]) == (n, num_titles - n)
    assert int((ds.train_ids == ds.eos_id).sum()) == n
    assert int((ds.val_ids == ds.eos_id).sum()) == num_titles - n


def test_fewer_titles_than_asked_uses_them_all(tiny_titles: Path, tmp_path: Path):
    ds = prepare_data(data_cfg(tiny_titles, num_titles=10**6), SMALL_TOK, tmp_path)
    assert ds.info["train_titles"] + ds.info["val_titles"] == 2000
    assert ds.info["train_titles"] == int(2000 * 0.9)


@pytest.mark.parametrize("vocab", [512, 16000])
def test_encode_batch_equals_encoding_the_joined_text(titles_csv: Path, vocab: int):
    titles = [t.strip() for t in raw_titles(titles_csv) if t.strip()]
    tokenizer = fit_tokenizer(titles, vocab)
    eos = tokenizer.token_to_id("<eos>")
    joined = tokenizer.encode("<eos>".join(titles) + "<eos>").ids
    assert encode_titles(tokenizer, titles, eos, np.uint16).tolist() == joined


@pytest.mark.parametrize("fit_on", ["train+val", "train"])
def test_prepare_data_matches_the_challenge(titles_csv: Path, tmp_path: Path, fit_on: str):
    data = data_cfg(titles_csv, num_titles=3000, seed=1337, val_frac=0.1)
    ds = prepare_data(data, TokenizerConfig(vocab_size=512, fit_on=fit_on), tmp_path)
    train, val, val_text = challenge_reference(load_titles(data), 0.1, 512, fit_on)
    assert ds.train_ids.dtype == ds.val_ids.dtype == torch.int64 and ds.train_ids.ndim == 1
    assert ds.train_ids.tolist() == train and ds.val_ids.tolist() == val
    assert ds.val_chars == len(val_text) and ds.val_bytes == len(val_text.encode("utf-8"))
    tokenizer = Tokenizer.from_file(str(ds.tokenizer_path))
    assert ds.vocab_size == tokenizer.get_vocab_size() and ds.eos_id == tokenizer.token_to_id("<eos>")
    assert np.load(ds.tokenizer_path.parent / "train.npy").dtype == np.uint16


# ---------------------------------------------------------------- cache


def test_second_call_hits_the_cache(tiny_titles: Path, tmp_path: Path):
    first = prepare_data(data_cfg(tiny_titles), SMALL_TOK, tmp_path)
    second = prepare_data(data_cfg(tiny_titles), SMALL_TOK, tmp_path)
    assert (first.info["cache_hit"], second.info["cache_hit"]) == (False, True)
    assert torch.equal(first.train_ids, second.train_ids)
    assert torch.equal(first.val_ids, second.val_ids)
    assert (first.val_chars, first.val_bytes, first.vocab_size, first.eos_id) == (
        second.val_chars, second.val_bytes, second.vocab_size, second.eos_id)
    assert first.info["cache_key"] == second.info["cache_key"] == first.tokenizer_path.parent.name


def test_key_changes_with_every_determining_setting(tiny_titles: Path, tmp_path: Path):
    base = cache_key(data_cfg(tiny_titles), SMALL_TOK)
    variants = [
        (data_cfg(tiny_titles, num_titles=1999), SMALL_TOK),
        (data_cfg(tiny_titles, seed=1), SMALL_TOK),
        (data_cfg(tiny_titles, val_frac=0.2), SMALL_TOK),
        (data_cfg(tiny_titles), TokenizerConfig(vocab_size=513)),
        (data_cfg(tiny_titles), TokenizerConfig(vocab_size=512, fit_on="train")),
        (DataConfig(num_titles=2000), SMALL_TOK),
    ]
    keys = [cache_key(d, t) for d, t in variants]
    assert base not in keys and len(set(keys)) == len(keys)
    copy = tmp_path / "copy.csv"  # same content elsewhere: same entry
    copy.write_bytes(tiny_titles.read_bytes())
    assert cache_key(data_cfg(copy), SMALL_TOK) == base
    copy.write_bytes(tiny_titles.read_bytes() + b"one more title\n")  # content matters
    assert cache_key(data_cfg(copy), SMALL_TOK) != base


@pytest.mark.parametrize("damage", ["no-meta", "truncated-ids", "no-tokenizer", "bad-meta",
                                    "meta-not-object"])
def test_corrupt_entry_is_rebuilt(tiny_titles: Path, tmp_path: Path, damage: str):
    first = prepare_data(data_cfg(tiny_titles), SMALL_TOK, tmp_path)
    entry = first.tokenizer_path.parent
    if damage == "no-meta":
        (entry / "meta.json").unlink()
    elif damage == "truncated-ids":
        (entry / "train.npy").write_bytes((entry / "train.npy").read_bytes()[:200])
    elif damage == "no-tokenizer":
        (entry / "tokenizer.json").unlink()
    elif damage == "bad-meta":
        (entry / "meta.json").write_text("{not json")
    else:
        (entry / "meta.json").write_text("[1, 2]")
    (tmp_path / f".tmp-{entry.name}-stale").mkdir()  # what a killed builder leaves
    again = prepare_data(data_cfg(tiny_titles), SMALL_TOK, tmp_path)
    assert again.info["cache_hit"] is False
    assert torch.equal(first.train_ids, again.train_ids)
    assert torch.equal(first.val_ids, again.val_ids)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [entry.name]
    assert prepare_data(data_cfg(tiny_titles), SMALL_TOK, tmp_path).info["cache_hit"] is True


CHILD = """
import json, sys
from pathlib import Path
from trainer.config import DataConfig, TokenizerConfig
from trainer.data import prepare_data
print("ready", flush=True)
sys.stdin.readline()  # the barrier: the parent releases both children at once
ds = prepare_data(DataConfig(path=sys.argv[1], num_titles=20000),
                  TokenizerConfig(vocab_size=2000), Path(sys.argv[2]))
print(json.dumps({"hit": ds.info["cache_hit"], "train": ds.train_ids.tolist(),
                  "val": ds.val_ids.tolist()}), flush=True)
"""


def test_two_processes_race_for_one_entry(titles_csv: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(titles_csv), str(cache)], cwd=REPO,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for _ in range(2)
    ]
    for child in children:  # both imported and waiting before either starts
        assert child.stdout.readline().strip() == "ready"
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    results = []
    for child in children:
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err
        results.append(json.loads(out))
    assert results[0]["train"] == results[1]["train"] and results[0]["val"] == results[1]["val"]
    assert sorted(r["hit"] for r in results) == [False, True]  # built once; the other waited
    dirs = [p.name for p in cache.iterdir() if p.is_dir()]
    assert dirs == [cache_key(DataConfig(path=titles_csv, num_titles=20000),
                              TokenizerConfig(vocab_size=2000))]
