"""Tokenizers: one small wrapper over HF `tokenizers`, saved as a standard `tokenizer.json`.

```python
from interp.tokenizers import char_tokenizer, arithmetic_tokenizer, bpe_tokenizer, load_tokenizer
tok = char_tokenizer(open("data/tinyshakespeare.txt").read())
ids = tok.encode("To be, or not to be")        # no specials unless add_special_tokens=True
assert tok.decode(ids) == "To be, or not to be"
tok.save("runs/x")                             # -> runs/x/tokenizer.json
tok = load_tokenizer("runs/x")
```

Four builders, all on `tokenizers.Tokenizer`, so the file any checkpoint carries is an
ordinary `tokenizer.json` (HF `transformers` reads it through `to_transformers()`):

- `char_tokenizer(corpus)`: WordLevel over every distinct character of the corpus; the
  pre-tokenizer splits text into single characters (`Split([\\s\\S], isolated)`) and the
  decoder fuses them, so `decode(encode(s)) == s` exactly (spaces, tabs, newlines).
- `arithmetic_tokenizer()`: the same character machinery over a fixed vocabulary
  (`ARITHMETIC_SPECIALS`, digits, `ARITHMETIC_SYMBOLS`); identical for every arithmetic task,
  so checkpoints trained on different digit counts or formats share token ids.
- `word_tokenizer(words)`: WordLevel over whitespace-separated symbols (modular arithmetic,
  induction); decoding joins tokens with single spaces.
- `bpe_tokenizer(corpus, vocab_size)`: byte-level BPE trained locally; every string is
  encodable (all 256 bytes are in the base alphabet) and decoding is exact.

Special tokens are HF "added tokens" (`special: true`): the strings `<bos>`, `<bot>`, ...
inside a text encode to their single ids, and `skip_special_tokens=True` drops them on
decoding. Their roles are found from their names (`<pad> <bos> <eos> <bot> <eot> <unk>`;
HF spellings such as `[PAD]`, `<s>`, `</s>`, `[UNK]` are recognised on files made elsewhere).

Unknown input never becomes a silent wrong id: a WordLevel tokenizer built without an
`<unk>` raises `UnknownTokenError` naming the character (or word) and its position; one built
with `unk="<unk>"` maps unknowns to that declared id. Ids outside the vocabulary raise on
`decode` / `convert_ids_to_tokens` (HF would skip them silently).

`add_special_tokens=True` prepends `<bos>` (no `<eos>`: the usual use is a prompt to continue);
it is a `TemplateProcessing` post-processor stored in the file, so HF sees the same.

Pretrained tokenizers: `load_tokenizer` also reads any local `tokenizer.json` made elsewhere
and any `transformers` tokenizer directory (a saved `PreTrainedTokenizerFast`, or slow files
such as GPT-2's `vocab.json` + `merges.txt`, converted by `AutoTokenizer`); the roles declared
in its `tokenizer_config.json` (`bos_token`, `eos_token`, ...) win over name detection.
`Tokenizer.from_transformers(hf_tokenizer)` wraps one already loaded.

Chat templates (Jinja, rendered exactly as `transformers` renders them):

```python
tok.set_chat_template()                        # the shipped ChatML template; adds <|im_start|> <|im_end|>
ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
tok.save("runs/x")                             # tokenizer.json + chat_template.jinja (HF's file name)
tok.to_transformers().apply_chat_template(...) # the same ids
```

A template travels beside `tokenizer.json` as `chat_template.jinja` (tokenizer.json itself has
no slot for it), so it is part of every checkpoint and of `save_pretrained` output; the
special-token roles travel as a `tokenizer_config.json` in HF's format.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

__all__ = [
    "Tokenizer",
    "UnknownTokenError",
    "TokenizerFileError",
    "char_tokenizer",
    "arithmetic_tokenizer",
    "word_tokenizer",
    "bpe_tokenizer",
    "load_tokenizer",
    "ARITHMETIC_SPECIALS",
    "ARITHMETIC_SYMBOLS",
    "DEFAULT_SPECIALS",
    "TOKENIZER_FILE",
    "CHAT_TEMPLATE_FILE",
    "DEFAULT_CHAT_TEMPLATE",
    "CHAT_TOKENS",
]

TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers' own file name for it
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# ChatML (as in Qwen / SmolLM), after <bos> when the tokenizer has one
DEFAULT_CHAT_TEMPLATE = (
    "{%- if bos_token %}{{ bos_token }}{% endif %}"
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAT_TOKENS: tuple[str, ...] = ("<|im_start|>", "<|im_end|>")  # what DEFAULT_CHAT_TEMPLATE needs
DEFAULT_SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>")
ARITHMETIC_SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<bot>", "<eot>")
# operators, answer marker, and the scratchpad separators (see interp.tasks.arithmetic)
ARITHMETIC_SYMBOLS: tuple[str, ...] = ("+", "-", "*", "=", ";", ",", "|")

# role -> accepted spellings (ours first)
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "pad": ("<pad>", "[PAD]", "<|pad|>"),
    "bos": ("<bos>", "<s>", "[BOS]", "<|bos|>"),
    "eos": ("<eos>", "</s>", "[EOS]", "<|eos|>", "<|endoftext|>"),
    "bot": ("<bot>", "<|bot|>"),
    "eot": ("<eot>", "<|eot|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
}
# the roles ModelConfig has fields for (unk has none)
MODEL_CONFIG_ROLES = ("pad", "bos", "eos", "bot", "eot")

_CHAR_SPLIT = r"[\s\S]"  # one Unicode code point, newlines included (Oniguruma has no (?s))
_NO_UNK = "<unk:none>"  # WordLevel needs an unk name; absent from the vocab -> HF errors out


class UnknownTokenError(ValueError):
    """Text holds a character / word the vocabulary does not have (and there is no `<unk>`)."""


class TokenizerFileError(ValueError):
    """A tokenizer file is missing or cannot be read as a `tokenizer.json`."""


def _snippet(text: str, pos: int, width: int = 20) -> str:
    lo, hi = max(0, pos - width), min(len(text), pos + width)
    return ("..." if lo else "") + text[lo:hi] + ("..." if hi < len(text) else "")


class Tokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer` with named special-token roles and an
    optional chat template.

    `roles` overrides name detection, e.g. `{"bos": "<|endoftext|>"}` for GPT-2 (as a
    `transformers` tokenizer declares them); `chat_template` is a Jinja template string."""

    def __init__(self, hf: HFTokenizer, *, chat_template: Optional[str] = None,
                 roles: Optional[dict[str, str]] = None):
        self._hf = hf
        self._role_overrides: dict[str, str] = {}
        for role, token in (roles or {}).items():
            if role not in ROLE_NAMES:
                raise ValueError(f"unknown special-token role {role!r}; roles are {list(ROLE_NAMES)}")
            if token is not None:
                self._role_overrides[role] = str(token)
        self._chat_template: Optional[str] = None
        self._refresh()
        self.chat_template = chat_template

    # ------------------------------------------------------------------ internals
    def _refresh(self) -> None:
        hf = self._hf
        self._vocab: dict[str, int] = hf.get_vocab(with_added_tokens=True)
        self._size = max(self._vocab.values()) + 1 if self._vocab else 0
        self._id_to_tok: list[Optional[str]] = [None] * self._size
        for t, i in self._vocab.items():
            self._id_to_tok[i] = t
        added = hf.get_added_tokens_decoder()  # id -> AddedToken
        self._special_strings = sorted(
            (a.content for a in added.values() if a.special), key=len, reverse=True
        )
        self._special_ids = {i for i, a in added.items() if a.special}
        self._roles: dict[str, Optional[int]] = {}
        for role, names in ROLE_NAMES.items():
            self._roles[role] = next((self._vocab[n] for n in names if n in self._vocab), None)
        for role, token in self._role_overrides.items():
            if token not in self._vocab:
                raise ValueError(f"{role}_token {token!r} is not in the vocabulary ({len(self._vocab)} tokens)")
            self._roles[role] = self._vocab[token]
        model = json.loads(hf.model.__getstate__()) if hasattr(hf.model, "__getstate__") else {}
        self._model_type = model.get("type")
        unk = model.get("unk_token")
        self._unk_id = self._vocab.get(unk) if isinstance(unk, str) else None
        pre = hf.pre_tokenizer
        pre_state = json.loads(pre.__getstate__()) if pre is not None else {}
        self._char_level = (
            self._model_type == "WordLevel"
            and pre_state.get("type") == "Split"
            and pre_state.get("pattern", {}).get("Regex") == _CHAR_SPLIT
        )
        self._special_re = (
            re.compile("|".join(re.escape(s) for s in self._special_strings)) if self._special_strings else None
        )

    # ------------------------------------------------------------------ properties
    @property
    def hf(self) -> HFTokenizer:
        """The underlying `tokenizers.Tokenizer`."""
        return self._hf

    @property
    def vocab_size(self) -> int:
        """Number of ids (max id + 1), special tokens included: use as `d_vocab`."""
        return self._size

    def __len__(self) -> int:
        return self._size

    @property
    def kind(self) -> str:
        """'char' (one token per character), 'word', 'bpe', or the HF model type."""
        if self._char_level:
            return "char"
        return {"WordLevel": "word", "BPE": "bpe"}.get(self._model_type or "", str(self._model_type))

    @property
    def pad_token_id(self) -> Optional[int]:
        return self._roles["pad"]

    @property
    def bos_token_id(self) -> Optional[int]:
        return self._roles["bos"]

    @property
    def eos_token_id(self) -> Optional[int]:
        return self._roles["eos"]

    @property
    def bot_token_id(self) -> Optional[int]:
        return self._roles["bot"]

    @property
    def eot_token_id(self) -> Optional[int]:
        return self._roles["eot"]

    @property
    def unk_token_id(self) -> Optional[int]:
        return self._roles["unk"] if self._roles["unk"] is not None else self._unk_id

    def special_token_ids(self) -> dict[str, int]:
        """`{"pad_token_id": 0, "bos_token_id": 1, ...}` for the roles this tokenizer has,
        restricted to the fields `ModelConfig` takes (pad, bos, eos, bot, eot; not unk)."""
        return {f"{r}_token_id": self._roles[r] for r in MODEL_CONFIG_ROLES if self._roles[r] is not None}

    @property
    def special_tokens(self) -> list[str]:
        return [self._id_to_tok[i] for i in sorted(self._special_ids)]

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def token_to_id(self, token: str) -> int:
        if token not in self._vocab:
            raise UnknownTokenError(f"token {token!r} is not in the vocabulary ({self._size} tokens)")
        return self._vocab[token]

    def id_to_token(self, id: int) -> str:
        return self.convert_ids_to_tokens([id])[0]

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings inside `text` become their ids.
        `add_special_tokens=True` prepends `<bos>` (when the tokenizer has one)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if self._char_level and not (self._special_re and self._special_re.search(text)):
            ids = self._encode_chars(text)
        else:
            try:
                ids = self._hf.encode(text, add_special_tokens=False).ids
            except Exception as err:  # WordLevel without <unk>: "Missing [UNK] token"
                self._raise_unknown(text, err)
                raise
        if add_special_tokens and self.bos_token_id is not None:
            ids = [self.bos_token_id] + list(ids)
        return list(ids)

    def _encode_chars(self, text: str) -> list[int]:
        """Fast path, identical to the HF pipeline for a char-level WordLevel tokenizer when
        the text holds no special-token string: one dict lookup per character."""
        vocab = self._vocab
        try:
            return [vocab[c] for c in text]
        except KeyError:
            pass
        if self._unk_id is not None:
            return [vocab.get(c, self._unk_id) for c in text]
        self._raise_unknown(text, None)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_unknown(self, text: str, err: Optional[Exception]) -> None:
        """Find the first piece of `text` that is not in the vocabulary and raise naming it."""
        pieces: list[tuple[str, int]] = []
        pos = 0
        chunks = []
        if self._special_re is not None:
            for m in self._special_re.finditer(text):
                chunks.append((text[pos : m.start()], pos))
                pos = m.end()
        chunks.append((text[pos:], pos))
        pre = self._hf.pre_tokenizer
        for chunk, offset in chunks:
            if not chunk:
                continue
            if pre is None:
                pieces.append((chunk, offset))
            else:
                pieces.extend((p, offset + start) for p, (start, _) in pre.pre_tokenize_str(chunk))
        for piece, start in pieces:
            if piece not in self._vocab:
                what = "character" if self._char_level else "token"
                raise UnknownTokenError(
                    f"unknown {what} {piece!r} at position {start} of the text {_snippet(text, start)!r}: "
                    f"not in the vocabulary ({self._size} tokens) and the tokenizer has no <unk>"
                ) from err
        if err is not None:
            raise ValueError(f"could not encode {_snippet(text, 0)!r}: {err}") from err

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """`encode` of each text; non-char tokenizers run HF's parallel batch encoder."""
        texts = list(texts)
        if self._char_level:
            return [self.encode(t, add_special_tokens=add_special_tokens) for t in texts]
        try:
            rows = [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]
        except Exception:  # an unknown token: encode one by one to raise naming it
            return [self.encode(t, add_special_tokens=add_special_tokens) for t in texts]
        if add_special_tokens and self.bos_token_id is not None:
            rows = [[self.bos_token_id] + r for r in rows]
        return rows

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        out = []
        for pos, i in enumerate(ids):
            i = int(i)
            if not 0 <= i < self._size or self._id_to_tok[i] is None:
                raise ValueError(f"token id {i} at position {pos} is outside the vocabulary [0, {self._size})")
            out.append(i)
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; special tokens appear as their strings unless skipped.
        Char / arithmetic tokenizers: `decode(encode(s)) == s`. Word tokenizers join with ' '."""
        ids = self._check_ids(_as_list(ids))
        if self._char_level:  # fast path, same result as the Fuse decoder
            toks = self._id_to_tok
            if skip_special_tokens:
                return "".join(toks[i] for i in ids if i not in self._special_ids)  # type: ignore[misc]
            return "".join(toks[i] for i in ids)  # type: ignore[misc]
        return self._hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """One string per id (the vocabulary entry: byte-level BPE shows e.g. 'Ġthe')."""
        return [self._id_to_tok[i] for i in self._check_ids(_as_list(ids))]  # type: ignore[misc]

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.token_to_id(t) for t in tokens]

    # ------------------------------------------------------------------ chat
    @property
    def chat_template(self) -> Optional[str]:
        """The Jinja chat template (None: none attached)."""
        return self._chat_template

    @chat_template.setter
    def chat_template(self, template: Optional[str]) -> None:
        if template is not None:
            import jinja2

            if not isinstance(template, str):
                raise TypeError(f"chat_template must be a str, got {type(template).__name__}")
            try:
                jinja2.Environment().parse(template)
            except jinja2.TemplateSyntaxError as err:
                raise ValueError(f"chat_template is not valid Jinja (line {err.lineno}: {err.message})") from None
        self._chat_template = template

    def set_chat_template(self, template: Optional[str] = None, special_tokens: Optional[Sequence[str]] = None
                          ) -> "Tokenizer":
        """Attach `template` (default: `DEFAULT_CHAT_TEMPLATE`, ChatML) and add the marker tokens
        it uses as special tokens when the vocabulary lacks them (`special_tokens`, default
        `CHAT_TOKENS` for the shipped template). New tokens take the next free ids, so call this
        before building the model (its `d_vocab` is `vocab_size`). Returns self."""
        if template is None:
            template = DEFAULT_CHAT_TEMPLATE
            special_tokens = CHAT_TOKENS if special_tokens is None else special_tokens
        missing = [t for t in (special_tokens or ()) if t not in self._vocab]
        if missing:
            self._hf.add_special_tokens(missing)
            self._refresh()
        self.chat_template = template
        return self

    def special_tokens_map(self) -> dict[str, str]:
        """`{"bos_token": "<bos>", ...}` for the roles HF names (what chat templates read)."""
        return {f"{r}_token": self._id_to_tok[self._roles[r]] for r in ("bos", "eos", "unk", "pad")
                if self._roles[r] is not None}

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = False,
                            tokenize: bool = True, continue_final_message: bool = False,
                            chat_template: Optional[str] = None, **kwargs) -> Union[str, list[int]]:
        """Render `messages` (`[{"role": ..., "content": ...}, ...]`) with the chat template,
        through `transformers`' own renderer (same Jinja environment and variables, so the
        text equals `PreTrainedTokenizerFast.apply_chat_template`). `tokenize=True` returns the
        ids (`encode`: markers inside the text become their ids, nothing else is added);
        `False` the text. Extra keyword arguments are template variables."""
        template = chat_template if chat_template is not None else self._chat_template
        if template is None:
            raise ValueError("this tokenizer has no chat template: call set_chat_template() (the shipped ChatML "
                             "template) or set_chat_template(your_jinja_string) first")
        if not messages:
            raise ValueError("cannot apply a chat template to an empty conversation")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m:
                raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        from transformers.utils.chat_template_utils import render_jinja_template

        conversation = [{k: v for k, v in m.items() if v is not None} for m in messages]
        rendered, _ = render_jinja_template(
            conversations=[conversation], chat_template=template, add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message, **{**self.special_tokens_map(), **kwargs})
        text = rendered[0]
        return self.encode(text) if tokenize else text

    # ------------------------------------------------------------------ files
    def to_json_str(self, pretty: bool = False) -> str:
        return self._hf.to_str(pretty=pretty)

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write `tokenizer.json` atomically. `path` is a directory (created if needed;
        writes `path/tokenizer.json`) or a file path ending in `.json`. Returns the file.
        Beside it, as `transformers` writes them (so `AutoTokenizer.from_pretrained` reads the
        directory as it is): `tokenizer_config.json` (the bos/eos/pad/unk tokens) and, when a
        template is attached, `chat_template.jinja` (a stale one is removed)."""
        path = Path(path)
        file = path if path.suffix == ".json" else path / TOKENIZER_FILE
        file.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(file, self.to_json_str(pretty=True))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **self.special_tokens_map()}
        _write_atomic(file.parent / TOKENIZER_CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        if self._chat_template is not None:
            _write_atomic(file.parent / CHAT_TEMPLATE_FILE, self._chat_template)
        else:
            (file.parent / CHAT_TEMPLATE_FILE).unlink(missing_ok=True)
        return file

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Tokenizer":
        """Read a `tokenizer.json` (a directory holding one, or the file itself)."""
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            where = f"directory {path} has no {TOKENIZER_FILE}" if path.is_dir() else f"no such file: {file}"
            raise TokenizerFileError(f"cannot load tokenizer: {where}")
        text = file.read_text(encoding="utf-8")
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            raise TokenizerFileError(f"tokenizer file {file} is not valid JSON: {err}") from err
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as err:
            raise TokenizerFileError(f"tokenizer file {file} is not a valid tokenizer.json: {err}") from err
        template, roles = _read_sidecars(file.parent)
        return cls(hf, chat_template=template, roles=roles)

    @classmethod
    def from_json_str(cls, text: str) -> "Tokenizer":
        return cls(HFTokenizer.from_str(text))

    @classmethod
    def from_transformers(cls, hf_tokenizer) -> "Tokenizer":
        """Wrap a loaded `transformers` fast tokenizer (its backend `tokenizers.Tokenizer`, its
        declared bos/eos/pad/unk tokens and its chat template)."""
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(f"{type(hf_tokenizer).__name__} has no backend_tokenizer (a slow tokenizer?): load it "
                            "with AutoTokenizer.from_pretrained(..., use_fast=True)")
        roles = {}
        for role in ("bos", "eos", "pad", "unk"):
            token = getattr(hf_tokenizer, f"{role}_token", None)
            if token is not None:
                roles[role] = str(token)
        template = hf_tokenizer.chat_template if isinstance(hf_tokenizer.chat_template, str) else None
        return cls(HFTokenizer.from_str(backend.to_str()), chat_template=template, roles=roles)

    def to_transformers(self):
        """A `transformers.PreTrainedTokenizerFast` over the same tokenizer (for export), with
        the same special-token roles and chat template."""
        from transformers import PreTrainedTokenizerFast

        kwargs = {}
        for role, key in (("pad", "pad_token"), ("bos", "bos_token"), ("eos", "eos_token"), ("unk", "unk_token")):
            if self._roles[role] is not None:
                kwargs[key] = self._id_to_tok[self._roles[role]]
        if self._chat_template is not None:
            kwargs["chat_template"] = self._chat_template
        return PreTrainedTokenizerFast(tokenizer_object=HFTokenizer.from_str(self.to_json_str()), **kwargs)

    # ------------------------------------------------------------------ misc
    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Tokenizer) and self.to_json_str() == other.to_json_str()
                and self._chat_template == other._chat_template and self._roles == other._roles)

    def __hash__(self) -> int:
        return hash((self.to_json_str(), self._chat_template))

    def __repr__(self) -> str:
        specials = ", ".join(f"{k}={v}" for k, v in self.special_token_ids().items())
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self._size}, {specials})"


