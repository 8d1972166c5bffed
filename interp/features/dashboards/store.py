"""The dashboard store: one directory, written once, read one latent at a time.

Layout (the activation store's conventions, `interp.cache.ActivationStore`: a JSON manifest
with a format tag written last, safetensors for tensors, never pickle):

    manifest.json           format, the dictionary (path, config, fingerprint), the checkpoint
                            and model identity, the token set, the settings, how the logit
                            effect was computed
    dashboards.safetensors  per-latent tensors (first axis d_sae) + the token set
    vocab.json              each token id's text
    latents.json            each latent's one-line summary (from its top tokens and logits)

A token's global index is `sequence * T + position` into the stored `tokens (n_seq, T)`;
`mask (n_seq, T)` marks real tokens. Windows hold a latent's activations on tokens
`[pos - before, pos + after]` (0 outside the sequence). `DashboardStore.latent(i)` reads row
`i` of each per-latent tensor (safetensors slices, no recomputation) and returns a
`LatentDashboard`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from safetensors import safe_open

from ..dictionary import DictionaryError

PathLike = Union[str, os.PathLike]
FORMAT = "interp.feature_dashboards/1"
MANIFEST, TENSORS, VOCAB, LATENTS = "manifest.json", "dashboards.safetensors", "vocab.json", "latents.json"
PER_LATENT = ("n_fired", "act_sum", "top_value", "top_token", "top_acts", "hist", "interval_count", "interval_value",
              "interval_token", "interval_acts", "logit_top_id", "logit_top_value", "logit_bottom_id",
              "logit_bottom_value", "neighbour_id", "neighbour_cos")


def fingerprint(sae) -> str:
    """sha256 of a dictionary's config and parameters: a store made from other weights is stale."""
    h = hashlib.sha256(json.dumps(sae.cfg.to_dict(), sort_keys=True, default=str).encode())
    for name, t in sorted(sae.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def show(piece: str) -> str:
    """A token's text with its whitespace made visible (one-line summaries)."""
    return piece.replace("\n", "↵").replace(" ", "␣").replace("\t", "⇥") or "∅"


# ============================================================================ what one latent shows
@dataclass
class Context:
    """A window of tokens around one activation of a latent."""

    seq: int  # sequence in the token set
    pos: int  # position of the activation in it
    value: float  # the activation there
    tokens: list[int]  # token ids of the window (real tokens only)
    pieces: list[str]  # their text
    acts: list[float]  # the latent's activation on each
    at: int  # index of `pos` inside the window


@dataclass
class Interval:
    """One bin (lo, hi] of the latent's activation range, with samples drawn from it."""

    lo: float
    hi: float
    count: int  # scored tokens whose activation falls in the bin
    share: float  # count / all tokens the latent fires on
    contexts: list[Context]


@dataclass
class LatentDashboard:
    index: int
    density: float  # share of scored tokens it fires on
    n_fired: int
    n_tokens: int  # scored tokens of the set
    max_act: float
    mean_act: float  # mean activation where it fires
    summary: str
    top: list[Context]
    intervals: list[Interval]
    hist_edges: list[float]  # n_bins + 1 edges of (0, max]
    hist_counts: list[int]
    logit_top: list[tuple[int, str, float]]  # (token id, text, effect); empty when there is no logit effect
    logit_bottom: list[tuple[int, str, float]]
    neighbours: list[tuple[int, float]]  # (latent, cosine of decoder rows)
    logit_note: str = ""
    hook: str = ""

    @property
    def dead(self) -> bool:
        return self.n_fired == 0


# ============================================================================ the reader
class DashboardStore:
    """Read access to a dashboard directory (module docstring). `len(store)` = d_sae."""

    def __init__(self, directory: PathLike):
        self.dir = Path(directory)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise DictionaryError(f"{self.dir}: no {MANIFEST}; not a dashboard store (make one with "
                                  "features.dashboard or `interp features dashboard`)")
        try:
            self.manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DictionaryError(f"{path}: not valid JSON ({e})") from None
        if self.manifest.get("format") != FORMAT:
            raise DictionaryError(f"{path}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        for name in (TENSORS, VOCAB, LATENTS):
            if not (self.dir / name).is_file():
                raise DictionaryError(f"{self.dir}: {name} is missing; the store is incomplete (compute it again)")
        self.d_sae: int = int(self.manifest["d_sae"])
        self.settings: dict = self.manifest["settings"]
        self._vocab: Optional[list[str]] = None
        self._summaries: Optional[list[str]] = None
        self._tokens: Optional[np.ndarray] = None
        self._mask: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return self.d_sae

    def __repr__(self) -> str:
        d = self.manifest["dictionary"]
        return f"DashboardStore({str(self.dir)!r}, d_sae={self.d_sae}, hook={d['config']['hook_name']!r})"

    # ------------------------------------------------------------------ lazily read parts
    @property
    def vocab(self) -> list[str]:
        if self._vocab is None:
            self._vocab = json.loads((self.dir / VOCAB).read_text())
        return self._vocab

    @property
    def summaries(self) -> list[str]:
        if self._summaries is None:
            self._summaries = json.loads((self.dir / LATENTS).read_text())["summary"]
        return self._summaries

    def _tensor(self, name: str, rows: Union[None, int, slice] = None) -> torch.Tensor:
        with safe_open(str(self.dir / TENSORS), framework="pt") as f:
            if rows is None:
                return f.get_tensor(name)
            if isinstance(rows, int):
                return f.get_slice(name)[rows : rows + 1][0]
            return f.get_slice(name)[rows]

    def _token_set(self) -> tuple[np.ndarray, np.ndarray]:
        if self._tokens is None:
            self._tokens = self._tensor("tokens").numpy()
            self._mask = self._tensor("mask").numpy()
        return self._tokens, self._mask

    # ------------------------------------------------------------------ queries
    def matches(self, sae) -> bool:
        """Whether this store was computed from exactly `sae`'s weights."""
        return self.manifest["dictionary"].get("fingerprint") == fingerprint(sae)

    def table(self) -> dict[str, np.ndarray]:
        """Every latent's row of the latent table: latent, density, n_fired, max_act, mean_act,
        summary (numpy arrays / a list), for sorting and picking."""
        n_fired = self._tensor("n_fired").numpy()
        act_sum = self._tensor("act_sum").numpy()
        peak = self._tensor("top_value")[:, 0].numpy()
        n_tok = max(int(self.manifest["tokens"]["n_scored"]), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n_fired > 0, act_sum / np.maximum(n_fired, 1), 0.0)
        return {"latent": np.arange(self.d_sae), "density": n_fired / n_tok, "n_fired": n_fired,
                "max_act": peak.astype(np.float64), "mean_act": mean, "summary": list(self.summaries)}

    def check_latent(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < self.d_sae:
            raise DictionaryError(f"latent {i!r} is out of range: the dictionary on "
                                  f"{self.manifest['dictionary']['config']['hook_name']} has {self.d_sae} latents "
                                  f"(0 to {self.d_sae - 1})")
        return int(i)

    def _context(self, token: int, value: float, acts: np.ndarray) -> Context:
        tokens, mask = self._token_set()
        T = tokens.shape[1]
        before = int(self.settings["context"][0])
        seq, pos = divmod(int(token), T)
        lo = pos - before
        keep = [j for j in range(len(acts)) if 0 <= lo + j < T and mask[seq, lo + j]]
        ids = [int(tokens[seq, lo + j]) for j in keep]
        vocab = self.vocab
        return Context(seq, pos, float(value), ids, [vocab[t] if 0 <= t < len(vocab) else f"<{t}>" for t in ids],
                       [float(acts[j]) for j in keep], keep.index(before) if before in keep else 0)

    def latent(self, i: int) -> LatentDashboard:
        """Everything the dashboard of latent `i` shows, read from disk."""
        i = self.check_latent(i)
        with safe_open(str(self.dir / TENSORS), framework="pt") as f:
            row = {n: f.get_slice(n)[i : i + 1][0] for n in PER_LATENT if n in f.keys()}
        n_tok = int(self.manifest["tokens"]["n_scored"])
        n_fired = int(row["n_fired"])
        peak = float(row["top_value"][0]) if n_fired else 0.0
        top = [self._context(int(t), float(v), a.numpy()) for t, v, a in
               zip(row["top_token"], row["top_value"], row["top_acts"]) if int(t) >= 0]
        n_int = int(self.settings["n_intervals"])
        counts = row["interval_count"].tolist()
        intervals = []
        for j in range(n_int):
            ctx = [self._context(int(t), float(v), a.numpy()) for t, v, a in
                   zip(row["interval_token"][j], row["interval_value"][j], row["interval_acts"][j]) if int(t) >= 0]
            ctx.sort(key=lambda c: -c.value)
            intervals.append(Interval(peak * j / n_int, peak * (j + 1) / n_int, int(counts[j]),
                                      counts[j] / n_fired if n_fired else 0.0, ctx))
        vocab = self.vocab
        logit_top = logit_bottom = []
        if "logit_top_id" in row:
            logit_top = [(int(t), vocab[int(t)], float(v)) for t, v in zip(row["logit_top_id"], row["logit_top_value"])]
            logit_bottom = [(int(t), vocab[int(t)], float(v))
                            for t, v in zip(row["logit_bottom_id"], row["logit_bottom_value"])]
        n_bins = int(self.settings["n_bins"])
        return LatentDashboard(
            index=i, density=n_fired / max(n_tok, 1), n_fired=n_fired, n_tokens=n_tok, max_act=peak,
            mean_act=float(row["act_sum"]) / n_fired if n_fired else 0.0, summary=self.summaries[i], top=top,
            intervals=intervals, hist_edges=[peak * j / n_bins for j in range(n_bins + 1)],
            hist_counts=[int(c) for c in row["hist"].tolist()], logit_top=logit_top, logit_bottom=logit_bottom,
            neighbours=[(int(n), float(c)) for n, c in zip(row["neighbour_id"], row["neighbour_cos"])],
            logit_note=self.manifest.get("logit_effect", ""), hook=self.manifest["dictionary"]["config"]["hook_name"])


def open_dashboards(directory: PathLike) -> DashboardStore:
    """The dashboard store at `directory` (DictionaryError if it is not a complete one)."""
    return DashboardStore(directory)


def summarise(top_token: torch.Tensor, top_value: torch.Tensor, tokens: torch.Tensor, T: int, vocab: list[str],
              logit_top_id: Optional[torch.Tensor], n_fired: torch.Tensor, n_scored: int) -> list[str]:
    """Each latent's one-line summary: the tokens it fires most on (how often among its top
    contexts) and, where there is one, the tokens its logit effect promotes most."""
    flat = tokens.reshape(-1)
    out = []
    for i in range(top_token.shape[0]):
        if int(n_fired[i]) == 0:
            out.append(f"dead on these {n_scored:,} tokens")
            continue
        toks = top_token[i][top_token[i] >= 0]
        counts: dict[int, int] = {}
        for t in flat[toks].tolist():
            counts[t] = counts.get(t, 0) + 1
        common = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
        line = " ".join(f"{show(vocab[t])}×{c}" for t, c in common)
        if logit_top_id is not None:
            line += " → " + " ".join(show(vocab[int(t)]) for t in logit_top_id[i][:3])
        out.append(line)
    return out
