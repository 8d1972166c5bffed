"""Tokenizers: exact round trips, loud unknowns, specials, and files that load back equal."""

from __future__ import annotations

import json
import random

import pytest

from interp.tokenizers import (
    ARITHMETIC_SPECIALS,
    Tokenizer,
    TokenizerFileError,
    UnknownTokenError,
    arithmetic_tokenizer,
    bpe_tokenizer,
    char_tokenizer,
    load_tokenizer,
    word_tokenizer,
)
from interp.tasks.text import resolve_path

CORPUS = "To be, or not to be:\nthat is the question.\n\tWhether 'tis nobler  in the mind..."


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return resolve_path("data/tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe(shakespeare) -> Tokenizer:
    return bpe_tokenizer(shakespeare[:200_000], vocab_size=400)


def _random_text(alphabet: str, rng: random.Random, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


# ---------------------------------------------------------------------- char
def test_char_round_trip_keeps_spaces_and_newlines():
    tok = char_tokenizer(CORPUS)
    rng = random.Random(0)
    alphabet = sorted(set(CORPUS))
    for _ in range(50):
        s = _random_text("".join(alphabet), rng, rng.randint(0, 60))
        ids = tok.encode(s)
        assert len(ids) == len(s)  # one token per character
        assert tok.decode(ids) == s
    s = "  to be\n\n\tor not  \n"
    assert tok.decode(tok.encode(s)) == s


def test_char_vocab_layout_and_specials():
    tok = char_tokenizer("bca", specials=("<pad>", "<bos>", "<eos>"))
    assert tok.vocab_size == 6
    assert tok.convert_ids_to_tokens(range(6)) == ["<pad>", "<bos>", "<eos>", "a", "b", "c"]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.bot_token_id is None and tok.eot_token_id is None and tok.unk_token_id is None
    assert tok.special_token_ids() == {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    # special strings inside text encode to their ids; skip_special_tokens drops them
    ids = tok.encode("<bos>abc<eos>")
    assert ids == [1, 3, 4, 5, 2]
    assert tok.decode(ids) == "<bos>abc<eos>"
    assert tok.decode(ids, skip_special_tokens=True) == "abc"
    assert tok.encode("ab", add_special_tokens=True) == [1, 3, 4]


def test_char_fast_path_matches_hf_pipeline(shakespeare):
    tok = char_tokenizer(shakespeare)
    for s in [shakespeare[:5000], "a<bos>b\n<eos>", "", "First Citizen:\n<pad>"]:
        assert tok.encode(s) == tok.hf.encode(s, add_special_tokens=False).ids
        assert tok.decode(tok.encode(s)) == tok.hf.decode(tok.encode(s), skip_special_tokens=False)


def test_unknown_character_raises_with_char_and_position():
    tok = char_tokenizer("abc ")
    with pytest.raises(UnknownTokenError, match=r"'z' at position 4"):
        tok.encode("abc z")
    # also on the HF path (text with a special token in it), position in the original text
    with pytest.raises(UnknownTokenError, match=r"'\\n' at position 7"):
        tok.encode("a<bos>b\n")
    arith = arithmetic_tokenizer()
    with pytest.raises(UnknownTokenError, match=r"'x' at position 2"):
        arith.encode("12x3")
    with pytest.raises(UnknownTokenError, match=r"' ' at position 2"):
        arith.encode("12 + 3")


def test_declared_unk_maps_unknowns():
    tok = char_tokenizer("abc", unk="<unk>")
    unk = tok.unk_token_id
    assert unk is not None and tok.convert_ids_to_tokens([unk]) == ["<unk>"]
    assert tok.encode("azb") == [tok.encode("a")[0], unk, tok.encode("b")[0]]
    assert tok.encode("a<bos>z") == [tok.encode("a")[0], tok.bos_token_id, unk]  # HF path agrees
    assert "unk_token_id" not in tok.special_token_ids()  # ModelConfig has no such field


def test_bad_ids_raise_instead_of_vanishing():
    tok = arithmetic_tokenizer()
    with pytest.raises(ValueError, match="token id 99 at position 1"):
        tok.decode([5, 99])
    with pytest.raises(ValueError, match="token id -1"):
        tok.convert_ids_to_tokens([-1])


# ---------------------------------------------------------------------- arithmetic
def test_arithmetic_vocabulary_is_fixed():
    tok = arithmetic_tokenizer()
    assert tok.vocab_size == 22
    assert tok.convert_ids_to_tokens(range(5)) == list(ARITHMETIC_SPECIALS)
    assert tok.special_token_ids() == dict(
        pad_token_id=0, bos_token_id=1, eos_token_id=2, bot_token_id=3, eot_token_id=4
    )
    assert tok.encode("0123456789") == list(range(5, 15))
    assert tok == arithmetic_tokenizer()  # same every time


def test_arithmetic_round_trip():
    tok = arithmetic_tokenizer()
    rng = random.Random(1)
    for _ in range(100):
        a, b = rng.randrange(10**4), rng.randrange(10**4)
        s = f"{a}*{b}=<bot>{a}+{b}+0=3,1;9-4-1=4,0|12+3=15<eot>{a * b}"
        ids = tok.encode(s)
        assert tok.decode(ids) == s
        assert ids.count(tok.bot_token_id) == 1 and ids.count(tok.eot_token_id) == 1
        assert len(ids) == len(s) - len("<bot>") - len("<eot>") + 2
    assert tok.decode(tok.encode("<bos>1+2=3<eos>"), skip_special_tokens=True) == "1+2=3"


# ---------------------------------------------------------------------- word
def test_word_tokenizer_ids_and_errors():
    tok = word_tokenizer(["0", "1", "2", "+", "="], specials_first=False)
    assert tok.encode("1 + 2 =") == [1, 3, 2, 4]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (5, 6, 7)
    assert tok.decode([6, 1, 3, 2, 4, 0, 7]) == "<bos> 1 + 2 = 0 <eos>"
    assert tok.decode([6, 1, 3, 2, 4, 0, 7], skip_special_tokens=True) == "1 + 2 = 0"
    with pytest.raises(UnknownTokenError, match=r"'12' at position 4"):
        tok.encode("1 + 12 =")


# ---------------------------------------------------------------------- bpe
def test_bpe_round_trip_and_size(bpe, shakespeare):
    assert bpe.vocab_size == 400
    assert bpe.special_token_ids() == {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    sample = shakespeare[500_000:520_000]  # outside the training text
    ids = bpe.encode(sample)
    assert bpe.decode(ids) == sample
    assert len(ids) < 0.7 * len(sample)  # it learned merges
    odd = "naïve café — 日本語\t\r\n  x"  # bytes it never saw still round-trip
    assert bpe.decode(bpe.encode(odd)) == odd


def test_bpe_training_is_deterministic(bpe, shakespeare):
    again = bpe_tokenizer(shakespeare[:200_000], vocab_size=400)
    assert again == bpe
    assert again.encode(shakespeare[:3000]) == bpe.encode(shakespeare[:3000])


def test_bpe_vocab_too_small():
    with pytest.raises(ValueError, match="below the byte alphabet"):
        bpe_tokenizer("abc", vocab_size=100)


# ---------------------------------------------------------------------- files
@pytest.mark.parametrize("kind", ["char", "char_unk", "arithmetic", "word", "bpe"])
def test_save_load_equal(tmp_path, kind, bpe):
    tok = {
        "char": lambda: char_tokenizer(CORPUS),
        "char_unk": lambda: char_tokenizer(CORPUS, unk="<unk>"),
        "arithmetic": arithmetic_tokenizer,
        "word": lambda: word_tokenizer(["x", "y"]),
        "bpe": lambda: bpe,
    }[kind]()
    file = tok.save(tmp_path / "ckpt")
    assert file == tmp_path / "ckpt" / "tokenizer.json"
    json.loads(file.read_text())  # plain JSON, the standard HF layout
    for loaded in (load_tokenizer(tmp_path / "ckpt"), Tokenizer.load(file)):
        assert loaded == tok
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.special_token_ids() == tok.special_token_ids()
        assert loaded.unk_token_id == tok.unk_token_id
        assert loaded.kind == tok.kind
        text = "To be <bos> or" if kind != "word" else "x y <bos> x"
        if kind == "arithmetic":
            text = "12+3=<bot>1;2<eot>15"
        try:
            expected = tok.encode(text)
        except UnknownTokenError:
            with pytest.raises(UnknownTokenError):
                loaded.encode(text)
        else:
            assert loaded.encode(text) == expected
            assert loaded.decode(expected) == tok.decode(expected)
    # also to an explicit .json path
    other = tok.save(tmp_path / "elsewhere" / "my_tok.json")
    assert load_tokenizer(other) == tok


def test_file_is_readable_by_hf_tokenizers(tmp_path):
    from tokenizers import Tokenizer as HF

    tok = arithmetic_tokenizer()
    hf = HF.from_file(str(tok.save(tmp_path)))
    assert hf.encode("12+3=15", add_special_tokens=False).ids == tok.encode("12+3=15")
    fast = tok.to_transformers()
    assert fast("12+3", add_special_tokens=False)["input_ids"] == tok.encode("12+3")


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(TokenizerFileError, match="no such file"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(TokenizerFileError, match=r"has no tokenizer\.json"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerFileError, match=r"bad\.json is not valid JSON"):
        load_tokenizer(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"version": "1.0", "model": 3}')
    with pytest.raises(TokenizerFileError, match=r"wrong\.json is not a valid tokenizer\.json"):
        load_tokenizer(wrong)


def test_model_config_accepts_special_ids():
    from models import ModelConfig

    tok = arithmetic_tokenizer()
    cfg = ModelConfig(d_vocab=tok.vocab_size, **tok.special_token_ids())
    assert cfg.bot_token_id == tok.bot_token_id and cfg.pad_token_id == tok.pad_token_id