def _write_atomic(file: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{file.stem}.", suffix=".tmp", dir=file.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, file)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_sidecars(folder: Path) -> tuple[Optional[str], dict[str, str]]:
    """(chat template, role overrides) from `chat_template.jinja` / `tokenizer_config.json`
    beside a tokenizer.json, as `transformers` writes them."""
    template, roles = None, {}
    config_file = folder / TOKENIZER_CONFIG_FILE
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise TokenizerFileError(f"{config_file} is not valid JSON: {err}") from err
        for role in ("bos", "eos", "pad", "unk"):
            token = config.get(f"{role}_token")
            if isinstance(token, dict):  # older AddedToken serialisation
                token = token.get("content")
            if isinstance(token, str):
                roles[role] = token
        found = config.get("chat_template")
        if isinstance(found, list):  # named templates: [{"name": "default", "template": ...}, ...]
            found = next((t.get("template") for t in found if t.get("name") == "default"), None)
        template = found if isinstance(found, str) else None
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        template = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    return template, roles


def _as_list(ids) -> list:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return list(ids)


# ---------------------------------------------------------------------- builders
def _check_specials(specials: Sequence[str], unk: Optional[str]) -> list[str]:
    out = list(specials)
    if unk is not None and unk not in out:
        out.append(unk)
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate special tokens in {out}")
    for s in out:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
    return out


def _finish(hf: HFTokenizer, specials: Sequence[str]) -> Tokenizer:
    if specials:
        hf.add_special_tokens(list(specials))
    vocab = hf.get_vocab(with_added_tokens=True)
    if "<bos>" in vocab:
        hf.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
        )
    tok = Tokenizer(hf)
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise AssertionError(f"token ids are not contiguous: {sorted(vocab.values())}")
    return tok


