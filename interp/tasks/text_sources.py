"""Where the text task's documents come from, and how a stream of them becomes token shards.

Sources (all local; nothing is downloaded):

* a list of strings from Python;
* a JSONL file (`.jsonl`; or `.json` holding a list of objects or strings), read line by line;
* anything Hugging Face `datasets` reads: a `.csv` / `.parquet` / `.arrow` file, a directory of
  data files (`load_dataset(dir)`), or a dataset saved with `save_to_disk` (`load_from_disk`),
  optionally `streaming` (an `IterableDataset`: rows are read as they are needed).

A document is one row's `text_column` (any column holding strings). Documents are routed to
train / val / test by `route_documents`: document i goes to the split furthest behind its
quota (`fractions * (i + 1)` minus what it already has), so the three splits interleave in
the given proportions, need no corpus length up front (streams), and never share a document.

`stream_to_shards` tokenizes a document stream split by split into the memory-mapped token
shard format of `interp.shards.write_shards` without holding the corpus in memory:
train tokens go straight to their shards, val / test tokens are spilled to temporary files
and copied into theirs afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from ..shards import read_shards, shard_dtype, write_shards
from .base import SPLITS, TaskConfigError

DATASET_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".arrow": "arrow", ".tsv": "csv"}
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
BATCH = 1000  # documents tokenized per batch


class DocumentSource:
    """A re-iterable stream of documents (str). `describe()` is a JSON-able identity used in
    cache keys: the file's path, size and mtime, or a hash of the texts."""

    def __init__(self, opener: Callable[[], Iterator[str]], identity: dict):
        self._open, self.identity = opener, identity

    def __iter__(self) -> Iterator[str]:
        return self._open()

    def limited(self, max_chars: Optional[int]) -> Iterator[str]:
        """Documents until `max_chars` characters were read (the last one cut to fit)."""
        if max_chars is None:
            yield from self
            return
        left = max_chars
        for doc in self:
            if left <= 0:
                return
            yield doc[:left]
            left -= len(doc)


def from_texts(texts: Sequence[str]) -> DocumentSource:
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TaskConfigError(f"text: texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()
    return DocumentSource(lambda: iter(texts), {"texts": len(texts), "sha256": digest})


TEXT_SUFFIXES = ("", ".txt", ".text", ".md")


def from_text_pieces(path: Path, piece_chars: int = 1 << 20) -> DocumentSource:
    """A plain text file read in pieces of `piece_chars` characters (for streaming)."""

    def pieces() -> Iterator[str]:
        with open(path, encoding="utf-8") as f:
            while piece := f.read(piece_chars):
                yield piece

    return DocumentSource(pieces, {**_file_identity(path), "pieces": piece_chars})


def _file_identity(path: Path) -> dict:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {"path": str(path.resolve()), "files": [(str(p.relative_to(path) if path.is_dir() else p.name),
                                                     p.stat().st_size, int(p.stat().st_mtime)) for p in files]}


def from_jsonl(path: Path, text_column: str) -> DocumentSource:
    """JSON lines (one object per line; a bare string is a document too), or one `.json` list."""

    def rows() -> Iterator[tuple[int, Any]]:
        with open(path, encoding="utf-8") as f:
            first = f.read(1)
            while first and first.isspace():
                first = f.read(1)
            f.seek(0)
            if path.suffix == ".json" and first == "[":
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise TaskConfigError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from None
                yield from enumerate(data, 1)
                return
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise TaskConfigError(f"{path}: line {n} is not valid JSON ({e.msg})") from None

    def docs() -> Iterator[str]:
        for n, row in rows():
            if isinstance(row, str):
                yield row
                continue
            if not isinstance(row, dict) or text_column not in row:
                keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise TaskConfigError(f"{path}: record {n} has no {text_column!r} field (it has {keys}); "
                                      "set task.text_column")
            value = row[text_column]
            if not isinstance(value, str):
                raise TaskConfigError(f"{path}: record {n}: {text_column!r} is {type(value).__name__}, not text")
            yield value

    return DocumentSource(docs, {**_file_identity(path), "column": text_column})


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / n).is_file() for n in ("dataset_dict.json", "state.json"))


