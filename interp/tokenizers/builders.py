"""The four tokenizer builders (char, arithmetic, word, byte-level BPE). See the package docstring."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from .core import _CHAR_SPLIT, _NO_UNK, Tokenizer

DEFAULT_SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>")
ARITHMETIC_SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<bot>", "<eot>")
# operators, answer marker, and the scratchpad separators (see interp.tasks.arithmetic)
ARITHMETIC_SYMBOLS: tuple[str, ...] = ("+", "-", "*", "=", ";", ",", "|")


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