def _char_level(symbols: Sequence[str], specials: Sequence[str], unk: Optional[str]) -> Tokenizer:
    """WordLevel over single characters; `specials` take ids 0..k-1 (in order), then `symbols`."""
    specials = _check_specials(specials, unk)
    for s in symbols:
        if len(s) != 1:
            raise ValueError(f"character tokenizer symbols must be single characters, got {s!r}")
        if s in specials:
            raise ValueError(f"{s!r} is both a special token and a character")
    vocab: dict[str, int] = {}
    for s in list(specials) + list(symbols):
        vocab.setdefault(s, len(vocab))
    hf = HFTokenizer(models.WordLevel(vocab, unk_token=unk if unk is not None else _NO_UNK))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(_CHAR_SPLIT), behavior="isolated")
    hf.decoder = decoders.Fuse()
    return _finish(hf, specials)


def char_tokenizer(
    corpus: str,
    specials: Sequence[str] = DEFAULT_SPECIALS,
    unk: Optional[str] = None,
) -> Tokenizer:
    """One token per distinct character of `corpus` (sorted by code point), after `specials`
    (ids 0..k-1 in the given order). `unk="<unk>"` adds a catch-all token for characters
    outside the corpus; without it such characters raise `UnknownTokenError`."""
    if not isinstance(corpus, str):
        corpus = "".join(corpus)
    return _char_level(sorted(set(corpus)), specials, unk)


