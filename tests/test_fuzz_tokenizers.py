"""Property-based fuzzing of `interp.tokenizers`: random Unicode (surrogates and control
characters included), empty and very long texts, random id lists, garbage tokenizer files.

Each builder keeps the promise its docstring makes: char, arithmetic and BPE tokenizers
round-trip exactly (`decode(encode(s)) == s`) on what they can encode, a word tokenizer
round-trips up to whitespace; anything else ends in one named error (`UnknownTokenError`,
`TokenizerFileError`, a `ValueError`/`TypeError` naming the value), never a wrong id."""

from __future__ import annotations

import json

import pytest
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st

from interp.tokenizers import (
    Tokenizer,
    TokenizerFileError,
    UnknownTokenError,
    arithmetic_tokenizer,
    bpe_tokenizer,
    char_tokenizer,
    load_tokenizer,
    word_tokenizer,
)

CORPUS = "The quick brown fox, jumps over the lazy dog!\n\tÅngström — 東京 😀 " * 4
CHAR = char_tokenizer(CORPUS)
CHAR_UNK = char_tokenizer(CORPUS, unk="<unk>")
BPE = bpe_tokenizer(CORPUS * 8, vocab_size=300)
ARITH = arithmetic_tokenizer()
WORDS = word_tokenizer(["a", "b", "=", "12", "x"])

# every code point, lone surrogates (Cs) included and drawn often: Python strings can hold
# them, UTF-8 cannot (st.text drops them, so the string is joined from characters)
ANY_TEXT = st.lists(st.one_of(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()),
                              st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, blacklist_categories=())),
                    max_size=200).map("".join)
NO_SURROGATES = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)
SPECIAL = st.sampled_from(["<pad>", "<bos>", "<eos>", "<unk>"])


def encodes_or_names_the_fault(tok: Tokenizer, text: str):
    """The ids, or None after a named refusal. Any other exception fails the test."""
    try:
        ids = tok.encode(text)
    except UnknownTokenError as e:
        assert "position" in str(e), e
        return None
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    return ids


@fuzz(150)
@given(st.one_of(ANY_TEXT, st.lists(st.one_of(st.sampled_from(CORPUS), SPECIAL)).map("".join)))
def test_char_tokenizer_round_trips_or_names_the_character(text):
    ids = encodes_or_names_the_fault(CHAR, text)
    if ids is not None:
        assert CHAR.decode(ids) == text
    if all(c in CORPUS for c in text):  # the corpus' own characters always encode
        assert ids is not None
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):  # with <unk>: every real text encodes
        assert all(0 <= i < CHAR_UNK.vocab_size for i in CHAR_UNK.encode(text))


@fuzz(150)
@given(ANY_TEXT)
def test_bpe_round_trips_every_text_and_names_a_lone_surrogate(text):
    ids = encodes_or_names_the_fault(BPE, text)
    if ids is None:
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in text)  # the only thing bytes cannot hold
    else:
        assert BPE.decode(ids) == text
    assert BPE.encode_batch([text, text]) == [ids, ids] if ids is not None else True


@fuzz(100)
@given(st.text(st.sampled_from("0123456789+-*=;,|"), max_size=300), NO_SURROGATES)
def test_arithmetic_round_trips_its_alphabet_and_refuses_the_rest(text, other):
    assert ARITH.decode(ARITH.encode(text)) == text
    ids = encodes_or_names_the_fault(ARITH, other)
    assert (ids is None) == any(c not in "0123456789+-*=;,|" for c in other.replace("<pad>", "").replace(
        "<bos>", "").replace("<eos>", "").replace("<bot>", "").replace("<eot>", ""))


@fuzz(100)
@given(st.lists(st.sampled_from(["a", "b", "=", "12", "x", "y"]), max_size=40),
       st.lists(st.sampled_from([" ", "\t", "\n", "  "]), min_size=41, max_size=41))
def test_word_tokenizer_round_trips_up_to_whitespace(words, gaps):
    text = "".join(g + w for g, w in zip(gaps, words))
    ids = encodes_or_names_the_fault(WORDS, text)
    assert (ids is None) == ("y" in words)
    if ids is not None:
        assert WORDS.decode(ids) == " ".join(words)


def test_empty_and_very_long_texts():
    for tok in (CHAR, BPE, ARITH, WORDS):
        assert tok.encode("") == [] and tok.decode([]) == ""
    long = CORPUS * 500  # ~35k characters
    assert CHAR.decode(CHAR.encode(long)) == long
    assert BPE.decode(BPE.encode(long)) == long


@fuzz(150)
@given(st.lists(st.one_of(st.integers(-5, 400), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3),
                          st.none()), max_size=20))
def test_decode_takes_only_integer_ids_in_the_vocabulary(ids):
    for tok in (CHAR, BPE):
        ok = all(type(i) is int and 0 <= i < tok.vocab_size for i in ids)
        try:
            text = tok.decode(ids)
        except (ValueError, TypeError) as e:
            assert not ok, e
            assert "position" in str(e), e  # names which id
            continue
        assert ok, f"decoded {ids!r} to {text!r}: a non-integer or out-of-range id slipped through"


# ------------------------------------------------------------------ files
VALID = json.loads(CHAR.to_json_str())


def json_values():
    return st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                        max_leaves=12)


@st.composite
def mutated_tokenizer_json(draw):
    data = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(["model", "pre_tokenizer", "decoder", "added_tokens", "post_processor", None]))
        if section is None:
            data[draw(st.text(max_size=6))] = draw(json_values())
        elif isinstance(data.get(section), dict) and data[section] and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(data[section])))
            data[section][key] = draw(json_values())
        else:
            data[section] = draw(json_values())
    return json.dumps(data)


@fuzz(80)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode),
                 json_values().map(lambda v: json.dumps(v).encode()),
                 mutated_tokenizer_json().map(str.encode)))
def test_garbage_tokenizer_files_are_refused_by_name(tmp_path_factory, blob):
    folder = tmp_path_factory.mktemp("tok")
    (folder / "tokenizer.json").write_bytes(blob)
    try:
        tok = load_tokenizer(folder)
    except TokenizerFileError as e:
        assert "tokenizer" in str(e)
        return
    # what loads is a working tokenizer: encodes, decodes its own ids, or names the fault
    ids = encodes_or_names_the_fault(tok, "the fox")
    if ids is not None:
        assert isinstance(tok.decode(ids), str)


@fuzz(60)
@given(st.one_of(st.binary(max_size=100), json_values().map(lambda v: json.dumps(v).encode())),
       st.binary(max_size=60))
def test_garbage_sidecar_files_are_refused_by_name(tmp_path_factory, config_blob, template_blob):
    folder = tmp_path_factory.mktemp("tok")
    CHAR.save(folder)
    (folder / "tokenizer_config.json").write_bytes(config_blob)
    (folder / "chat_template.jinja").write_bytes(template_blob)
    try:
        tok = load_tokenizer(folder)
    except TokenizerFileError as e:
        assert str(folder) in str(e)
        return
    assert tok.encode("fox") == CHAR.encode("fox")


@pytest.mark.parametrize("bad", [b"abc", 3, None, ["a"]])
def test_encode_refuses_what_is_not_text(bad):
    with pytest.raises(TypeError, match="encode expects a str"):
        CHAR.encode(bad)
