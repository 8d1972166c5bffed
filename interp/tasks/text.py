"""Language modelling on text: a text file (default `data/tinyshakespeare.txt`), a list of
texts, a JSONL file or any local Hugging Face `datasets` source, optionally streamed.

```yaml
task: {name: text, path: data/tinyshakespeare.txt, tokenizer: char, seq_len: 128}
task: {name: text, path: corpus.jsonl, text_column: body, tokenizer: path/to/gpt2_tokenizer_dir}
task: {name: text, path: big_corpus/, streaming: true, tokenizer: tokenizer.json, seq_len: 1024}
```
```python
TextTask(texts=["first document", "second document", ...], tokenizer="bpe")
```

Options: `path` (the corpus; relative paths are tried from the working directory, then from
the repository root): a `.txt` file, a `.jsonl` / `.json` file, a `.csv` / `.parquet` /
`.arrow` file, a directory of such files, or a `datasets` `save_to_disk` directory;
`texts` (a list of strings instead of `path`; they are kept in the task config, so
checkpoints can rebuild the task); `text_column` ("text": the field or column holding the
documents); `dataset_split` (None: "train", or the only split); `streaming` (false: read
the corpus into memory; true: read it once as a stream and tokenize it into token shards
under `cache_dir` (None: `~/.cache/interp/text_shards/<key>`, reused while the source,
tokenizer and options are unchanged), then train from the memory-mapped shards);
`cache_dir` also holds the `datasets` cache (`cache_dir/datasets`; None: its default);
`tokenizer` (`char` | `bpe` | a path to a `tokenizer.json` or a `transformers` tokenizer
directory such as GPT-2's), `seq_len` (128, tokens per example including `<bos>`),
`bpe_vocab_size` (512), `split_fractions` ([0.9, 0.05, 0.05]), `stride` (None = `seq_len -
1`, i.e. back-to-back windows; smaller values overlap windows *within* a split), `bos`
(true), `separator` ("eos": the eos token ends every document; null: documents run into
each other), `max_chars` (None = everything; a prefix for quick runs), `n_train` / `n_val` /
`n_test` (None = every window of the split; a number takes a seeded random subset, kept in
corpus order), `seed` (0), `shards` (None; a directory written by `interp data prepare`:
the splits are read from its memory-mapped token shards and its `tokenizer.json`, and every
source and tokenizer option is ignored, since the shards were cut with them).

Splits never share text. A `.txt` file is one text: train = its first 90% of characters,
val the next 5%, test the last 5%, each range tokenized on its own. Every other source is a
sequence of documents, routed to the splits in the given proportions, interleaved (see
`text_sources.route_documents`; streaming and in-memory reading route identically), each
split's documents joined into one token stream. The char vocabulary is every character of
the whole corpus (so val/test never hit an unknown character; only the alphabet is shared);
BPE merges are learned from the train split only; a pretrained tokenizer is used as it is.

An example is `<bos>` + `seq_len - 1` corpus tokens. `<bos>` is the prompt (segment 0, not a
target); every corpus token is a target (segment 2, "answer"). Without `bos` the first token
plays the prompt. Windows cut text mid-stream. `answer_spans` scores the last token of the
window given the rest (next-token accuracy).
"""

from __future__ import annotations

import random
from collections.abc import Sequence as SequenceABC
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..paths import looked_in, shipped
from ..shards import ShardStream, WindowTensors, read_shards
from ..tokenizers import Tokenizer, bpe_tokenizer, char_tokenizer, load_tokenizer
from . import text_sources as sources
from .base import ANSWER, IGNORE_INDEX, PROMPT, SPLITS, Example, Task, TaskConfigError, check_int

__all__ = ["TextTask", "DEFAULT_PATH", "resolve_path"]

DEFAULT_PATH = "data/tinyshakespeare.txt"
BUILT_TOKENIZERS = ("char", "bpe")


def resolve_path(path: Union[str, Path], what: str = "text corpus") -> Path:
    """A file or directory, from the working directory or else the repository root."""
    p = shipped(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} not found ({looked_in()})")
    return p


class _Windows(SequenceABC):
    """Examples made on access from one split's token ids (cheap to hold, cheap to index).
    `ids` is an int array, or a `ShardStream` over memory-mapped shards."""

    def __init__(self, task: "TextTask", ids, starts: Sequence[int], split: str):
        self.task, self.ids, self.starts, self.split = task, ids, starts, split

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        s = int(self.starts[i])
        w = self.task.window
        if isinstance(self.ids, np.ndarray):
            ids = self.ids[s : s + w].tolist()
        else:
            ids = self.ids.gather(np.array([s]), w)[0].tolist()
        return self.task._example(ids, split=self.split, start=s)