def arithmetic_tokenizer() -> Tokenizer:
    """The fixed arithmetic vocabulary: `<pad>`=0 `<bos>`=1 `<eos>`=2 `<bot>`=3 `<eot>`=4,
    digits '0'..'9' = 5..14, then `+ - * = ; , |` = 15..21 (22 tokens). No `<unk>`."""
    return _char_level([str(d) for d in range(10)] + list(ARITHMETIC_SYMBOLS), ARITHMETIC_SPECIALS, None)


def word_tokenizer(
    words: Sequence[str],
    specials: Sequence[str] = DEFAULT_SPECIALS,
    unk: Optional[str] = None,
    specials_first: bool = True,
) -> Tokenizer:
    """WordLevel over whitespace-separated `words`. With `specials_first=False` the words take
    ids 0..n-1 (so e.g. the number n is token n) and the specials follow."""
    specials = _check_specials(specials, unk)
    for w in words:
        if not w or any(c.isspace() for c in w):
            raise ValueError(f"words must be non-empty and contain no whitespace, got {w!r}")
    order = (list(specials) + list(words)) if specials_first else (list(words) + list(specials))
    vocab: dict[str, int] = {}
    for w in order:
        if w in vocab:
            raise ValueError(f"duplicate token {w!r}")
        vocab[w] = len(vocab)
    hf = HFTokenizer(models.WordLevel(vocab, unk_token=unk if unk is not None else _NO_UNK))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return _finish(hf, specials)


