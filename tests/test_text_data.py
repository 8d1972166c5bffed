"""The text task's ecosystem sources: lists of texts, JSONL, Hugging Face `datasets` (files,
directories, save_to_disk, streaming into token shards), pretrained tokenizers (a GPT-2 style
BPE directory, a tokenizer.json), and `train.epochs`. Every file is written here; nothing is
downloaded."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from interp.tasks import make_task
from interp.tasks.base import TaskConfigError
from interp.tasks.text import TextTask
from interp.tasks.text_sources import route_documents
from interp.tokenizers import Tokenizer, bpe_tokenizer, load_tokenizer

WORDS = "the quick brown fox jumps over lazy dogs while seven wizards quietly hex bad jumbo vats".split()


def documents(n: int = 60, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 25)))).capitalize() + "." for _ in range(n)]


DOCS = documents()
KW = dict(seq_len=16, split_fractions=[0.8, 0.1, 0.1])


def streams(task: TextTask) -> dict[str, np.ndarray]:
    out = {}
    for s in ("train", "val", "test"):
        ids = task.token_windows(s).stream
        out[s] = ids.numpy() if isinstance(ids, torch.Tensor) else np.concatenate(
            [np.zeros(0, np.int64)] + [np.asarray(a, dtype=np.int64) for a in ids.arrays])
    return out


def assert_same(a: TextTask, b: TextTask) -> None:
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    sa, sb = streams(a), streams(b)
    for s in sa:
        np.testing.assert_array_equal(sa[s].astype(np.int64), sb[s].astype(np.int64), err_msg=s)


def test_routing_keeps_proportions_and_never_shares_a_document():
    routed = list(route_documents((f"d{i}" for i in range(1000)), [0.9, 0.05, 0.05]))
    counts = np.bincount([k for k, _ in routed], minlength=3)
    assert counts.tolist() == [900, 50, 50]
    assert len({d for _, d in routed}) == 1000
    # interleaved: every block of 20 documents already holds a val and a test document
    assert all({k for k, _ in routed[i : i + 20]} == {0, 1, 2} for i in range(0, 1000, 20))


def test_list_of_texts(tmp_path):
    task = TextTask(texts=DOCS, tokenizer="char", **KW)
    tok = task.tokenizer
    routed = list(route_documents(DOCS, KW["split_fractions"]))
    train_text = [d for k, d in routed if k == 0]
    want = [i for d in train_text for i in tok.encode(d) + [tok.eos_token_id]]  # eos ends every document
    np.testing.assert_array_equal(streams(task)["train"], want)
    ex = task.split("val")[0]
    assert ex.input_ids[0] == tok.bos_token_id and len(ex.input_ids) == 16
    # the config rebuilds the task (texts included), as a checkpoint would
    config = task.config()
    assert config["texts"] == DOCS
    assert_same(make_task(**config), task)
    no_sep = TextTask(texts=DOCS, tokenizer="char", separator=None, **KW)
    assert len(streams(no_sep)["train"]) == len(want) - len(train_text)
    with pytest.raises(TaskConfigError, match="list of strings"):
        TextTask(texts="one string", **KW)


def test_jsonl_any_column_and_its_errors(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(DOCS)))
    task = TextTask(path=str(path), text_column="body", tokenizer="char", **KW)
    assert_same(task, TextTask(texts=DOCS, tokenizer="char", **KW))
    with pytest.raises(TaskConfigError, match=r"record 1 has no 'text' field \(it has \['body', 'id'\]\)"):
        TextTask(path=str(path), **KW)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    with pytest.raises(TaskConfigError, match="line 2 is not valid JSON"):
        TextTask(path=str(bad), **KW)
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"text": d} for d in DOCS]))
    assert_same(TextTask(path=str(listed), tokenizer="char", **KW), task)


def test_hf_datasets_files_directories_and_save_to_disk(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"content": DOCS, "n": list(range(len(DOCS)))})
    ref = TextTask(texts=DOCS, tokenizer="char", **KW)
    ds.to_parquet(str(tmp_path / "corpus.parquet"))
    ds.to_csv(str(tmp_path / "corpus.csv"), index=False)
    (tmp_path / "folder").mkdir()
    ds.to_json(str(tmp_path / "folder" / "part.jsonl"))
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(3))}).save_to_disk(str(tmp_path / "saved"))
    cache = str(tmp_path / "cache")  # the datasets cache goes to cache/datasets, not ~/.cache
    for name in ("corpus.parquet", "corpus.csv", "folder", "saved"):
        task = TextTask(path=str(tmp_path / name), text_column="content", tokenizer="char", cache_dir=cache, **KW)
        assert_same(task, ref)
    small = TextTask(path=str(tmp_path / "saved"), text_column="content", dataset_split="validation",
                     tokenizer="char", seq_len=4, split_fractions=[0.34, 0.33, 0.33], cache_dir=cache)
    assert small.tokenizer.vocab_size <= ref.tokenizer.vocab_size
    with pytest.raises(TaskConfigError, match=r"no column 'text'; its columns are \['content', 'n'\]"):
        TextTask(path=str(tmp_path / "corpus.parquet"), cache_dir=cache, **KW)
    with pytest.raises(TaskConfigError, match="splits"):
        TextTask(path=str(tmp_path / "saved"), text_column="content", dataset_split="nope", cache_dir=cache, **KW)


def test_streaming_writes_token_shards_equal_to_reading_in_memory(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": DOCS}).to_parquet(str(tmp_path / "corpus.parquet"))
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    for source, tokenizer in ((jsonl, "char"), (tmp_path / "corpus.parquet", "bpe")):
        kw = dict(KW, tokenizer=tokenizer, bpe_vocab_size=300, cache_dir=str(tmp_path / "cache"))
        in_memory = TextTask(path=str(source), **kw)
        streamed = TextTask(path=str(source), streaming=True, **kw)
        assert streamed._shards is not None  # trained from memory-mapped shards
        assert_same(streamed, in_memory)
        assert streamed.split("train")[5].input_ids == in_memory.split("train")[5].input_ids
    # the cache is reused while nothing changes, rebuilt when the source changes
    meta = next((tmp_path / "cache").glob("*/meta.json"))
    stamp = meta.stat().st_mtime_ns
    TextTask(path=str(jsonl), streaming=True, cache_dir=str(tmp_path / "cache"), tokenizer="char", **KW)
    assert meta.stat().st_mtime_ns == stamp
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[:-5]))
    TextTask(path=str(jsonl), streaming=True, cache_dir=str(tmp_path / "cache"), tokenizer="char", **KW)
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 3
    # a plain text file streams too (in pieces, no document separators)
    txt = tmp_path / "plain.txt"
    txt.write_text("\n".join(DOCS))
    plain = TextTask(path=str(txt), streaming=True, cache_dir=str(tmp_path / "cache"), tokenizer="char",
                     seq_len=16, split_fractions=[1.0, 0.0, 0.0])
    assert plain.tokenizer.decode(streams(plain)["train"].tolist()) == "\n".join(DOCS)


def gpt2_style_dir(tmp_path):
    """A GPT-2 style tokenizer directory, as `transformers` stores GPT-2's: byte-level BPE
    `vocab.json` + `merges.txt` and a tokenizer_config.json naming <|endoftext|> bos/eos/unk."""
    tok = bpe_tokenizer(" ".join(DOCS) * 3, vocab_size=300, specials=("<|endoftext|>",))
    folder = tmp_path / "gpt2_like"
    folder.mkdir()
    tok.hf.model.save(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "add_prefix_space": False, "model_max_length": 1024}))
    return folder


def test_pretrained_tokenizers_gpt2_style_directory_and_tokenizer_json(tmp_path):
    from transformers import AutoTokenizer

    folder = gpt2_style_dir(tmp_path)
    tok = load_tokenizer(folder)  # slow files: converted by transformers, offline
    hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    text = "The lazy wizards jump, quietly!"
    assert tok.encode(text) == hf.encode(text, add_special_tokens=False)
    assert tok.decode(tok.encode(text)) == text
    assert tok.bos_token_id == tok.eos_token_id == hf.eos_token_id  # roles from tokenizer_config.json
    task = TextTask(texts=DOCS, tokenizer=str(folder), **KW)
    assert task.tokenizer == tok
    train = streams(task)["train"]
    assert (train == tok.eos_token_id).sum() == sum(k == 0 for k, _ in route_documents(DOCS, KW["split_fractions"]))
    # the same through a saved tokenizer.json (and a directory transformers saved)
    tok.save(tmp_path / "saved")
    assert_same(TextTask(texts=DOCS, tokenizer=str(tmp_path / "saved" / "tokenizer.json"), **KW), task)
    hf.save_pretrained(tmp_path / "hf_saved")
    assert Tokenizer.load(tmp_path / "hf_saved").encode(text) == tok.encode(text)
    with pytest.raises(TaskConfigError, match=r"tokenizer='gpt2' is neither char \| bpe nor"):
        TextTask(texts=DOCS, tokenizer="gpt2", **KW)


def test_epochs_set_the_number_of_steps(tmp_path):
    from interp.checkpoint import read_metrics
    from interp.training import train

    cfg = {"name": "ep", "model": {"preset": "vanilla", "size": "tiny", "n_layers": 1, "d_model": 32},
           "task": {"name": "text", "texts": DOCS, "seq_len": 16, "split_fractions": [0.8, 0.1, 0.1]},
           "train": {"epochs": 1.5, "batch_size": 8, "grad_accum": 2, "warmup": 1, "eval_every": 1000,
                     "eval_batches": 1, "eval_generate": 0, "log_every": 1, "device": "cpu", "progress": False,
                     "out_dir": str(tmp_path / "run")}}
    out = train(cfg)
    n_train = len(TextTask(**{k: v for k, v in cfg["task"].items() if k != "name"}).split("train"))
    steps = math.ceil(1.5 * n_train / 16)
    assert out.name == f"step_{steps:06d}"
    assert max(r["step"] for r in read_metrics(tmp_path / "run") if r["event"] == "train") == steps
