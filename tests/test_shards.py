"""interp.shards: token shards round-trip through write/read and ShardStream, the write shows
real token counts on its progress bar, and `interp data prepare` reports each split's tokens."""

from __future__ import annotations

import numpy as np
import torch
from typer.testing import CliRunner

from interp.cli import app
from interp.shards import ShardStream, WindowTensors, read_shards, shard_dtype, write_shards
from interp.tokenizers import char_tokenizer

TOK = char_tokenizer("abcdefgh")


def test_round_trip_across_shard_files(tmp_path, capsys):
    ids = {"train": [np.arange(2500) % 11, np.arange(700) % 11], "val": [np.arange(300) % 11]}
    write_shards(tmp_path, ids, TOK.vocab_size, TOK, {"name": "t"}, shard_tokens=1000)
    err = capsys.readouterr().err
    assert "train: 100%" in err and "3.20k/3.20k" in err and "300/300" in err  # real counts, not "0.00tok"
    meta = read_shards(tmp_path)
    assert meta["dtype"] == shard_dtype(TOK.vocab_size).name == "uint16"
    files = meta["splits"]["train"]["files"]
    assert [f["n_tokens"] for f in files] == [1000, 1000, 1000, 200] and meta["splits"]["train"]["n_tokens"] == 3200
    stream = ShardStream(meta["splits"]["train"]["arrays"])
    want = np.concatenate(ids["train"])
    starts = stream.window_starts(window=100, stride=450)
    assert all(s // 1000 == (s + 99) // 1000 for s in starts)  # no window crosses a shard file
    rows = stream.gather(starts, 100)
    assert torch.equal(rows, torch.from_numpy(np.stack([want[s : s + 100] for s in starts]).astype(np.int64)))
    windows = WindowTensors(stream, torch.as_tensor(starts), 100, bos_id=1)
    batch = windows.rows(torch.tensor([0, 2]))
    assert batch.input_ids.shape == (2, 101) and (batch.input_ids[:, 0] == 1).all() and (batch.labels[:, 0] == -100).all()


def test_data_prepare_reports_the_tokens_of_each_split(tmp_path):
    config = tmp_path / "text.yaml"
    (tmp_path / "corpus.txt").write_text("to be or not to be, that is the question\n" * 200)
    config.write_text(f"task: {{name: text, path: {tmp_path / 'corpus.txt'}, tokenizer: char, seq_len: 32}}\n")
    result = CliRunner().invoke(app, ["data", "prepare", "--config", str(config), "--out", str(tmp_path / "shards")])
    assert result.exit_code == 0, result.output
    counts = {s: i["n_tokens"] for s, i in read_shards(tmp_path / "shards")["splits"].items()}
    assert sum(counts.values()) == 41 * 200 and counts["train"] > 0  # one token per character
    assert f"train {counts['train']:,} · val {counts['val']:,} · test {counts['test']:,} tokens" in result.output
    assert "M tokens/s" in result.output
