"""`Tokenizer`: the wrapper over a `tokenizers.Tokenizer` (roles, encode / decode with named
errors, chat templates, files), and `load_tokenizer`. See the package docstring."""

from __future__ import annotations

import json
import numbers
import os
import re
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

from tokenizers import Tokenizer as HFTokenizer

from . import chat

TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers' own file name for it
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

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
        _check_encodable(text)
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
            if hasattr(i, "item") and not isinstance(i, numbers.Integral):  # a 0-d tensor / numpy scalar
                i = i.item()
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):  # 1.5 or True is no token id
                raise TypeError(f"token ids must be integers, got {i!r} ({type(i).__name__}) at position {pos}")
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
            chat.check_template(template)
        self._chat_template = template

    def set_chat_template(self, template: Optional[str] = None, special_tokens: Optional[Sequence[str]] = None
                          ) -> "Tokenizer":
        """Attach `template` (default: `DEFAULT_CHAT_TEMPLATE`, ChatML) and add the marker tokens
        it uses as special tokens when the vocabulary lacks them (`special_tokens`, default
        `CHAT_TOKENS` for the shipped template). New tokens take the next free ids, so call this
        before building the model (its `d_vocab` is `vocab_size`). Returns self."""
        if template is None:
            template = chat.DEFAULT_CHAT_TEMPLATE
            special_tokens = chat.CHAT_TOKENS if special_tokens is None else special_tokens
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
        text = chat.render(template, messages, add_generation_prompt=add_generation_prompt,
                           continue_final_message=continue_final_message, **{**self.special_tokens_map(), **kwargs})
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
        text = _read_text(file, "tokenizer file")
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            raise TokenizerFileError(f"tokenizer file {file} is not valid JSON: {err}") from err
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as err:
            raise TokenizerFileError(f"tokenizer file {file} is not a valid tokenizer.json: {err}") from err
        template, roles = _read_sidecars(file.parent)
        try:
            return cls(hf, chat_template=template, roles=roles)
        except ValueError as err:  # a declared role names a token the vocabulary lacks, ...
            raise TokenizerFileError(f"tokenizer file {file} (with {TOKENIZER_CONFIG_FILE} beside it): {err}") from err

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
            config = json.loads(_read_text(config_file, "tokenizer config"))
        except json.JSONDecodeError as err:
            raise TokenizerFileError(f"{config_file} is not valid JSON: {err}") from err
        if not isinstance(config, dict):
            raise TokenizerFileError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
        for role in ("bos", "eos", "pad", "unk"):
            token = config.get(f"{role}_token")
            if isinstance(token, dict):  # older AddedToken serialisation
                token = token.get("content")
            if isinstance(token, str):
                roles[role] = token
        found = config.get("chat_template")
        if isinstance(found, list):  # named templates: [{"name": "default", "template": ...}, ...]
            found = next((t.get("template") for t in found if isinstance(t, dict) and t.get("name") == "default"), None)
        template = found if isinstance(found, str) else None
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        template = _read_text(folder / CHAT_TEMPLATE_FILE, "chat template")
    return template, roles


def _read_text(file: Path, what: str) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TokenizerFileError(f"{what} {file} is not UTF-8 text (byte {err.start}: {err.reason})") from None


def _check_encodable(text: str) -> None:
    """Refuse a lone surrogate (a Python string can hold one, UTF-8 text cannot) by position."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise UnknownTokenError(
            f"unencodable character {text[err.start]!r} at position {err.start} of the text "
            f"{_snippet(text, err.start)!r}: a lone surrogate is not Unicode text"
        ) from None


def _as_list(ids) -> list:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return list(ids)



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