def bpe_tokenizer(
    corpus: Union[str, Iterable[str]],
    vocab_size: int = 512,
    specials: Sequence[str] = DEFAULT_SPECIALS,
    min_frequency: int = 2,
) -> Tokenizer:
    """Byte-level BPE trained on `corpus` (a string or an iterable of strings). Specials take
    ids 0..k-1, the 256 byte symbols follow, then merges up to `vocab_size` (fewer if the
    corpus runs out of pairs seen `min_frequency` times). Deterministic for a given corpus."""
    specials = _check_specials(specials, None)
    base = 256 + len(specials)
    if vocab_size < base:
        raise ValueError(f"vocab_size={vocab_size} is below the byte alphabet + specials ({base})")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [corpus] if isinstance(corpus, str) else corpus  # an iterator streams (never a list in memory)
    hf.train_from_iterator(texts, trainer=trainer)
    return _finish(hf, specials)


def load_tokenizer(path: Union[str, os.PathLike]) -> Tokenizer:
    """A `tokenizer.json` file, a directory holding one (ours, or saved by `transformers`,
    with its `tokenizer_config.json` roles and chat template), or a `transformers` tokenizer
    directory with no `tokenizer.json` (e.g. GPT-2's `vocab.json` + `merges.txt`), converted
    by `AutoTokenizer` offline."""
    path = Path(path)
    if path.is_dir() and not (path / TOKENIZER_FILE).is_file():
        if not any((path / n).is_file() for n in (TOKENIZER_CONFIG_FILE, "vocab.json", "tokenizer.model")):
            raise TokenizerFileError(f"cannot load tokenizer: directory {path} has no {TOKENIZER_FILE} and is not a "
                                     "transformers tokenizer directory (no tokenizer_config.json / vocab.json)")
        from transformers import AutoTokenizer

        try:
            hf_tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
        except Exception as err:
            raise TokenizerFileError(f"transformers could not load the tokenizer in {path}: {err}") from err
        return Tokenizer.from_transformers(hf_tokenizer)
    return Tokenizer.load(path)
