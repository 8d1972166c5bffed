"""Caching activations: name filters, sliced caches, and a disk-backed activation store.

```python
from interp import cache
acts = cache.cached(model, tokens, names=["pattern", "resid_post"], batch=0, pos=slice(-4, None))
acts["blocks.0.attn.hook_pattern"]            # (head, 4, k): queries sliced, keys kept

store = cache.ActivationStore("runs/acts", model, names=["resid_post"], shard_examples=512)
store.write(dataset)                            # resumable, atomic safetensors shards
view = cache.ActivationStore.open("runs/acts")["blocks.1.hook_resid_post"]
len(view); view[3]; view[10:20]; for x in view.iter_batches(64): ...
```

Name filters (`names=`) accept, alone or in a list (any match selects the hook):
* an exact hook name: "blocks.0.attn.hook_pattern";
* a hook kind, the last name component with or without "hook_": "pattern", "hook_resid_post",
  "xt_post", "ln_final.hook_scale" is exact;
* a regular expression matched against the whole name: r"blocks\\.[01]\\.hook_resid_.*";
* a compiled `re.Pattern` (searched), or a callable `name -> bool`.
`None` selects every hook. A filter that matches no hook of the model raises, naming it.

Positions: every hook is (batch, pos, ...) except `attn_scores`/`pattern`, which are
(batch, head, q_pos, k_pos); "pos" slicing applies to the query axis of those.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import torch
from jaxtyping import Int
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

NameFilter = Union[None, str, re.Pattern, Callable[[str], bool], Sequence[Union[str, re.Pattern, Callable[[str], bool]]]]
Index = Union[None, int, slice, Sequence[int], torch.Tensor]

QK_HOOKS = ("hook_attn_scores", "hook_pattern")  # (batch, head, q, k)

__all__ = [
    "names_filter",
    "resolve_names",
    "pos_dims",
    "cached",
    "ActivationStore",
    "StoreReader",
    "HookView",
]


# ---------------------------------------------------------------------------- name filters
def _matcher(item) -> Callable[[str], bool]:
    if callable(item) and not isinstance(item, (str, re.Pattern)):
        return item
    if isinstance(item, re.Pattern):
        return lambda name: item.search(name) is not None
    if not isinstance(item, str):
        raise TypeError(f"name filter items must be str, re.Pattern or callable, got {type(item).__name__}")
    kind = item if item.startswith("hook_") else f"hook_{item}"
    try:
        rx = re.compile(item)
    except re.error:
        rx = None

    def match(name: str) -> bool:
        if name == item or name.rsplit(".", 1)[-1] == kind:
            return True
        return rx is not None and rx.fullmatch(name) is not None

    return match


def names_filter(names: NameFilter) -> Callable[[str], bool]:
    """A `name -> bool` predicate for `names` (see the module docstring for the forms)."""
    if names is None:
        return lambda name: True
    items = [names] if isinstance(names, (str, re.Pattern)) or callable(names) else list(names)
    matchers = [_matcher(i) for i in items]
    return lambda name: any(m(name) for m in matchers)


def resolve_names(model, names: NameFilter) -> list[str]:
    """The model's hook names (in forward order) selected by `names`.

    Raises `ValueError` naming every filter item that matches no hook, so typos fail loudly.
    """
    all_names = list(model.hook_dict)
    if names is None:
        return all_names
    items = [names] if isinstance(names, (str, re.Pattern)) or callable(names) else list(names)
    if not items:
        raise ValueError("names=[] selects no hook; pass None for every hook")
    unmatched = [i for i in items if not any(_matcher(i)(n) for n in all_names)]
    if unmatched:
        examples = ", ".join(all_names[:6])
        raise ValueError(
            f"name filter(s) {unmatched!r} match no hook of this model "
            f"(cfg.name={getattr(model.cfg, 'name', '?')!r}); hook names look like: {examples}, ..."
        )
    pred = names_filter(items)
    return [n for n in all_names if pred(n)]


def pos_dims(name: str) -> tuple[int, ...]:
    """Position axes of a batched activation: (1,) for (batch, pos, ...), (2, 3) for
    (batch, head, q, k) attention scores / patterns."""
    return (2, 3) if name.rsplit(".", 1)[-1] in QK_HOOKS else (1,)


# ---------------------------------------------------------------------------- cached
def _index(x: torch.Tensor, dim: int, idx: Index) -> torch.Tensor:
    if idx is None:
        return x
    if isinstance(idx, int):
        return x.narrow(dim, idx % x.shape[dim], 1)
    if isinstance(idx, slice):
        return x[(slice(None),) * dim + (idx,)]
    return x.index_select(dim, torch.as_tensor(idx, dtype=torch.long, device=x.device))


@torch.no_grad()
def cached(
    model,
    tokens: Int[torch.Tensor, "batch pos"],
    names: NameFilter = None,
    batch: Index = None,
    pos: Index = None,
    attention_mask: Optional[torch.Tensor] = None,
    return_logits: bool = False,
    **forward_kwargs,
):
    """Run `model` once and return an `ActivationCache` of the hooks selected by `names`.

    Args:
        tokens: (batch, pos) ids, or (pos,) for one sequence.
        names: hook filter (module docstring); None caches every hook.
        batch: int (drops the batch axis: `has_batch_dim=False`, as TL's `remove_batch_dim`),
            slice, or a list/tensor of indices.
        pos: int (kept as a length-1 axis so shapes stay uniform), slice, or indices. For
            `attn_scores`/`pattern` it slices the query axis only; keys stay complete so each
            row is still a full distribution.
        attention_mask: (batch, pos), True = real token.
        return_logits: also return the (sliced) logits: `(logits, cache)`.
    Only layers whose pattern/scores are selected leave the fused attention path.
    """
    if tokens.ndim == 1:
        tokens = tokens[None]
    keep = set(resolve_names(model, names))
    logits, cache = model.run_with_cache(
        tokens, names_filter=lambda n: n in keep, attention_mask=attention_mask, **forward_kwargs
    )
    data = {}
    for name, act in cache.cache_dict.items():
        act = _index(act, pos_dims(name)[0], pos)
        data[name] = act[batch] if isinstance(batch, int) else _index(act, 0, batch)
    logits = _index(logits, 1, pos)
    logits = logits[batch] if isinstance(batch, int) else _index(logits, 0, batch)
    out = type(cache)(data, model, has_batch_dim=not isinstance(batch, int))
    return (logits, out) if return_logits else out


# ---------------------------------------------------------------------------- the store
def _unpack_batch(item) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(input_ids, attention_mask or None) from a tensor, a dict or an object with fields."""
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, dict):
        return item["input_ids"], item.get("attention_mask")
    if hasattr(item, "input_ids"):
        return item.input_ids, getattr(item, "attention_mask", None)
    if isinstance(item, (list, tuple)) and item and isinstance(item[0], torch.Tensor):
        return item[0], item[1] if len(item) > 1 else None
    raise TypeError(
        f"dataset items must be a (batch, pos) tensor, a dict with 'input_ids' (and optional "
        f"'attention_mask'), or an object with .input_ids; got {type(item).__name__}"
    )


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _pad_stack(tensors: list[torch.Tensor], dims: tuple[int, ...]) -> torch.Tensor:
    """Stack per-example tensors, right-padding each axis in `dims` (example axes, no batch)
    with zeros to the longest."""
    width = max((t.shape[dims[0]] for t in tensors), default=0)
    out = []
    for t in tensors:
        pad = []
        for d in reversed(range(t.ndim)):
            pad += [0, width - t.shape[d]] if d in dims else [0, 0]
        out.append(torch.nn.functional.pad(t, pad) if any(pad) else t)
    return torch.stack(out)


