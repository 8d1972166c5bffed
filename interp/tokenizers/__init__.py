"""Tokenizers: one small wrapper over HF `tokenizers`, saved as a standard `tokenizer.json`.

```python
from interp.tokenizers import char_tokenizer, arithmetic_tokenizer, bpe_tokenizer, load_tokenizer
tok = char_tokenizer(open("data/tinyshakespeare.txt").read())
ids = tok.encode("To be, or not to be")        # no specials unless add_special_tokens=True
assert tok.decode(ids) == "To be, or not to be"
tok.save("runs/x")                             # -> runs/x/tokenizer.json
tok = load_tokenizer("runs/x")
```

Four builders (`builders.py`), all on `tokenizers.Tokenizer`, so the file any checkpoint carries is an
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

Chat templates (Jinja, rendered exactly as `transformers` renders them; `chat.py`):

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


from .builders import (
    ARITHMETIC_SPECIALS,
    ARITHMETIC_SYMBOLS,
    DEFAULT_SPECIALS,
    arithmetic_tokenizer,
    bpe_tokenizer,
    char_tokenizer,
    word_tokenizer,
)
from .chat import CHAT_TOKENS, DEFAULT_CHAT_TEMPLATE
from .core import (
    CHAT_TEMPLATE_FILE,
    MODEL_CONFIG_ROLES,
    ROLE_NAMES,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    Tokenizer,
    TokenizerFileError,
    UnknownTokenError,
    load_tokenizer,
)

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
    "TOKENIZER_CONFIG_FILE",
    "ROLE_NAMES",
    "MODEL_CONFIG_ROLES",
]