class TextTask(Task):
    name = "text"

    def __init__(
        self,
        path: Optional[str] = DEFAULT_PATH,
        tokenizer: str = "char",
        seq_len: int = 128,
        bpe_vocab_size: int = 512,
        split_fractions: Sequence[float] = (0.9, 0.05, 0.05),
        stride: Optional[int] = None,
        bos: bool = True,
        max_chars: Optional[int] = None,
        n_train: Optional[int] = None,
        n_val: Optional[int] = None,
        n_test: Optional[int] = None,
        seed: int = 0,
        shards: Optional[str] = None,
        texts: Optional[Sequence[str]] = None,
        text_column: str = "text",
        dataset_split: Optional[str] = None,
        streaming: bool = False,
        separator: Optional[str] = "eos",
        cache_dir: Optional[str] = None,
    ):
        t = self.name
        if not isinstance(tokenizer, str) or not tokenizer:
            raise TaskConfigError(f"{t}: tokenizer must be char | bpe | a path to a tokenizer, got {tokenizer!r}")
        check_int(t, "seq_len", seq_len, 2 if bos else 1)
        check_int(t, "stride", stride, 1, optional=True)
        check_int(t, "max_chars", max_chars, 1, optional=True)
        for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            check_int(t, name, v, 0, optional=True)
        check_int(t, "seed", seed, 0)
        fr = list(split_fractions)
        if len(fr) != 3 or any(not isinstance(f, (int, float)) or f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
            raise TaskConfigError(f"{t}: split_fractions must be 3 non-negative numbers summing to 1, got {fr}")
        if separator not in ("eos", None):
            raise TaskConfigError(f"{t}: separator must be 'eos' or null, got {separator!r}")
        if texts is not None:
            if isinstance(texts, str) or not isinstance(texts, SequenceABC):
                raise TaskConfigError(f"{t}: texts must be a list of strings, got {type(texts).__name__}")
            path = None
        if not isinstance(text_column, str) or not text_column:
            raise TaskConfigError(f"{t}: text_column must name a column, got {text_column!r}")
        # new options enter the stored config only when used, so older configs stay unchanged
        extra = {k: v for k, v, default in (
            ("shards", str(shards) if shards else None, None), ("texts", list(texts) if texts is not None else None, None),
            ("text_column", text_column, "text"), ("dataset_split", dataset_split, None),
            ("streaming", bool(streaming), False), ("separator", separator, "eos"), ("cache_dir", cache_dir, None),
        ) if v != default}
        super().__init__(
            path=None if path is None else str(path), tokenizer=tokenizer, seq_len=seq_len,
            bpe_vocab_size=bpe_vocab_size, split_fractions=fr, stride=stride, bos=bos, max_chars=max_chars,
            n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, **extra,
        )
        self.seq_len, self.bos = seq_len, bool(bos)
        self.window = seq_len - (1 if bos else 0)  # corpus tokens per example
        self.stride = stride or self.window
        self._sizes = {"train": n_train, "val": n_val, "test": n_test}
        self._seed = seed
        self._shards = None
        self._arrays: Optional[dict[str, np.ndarray]] = None
        if shards:
            self._open_shards(shipped(shards))
        elif texts is not None:
            self._read_documents(sources.from_texts(list(texts)), tokenizer, fr, bpe_vocab_size, max_chars,
                                 separator, streaming, cache_dir)
        else:
            if path is None:
                raise TaskConfigError(f"{t}: give a path (file or directory), texts, or shards")
            p = resolve_path(path)
            plain = p.is_file() and p.suffix.lower() in sources.TEXT_SUFFIXES
            if plain and not streaming:
                self._read_single_text(p, tokenizer, fr, bpe_vocab_size, max_chars)
            else:  # a plain text streams as 1M-character pieces, which are not documents: no separator
                hf_cache = str(Path(cache_dir).expanduser() / "datasets") if cache_dir else None
                source = (sources.from_text_pieces(p) if plain
                          else sources.open_source(p, text_column, dataset_split, bool(streaming), hf_cache))
                self._read_documents(source, tokenizer, fr, bpe_vocab_size, max_chars,
                                     None if plain else separator, streaming, cache_dir)
        if self.bos and self.tokenizer.bos_token_id is None:
            raise TaskConfigError(f"{t}: bos=true but the tokenizer {self.tokenizer!r} has no bos token; set bos: false")

    # ------------------------------------------------------------------ reading
    def _open_shards(self, shard_dir: Path) -> None:
        meta = read_shards(shard_dir)
        self._shards = {k: ShardStream(v["arrays"]) for k, v in meta["splits"].items()}
        self.tokenizer = load_tokenizer(shard_dir / meta["tokenizer"])
        missing = [s for s in SPLITS if s not in self._shards]
        if missing:
            raise TaskConfigError(f"{self.name}: shards {str(shard_dir)!r} have no split(s) {missing}")

    def _read_single_text(self, path: Path, tokenizer: str, fr: list, bpe_vocab_size: int,
                          max_chars: Optional[int]) -> None:
        """One text file: contiguous character ranges per split (the original behaviour)."""
        text = path.read_text(encoding="utf-8")
        if max_chars is not None:
            text = text[:max_chars]
        n = len(text)
        c1 = int(n * fr[0])
        c2 = c1 + int(n * fr[1])
        self.char_ranges = {"train": (0, c1), "val": (c1, c2), "test": (c2, n)}
        self._text = text
        if tokenizer == "char":
            self.tokenizer: Tokenizer = char_tokenizer(text)
        elif tokenizer == "bpe":
            self.tokenizer = bpe_tokenizer(text[:c1], vocab_size=bpe_vocab_size)
        else:
            self.tokenizer = self._pretrained(tokenizer)
        self._arrays = {name: np.asarray(self.tokenizer.encode(text[lo:hi]), dtype=np.int64)
                        for name, (lo, hi) in self.char_ranges.items()}

    def _pretrained(self, tokenizer: str) -> Tokenizer:
        try:
            return load_tokenizer(resolve_path(tokenizer, what="tokenizer"))
        except FileNotFoundError as e:
            raise TaskConfigError(f"{self.name}: tokenizer={tokenizer!r} is neither {' | '.join(BUILT_TOKENIZERS)} nor "
                                  f"an existing tokenizer.json / tokenizer directory ({e})") from None

    def _read_documents(self, source: "sources.DocumentSource", tokenizer: str, fr: list, bpe_vocab_size: int,
                        max_chars: Optional[int], separator: Optional[str], streaming: bool,
                        cache_dir: Optional[str]) -> None:
        docs = lambda: source.limited(max_chars)  # noqa: E731  (re-iterable: a stream is read once per pass)
        if tokenizer == "char":
            chars: set[str] = set()
            for doc in docs():
                chars.update(doc)
            self.tokenizer = char_tokenizer("".join(sorted(chars)))
        elif tokenizer == "bpe":
            train_docs = (d for k, d in sources.route_documents(docs(), fr) if k == 0)
            self.tokenizer = bpe_tokenizer(train_docs, vocab_size=bpe_vocab_size)
        else:
            self.tokenizer = self._pretrained(tokenizer)
        sep = None
        if separator == "eos":
            sep = self.tokenizer.eos_token_id
            if sep is None:
                raise TaskConfigError(f"{self.name}: separator='eos' but the tokenizer has no eos token; "
                                      "set separator: null")
        if not streaming:
            self._arrays = sources.split_arrays(docs(), fr, self.tokenizer, sep)
            return
        identity = {"source": source.identity, "max_chars": max_chars, "split_fractions": fr, "separator": sep,
                    "tokenizer": self.tokenizer.to_json_str()}
        key = sources.cache_key(identity)
        out = Path(cache_dir).expanduser() / key if cache_dir else sources.default_cache_dir() / key
        self._open_shards(sources.stream_to_shards(docs(), fr, self.tokenizer, sep, out, {"key": key}))

    # ------------------------------------------------------------------ examples
    def _example(self, ids: list[int], split: str = "", start: int = 0) -> Example:
        if self.bos:
            input_ids = [self.tokenizer.bos_token_id] + list(ids)
            labels = [IGNORE_INDEX] + list(ids)
        else:
            input_ids = list(ids)
            labels = [IGNORE_INDEX] + list(ids[1:])
        segments = [PROMPT] + [ANSWER] * (len(input_ids) - 1)
        return Example(input_ids, labels, segments, self.tokenizer.decode(input_ids), dict(split=split, start=start))

    def token_ids(self, name: str):
        """The split's token stream: an int64 array, or a `ShardStream` for shards on disk."""
        if self._shards is not None:
            return self._shards[name]
        return self._arrays[name]

    def _build_splits(self) -> dict[str, Sequence[Example]]:
        out = {}
        for k, name in enumerate(SPLITS):
            ids = self.token_ids(name)
            if isinstance(ids, np.ndarray):
                starts = np.arange(0, len(ids) - self.window + 1, self.stride, dtype=np.int64)
            else:
                starts = ids.window_starts(self.window, self.stride)
            want = self._sizes[name]
            if want is not None:
                if want > len(starts):
                    raise TaskConfigError(
                        f"{self.name}: n_{name}={want} but the {name} range has only {len(starts)} windows "
                        f"of {self.window} tokens"
                    )
                picked = sorted(random.Random(self._seed * 1_000_003 + k).sample(range(len(starts)), want))
                starts = starts[picked]
            out[name] = _Windows(self, ids, starts, name)
        return out

    def token_windows(self, split: str):
        """The split as a `interp.shards.WindowTensors` (token stream + window starts) on
        the CPU: the trainer gathers batches from it on the device without building Examples."""
        windows = self.split(split)
        starts = torch.as_tensor(np.asarray(windows.starts, dtype=np.int64))
        stream = torch.from_numpy(windows.ids) if isinstance(windows.ids, np.ndarray) else windows.ids
        return WindowTensors(stream, starts, self.window, self.tokenizer.bos_token_id if self.bos else None)

    def lengths(self, split: str) -> list[int]:
        return [self.seq_len] * len(self.split(split))

    @property
    def max_len(self) -> int:
        return self.seq_len

    def answer_spans(self, example: Example) -> tuple[list[int], list[int]]:
        """Next-token accuracy at the window's end: (all but the last token, [last token])."""
        return list(example.input_ids[:-1]), list(example.input_ids[-1:])