MANIFEST = "manifest.json"
FORMAT = "interp.activation_store/1"


class ActivationStore:
    """Stream chosen hooks of `model` over a dataset into safetensors shards on disk.

    Layout of `directory`:
        manifest.json            config + the list of completed shards (written atomically)
        shard_00000.safetensors  one tensor per hook, plus "tokens" and "lengths"

    Padding: each example is stored with its real tokens only (positions where
    `attention_mask` is True, left or right padding alike), right-padded with zeros to the
    longest example in its shard; `lengths` (n,) holds the real lengths, and readers trim
    with it. A hook of shape (batch, pos, *rest) is stored as (n, T, *rest); patterns
    (batch, head, q, k) as (n, head, T, T).

    Memory is bounded: at most `shard_examples` examples (and about `shard_bytes` bytes) of
    activations are buffered before a shard is written, plus one model batch.

    Resuming: `write` re-reads the manifest; examples already in completed shards are
    skipped without running the model (the dataset must yield the same examples in the same
    order). A shard is written to a temporary file and renamed, and only then recorded in
    the manifest, so a crash never leaves a half shard that a reader would see.
    """

    def __init__(
        self,
        directory: Union[str, os.PathLike],
        model,
        names: NameFilter,
        shard_examples: int = 1024,
        shard_bytes: int = 256 * 2**20,
        dtype: Optional[torch.dtype] = None,
        batch_size: int = 32,
        progress: bool = True,
    ):
        if shard_examples < 1 or shard_bytes < 1:
            raise ValueError(f"shard_examples ({shard_examples}) and shard_bytes ({shard_bytes}) must be >= 1")
        self.dir = Path(directory)
        self.model = model
        self.names = resolve_names(model, names)
        self.shard_examples = shard_examples
        self.shard_bytes = shard_bytes
        self.dtype = dtype
        self.batch_size = batch_size
        self.progress = progress

    # ------------------------------------------------------------------ writing
    def _manifest(self) -> dict:
        path = self.dir / MANIFEST
        config = dict(
            format=FORMAT,
            hooks=self.names,
            model=getattr(self.model.cfg, "name", "custom"),
            shard_examples=self.shard_examples,
            shard_bytes=self.shard_bytes,
        )
        if path.exists():
            manifest = json.loads(path.read_text())
            old = {k: manifest.get(k) for k in config}
            if old != config:
                raise ValueError(
                    f"{path} was written with a different configuration {old}; "
                    f"now {config}: use a new directory or delete this one"
                )
            return manifest
        return dict(config, shards=[], n_examples=0, complete=False)

    def _batches(self, dataset) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor]]]:
        if isinstance(dataset, torch.Tensor):
            if dataset.ndim != 2:
                raise ValueError(f"a tensor dataset must be (n, pos) token ids, got shape {tuple(dataset.shape)}")
            for i in range(0, len(dataset), self.batch_size):
                yield dataset[i : i + self.batch_size], None
        else:
            for item in dataset:
                yield _unpack_batch(item)

    @torch.no_grad()
    def write(self, dataset: Union[torch.Tensor, Iterable], max_examples: Optional[int] = None) -> "StoreReader":
        """Run the model over `dataset` and write shards; returns a reader of the store.

        `dataset`: an (n, pos) tensor (split into `batch_size` rows), or an iterable of
        batches (tensors, dicts with input_ids/attention_mask, or objects with those fields).
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob("*.tmp"):
            stale.unlink()
        manifest = self._manifest()
        done = manifest["n_examples"]
        total = len(dataset) if isinstance(dataset, torch.Tensor) else None  # batches: open-ended
        if max_examples is not None:
            total = max_examples if total is None else min(total, max_examples)
        keep = set(self.names)
        bar = tqdm(total=total, initial=done, desc=f"activations -> {self.dir.name}", unit="ex",
                   disable=not self.progress)
        buffer: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        buf_tokens: list[torch.Tensor] = []
        buf_bytes = 0
        seen = 0

        def flush() -> None:
            nonlocal buf_bytes, buf_tokens, buffer
            if not buf_tokens:
                return
            index = len(manifest["shards"])
            fname = f"shard_{index:05d}.safetensors"
            tensors = {n: _pad_stack(buffer[n], tuple(d - 1 for d in pos_dims(n))).contiguous() for n in self.names}
            tensors["tokens"] = _pad_stack(buf_tokens, (0,))
            tensors["lengths"] = torch.tensor([len(t) for t in buf_tokens], dtype=torch.long)
            tmp = self.dir / (fname + ".tmp")
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
            os.replace(tmp, self.dir / fname)
            start = manifest["n_examples"]
            manifest["shards"].append(dict(file=fname, start=start, stop=start + len(buf_tokens)))
            manifest["n_examples"] = start + len(buf_tokens)
            _write_json_atomic(self.dir / MANIFEST, manifest)
            buffer = {n: [] for n in self.names}
            buf_tokens, buf_bytes = [], 0

        try:
            for tokens, mask in self._batches(dataset):
                if max_examples is not None and seen >= max_examples:
                    break
                if tokens.ndim == 1:
                    tokens = tokens[None]
                    mask = None if mask is None else mask[None]
                n = len(tokens)
                if max_examples is not None:
                    n = min(n, max_examples - seen)
                lo = max(0, done - seen)  # rows already stored by an earlier run
                seen += n
                if lo >= n:
                    continue
                tokens = tokens[lo:n]
                mask = None if mask is None else mask[lo:n].bool()
                _, cache = self.model.run_with_cache(
                    tokens.to(self.model.cfg.device), names_filter=lambda name: name in keep,
                    attention_mask=None if mask is None else mask.to(self.model.cfg.device),
                )
                for b in range(len(tokens)):
                    real = torch.arange(tokens.shape[1]) if mask is None else mask[b].nonzero().flatten()
                    real_dev = real.to(self.model.cfg.device)
                    for name in self.names:
                        act = cache[name][b]
                        for d in pos_dims(name):
                            act = act.index_select(d - 1, real_dev)
                        act = act.detach().to("cpu", self.dtype or act.dtype)
                        buffer[name].append(act)
                        buf_bytes += act.numel() * act.element_size()
                    buf_tokens.append(tokens[b, real].cpu())
                    bar.update(1)
                    if len(buf_tokens) >= self.shard_examples or buf_bytes >= self.shard_bytes:
                        flush()
            flush()
            manifest["complete"] = True
            _write_json_atomic(self.dir / MANIFEST, manifest)
        finally:
            bar.close()
        return StoreReader(self.dir)

    # ------------------------------------------------------------------ reading
    @staticmethod
    def open(directory: Union[str, os.PathLike]) -> "StoreReader":
        """A lazy reader of a store written by `write` (see `StoreReader`)."""
        return StoreReader(directory)


class StoreReader:
    """Lazy access to an activation store: `reader[hook]` is a `HookView`.

    `reader.hooks` lists the stored hooks; `reader.tokens` and `reader.lengths` are views of
    the stored token ids / real lengths; `len(reader)` counts examples in completed shards.
    """

    def __init__(self, directory: Union[str, os.PathLike]):
        self.dir = Path(directory)
        path = self.dir / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: not an activation store (write one with ActivationStore.write)")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        self.shards: list[dict] = self.manifest["shards"]
        self.hooks: list[str] = self.manifest["hooks"]
        self.complete: bool = self.manifest.get("complete", False)
        self._lengths: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.manifest["n_examples"]

    def __getitem__(self, hook: str) -> "HookView":
        if hook not in self.hooks and hook not in ("tokens", "lengths"):
            raise KeyError(f"hook {hook!r} is not in the store at {self.dir}; stored hooks: {self.hooks}")
        return HookView(self, hook)

    def __contains__(self, hook: str) -> bool:
        return hook in self.hooks

    @property
    def lengths(self) -> Int[torch.Tensor, "n"]:
        if self._lengths is None:
            parts = [self._load(s, "lengths") for s in self.shards]
            self._lengths = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        return self._lengths

    @property
    def tokens(self) -> "HookView":
        return HookView(self, "tokens")

    def _load(self, shard: dict, key: str, lo: int = 0, hi: Optional[int] = None) -> torch.Tensor:
        with safe_open(str(self.dir / shard["file"]), framework="pt") as f:
            if hi is None:
                return f.get_tensor(key)[lo:]
            return f.get_slice(key)[lo:hi]

    def __repr__(self) -> str:
        return f"StoreReader({str(self.dir)!r}, n={len(self)}, shards={len(self.shards)}, hooks={self.hooks})"


@dataclass
class HookView:
    """One stored hook, read lazily shard by shard with `safetensors.safe_open`.

    * `view[i]` -> the example's activation trimmed to its real length: (T_i, *rest), or
      (head, T_i, T_i) for patterns.
    * `view[a:b]` (step 1) -> (n, T, *rest), zero-padded to the longest selected example;
      `view.lengths[a:b]` gives the real lengths.
    * `iter_batches(batch_size)` yields such padded batches in order (with the lengths when
      `with_lengths=True`), loading one shard slice at a time.
    """

    reader: StoreReader
    hook: str

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def lengths(self) -> Int[torch.Tensor, "n"]:
        return self.reader.lengths

    @property
    def _dims(self) -> tuple[int, ...]:
        """Position axes of one stored example (no batch axis)."""
        if self.hook == "tokens":
            return (0,)
        return tuple(d - 1 for d in pos_dims(self.hook))

    def _range(self, start: int, stop: int) -> list[torch.Tensor]:
        """Examples [start, stop) as a list of per-example tensors trimmed to length."""
        out = []
        for shard in self.reader.shards:
            lo, hi = max(start, shard["start"]), min(stop, shard["stop"])
            if lo >= hi:
                continue
            block = self.reader._load(shard, self.hook, lo - shard["start"], hi - shard["start"])
            lens = self.reader.lengths[lo:hi]
            for x, n in zip(block, lens.tolist()):
                for d in self._dims:
                    x = x.narrow(d, 0, n)
                out.append(x)
        return out

    def __getitem__(self, idx: Union[int, slice]) -> torch.Tensor:
        n = len(self)
        if isinstance(idx, int):
            if not -n <= idx < n:
                raise IndexError(f"example {idx} out of range for {n} examples in {self.reader.dir}")
            i = idx % n
            return self._range(i, i + 1)[0]
        if isinstance(idx, slice):
            start, stop, step = idx.indices(n)
            if step != 1:
                raise IndexError("HookView supports slices with step 1 only")
            items = self._range(start, stop)
            if not items:
                raise IndexError(f"empty selection {idx} of {n} examples")
            return _pad_stack(items, self._dims)
        raise TypeError(f"index a HookView with an int or a slice, not {type(idx).__name__}")

    def iter_batches(self, batch_size: int, with_lengths: bool = False) -> Iterator:
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            batch = self[start:stop]
            yield (batch, self.lengths[start:stop]) if with_lengths else batch

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self)):
            yield self[i]