def from_datasets(path: Path, text_column: str, split: Optional[str], streaming: bool,
                  cache_dir: Optional[str] = None) -> DocumentSource:
    """Rows of a Hugging Face dataset read from local files (or a `save_to_disk` directory)."""
    import datasets

    def load():
        if _is_saved_dataset(path):
            ds = datasets.load_from_disk(str(path))
        elif path.is_dir():
            ds = datasets.load_dataset(str(path), streaming=streaming, cache_dir=cache_dir)
        else:
            builder = DATASET_SUFFIXES.get(path.suffix.lower())
            if builder is None:
                raise TaskConfigError(f"text: cannot read {path}: suffix {path.suffix!r} is none of "
                                      f"{sorted(DATASET_SUFFIXES) + list(JSON_SUFFIXES) + ['.txt', '.md']}")
            ds = datasets.load_dataset(builder, data_files=str(path), streaming=streaming, cache_dir=cache_dir,
                                       **({"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}))
        if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            names = list(ds)
            want = split or ("train" if "train" in ds else (names[0] if len(names) == 1 else None))
            if want not in ds:
                raise TaskConfigError(f"text: dataset {path} has splits {names}; set task.dataset_split to one of them")
            ds = ds[want]
        if streaming and isinstance(ds, datasets.Dataset):
            ds = ds.to_iterable_dataset()
        return ds

    def docs() -> Iterator[str]:
        ds = load()
        columns = ds.column_names
        if columns is not None and text_column not in columns:
            raise TaskConfigError(f"text: dataset {path} has no column {text_column!r}; its columns are {columns} "
                                  "(set task.text_column)")
        for batch in ds.iter(batch_size=BATCH):
            if text_column not in batch:
                raise TaskConfigError(f"text: dataset {path} has no column {text_column!r}; its columns are "
                                      f"{sorted(batch)} (set task.text_column)")
            for value in batch[text_column]:
                if not isinstance(value, str):
                    raise TaskConfigError(f"text: column {text_column!r} of {path} holds {type(value).__name__}, "
                                          "not text")
                yield value

    return DocumentSource(docs, {**_file_identity(path), "column": text_column, "split": split})


def open_source(path: Path, text_column: str, split: Optional[str], streaming: bool,
                cache_dir: Optional[str] = None) -> DocumentSource:
    if path.is_file() and path.suffix.lower() in JSON_SUFFIXES:
        return from_jsonl(path, text_column)
    return from_datasets(path, text_column, split, streaming, cache_dir)


# ============================================================================ routing
def route_documents(docs: Iterable[str], fractions: Sequence[float]) -> Iterator[tuple[int, str]]:
    """(split index, document): each document goes to the split furthest behind its quota."""
    counts = [0] * len(fractions)
    for i, doc in enumerate(docs):
        k = max(range(len(fractions)), key=lambda s: (fractions[s] * (i + 1) - counts[s], -s))
        counts[k] += 1
        yield k, doc


def tokenized(docs: Iterable[tuple[int, str]], tokenizer: Any, separator: Optional[int]
              ) -> Iterator[tuple[int, np.ndarray]]:
    """(split index, token ids) per document, batch-encoded, `separator` appended to each."""
    batch: list[tuple[int, str]] = []

    def flush():
        ids = tokenizer.encode_batch([d for _, d in batch])
        for (k, _), row in zip(batch, ids):
            if separator is not None:
                row = list(row) + [separator]
            yield k, np.asarray(row, dtype=np.int64)
        batch.clear()

    for item in docs:
        batch.append(item)
        if len(batch) == BATCH:
            yield from flush()
    if batch:
        yield from flush()


def split_arrays(docs: Iterable[str], fractions: Sequence[float], tokenizer: Any, separator: Optional[int]
                 ) -> dict[str, np.ndarray]:
    """In memory: each split's token stream as one int64 array."""
    parts: dict[int, list[np.ndarray]] = {k: [] for k in range(len(SPLITS))}
    for k, ids in tokenized(route_documents(docs, fractions), tokenizer, separator):
        parts[k].append(ids)
    return {name: (np.concatenate(parts[k]) if parts[k] else np.zeros(0, np.int64)) for k, name in enumerate(SPLITS)}


# ============================================================================ streaming to shards
def default_cache_dir() -> Path:
    root = os.environ.get("INTERP_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "interp"
    return Path(root) / "text_shards"


def cache_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]


def stream_to_shards(docs: Iterable[str], fractions: Sequence[float], tokenizer: Any, separator: Optional[int],
                     out_dir: Path, identity: dict, shard_tokens: int = 100_000_000) -> Path:
    """Tokenize a document stream into `out_dir` (token shards + meta.json + tokenizer.json);
    reused as it is when `out_dir/meta.json` records the same `identity`."""
    meta_file = out_dir / "meta.json"
    if meta_file.is_file():
        try:
            if json.loads(meta_file.read_text()).get("task", {}).get("source") == identity:
                read_shards(out_dir)  # checks every shard is complete
                return out_dir
        except (ValueError, json.JSONDecodeError):
            pass  # incomplete or foreign: rewrite
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = shard_dtype(tokenizer.vocab_size)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".spill-") as tmp:
        spill = {k: open(Path(tmp) / f"{name}.bin", "wb") for k, name in enumerate(SPLITS) if k}
        stream = tokenized(route_documents(docs, fractions), tokenizer, separator)

        def train_chunks() -> Iterator[np.ndarray]:
            for k, ids in stream:
                if k == 0:
                    yield ids
                else:
                    spill[k].write(ids.astype(dtype).tobytes())
            for f in spill.values():
                f.close()

        def spilled(name: str) -> Iterator[np.ndarray]:
            data = np.fromfile(Path(tmp) / f"{name}.bin", dtype=dtype)
            for start in range(0, len(data), 1 << 20):
                yield data[start : start + (1 << 20)]

        # dicts keep their order: train is consumed (and val/test spilled) before val is read
        chunks = {"train": train_chunks(), "val": spilled("val"), "test": spilled("test")}
        write_shards(out_dir, chunks, tokenizer.vocab_size, tokenizer, {"source": identity}, shard_tokens)
    return out_dir
