"""Chat templates on `interp.tokenizers.Tokenizer`, checked against transformers'
`PreTrainedTokenizerFast.apply_chat_template` and round-tripped through files and checkpoints."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import interp
from interp.tokenizers import (
    CHAT_TEMPLATE_FILE,
    CHAT_TOKENS,
    DEFAULT_CHAT_TEMPLATE,
    bpe_tokenizer,
    char_tokenizer,
    load_tokenizer,
)
from models import presets

CORPUS = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,!?'\n"
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello there!"},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "Who are you?"},
]
CUSTOM = ("{% for m in messages %}{{ m['role'][0] | upper }}: {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
          "{% if add_generation_prompt %}A:{% endif %}")


def hf_ids(hf_tok, messages, **kw):
    return hf_tok.apply_chat_template(messages, tokenize=True, return_dict=False, **kw)


@pytest.mark.parametrize("build", [lambda: char_tokenizer(CORPUS), lambda: bpe_tokenizer(CORPUS * 20, 300)])
def test_default_template_equals_transformers(build):
    tok = build()
    n = tok.vocab_size
    tok.set_chat_template()
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    assert tok.vocab_size == n + 2 and all(t in tok.special_tokens for t in CHAT_TOKENS)
    text = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<bos><|im_start|>system\nYou are terse.<|im_end|>\n")
    assert text.endswith("<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True)
    assert ids[:2] == [tok.bos_token_id, tok.token_to_id("<|im_start|>")]
    assert tok.decode(ids) == text
    hf = tok.to_transformers()
    for gen in (True, False):
        assert hf.apply_chat_template(CHAT, add_generation_prompt=gen, tokenize=False) == \
            tok.apply_chat_template(CHAT, add_generation_prompt=gen, tokenize=False)
        assert hf_ids(hf, CHAT, add_generation_prompt=gen) == tok.apply_chat_template(CHAT, add_generation_prompt=gen)
    # calling it again adds nothing
    tok.set_chat_template()
    assert tok.vocab_size == n + 2


def test_custom_template_variables_and_continue_final_message():
    tok = char_tokenizer(CORPUS + ":").set_chat_template(CUSTOM)
    assert tok.apply_chat_template(CHAT[1:3], tokenize=False) == "U: Hello there!<eos>\nA: Hi.<eos>\n"
    assert tok.apply_chat_template(CHAT[1:2], add_generation_prompt=True, tokenize=False).endswith("A:")
    hf = tok.to_transformers()
    for kw in ({"continue_final_message": True}, {"add_generation_prompt": True}):
        assert hf_ids(hf, CHAT, **kw) == tok.apply_chat_template(CHAT, **kw)


def test_round_trip_through_files_transformers_and_checkpoints(tmp_path):
    tok = char_tokenizer(CORPUS).set_chat_template()
    want = tok.apply_chat_template(CHAT, add_generation_prompt=True)
    # our save: tokenizer.json + chat_template.jinja (transformers' own file name) ...
    tok.save(tmp_path / "ours")
    assert (tmp_path / "ours" / CHAT_TEMPLATE_FILE).read_text() == DEFAULT_CHAT_TEMPLATE
    back = load_tokenizer(tmp_path / "ours")
    assert back == tok and back.apply_chat_template(CHAT, add_generation_prompt=True) == want
    # ... which transformers reads as it is
    hf = PreTrainedTokenizerFast.from_pretrained(tmp_path / "ours")
    assert hf.chat_template == DEFAULT_CHAT_TEMPLATE
    assert hf_ids(hf, CHAT, add_generation_prompt=True) == want
    # transformers' save_pretrained, read back by us
    tok.to_transformers().save_pretrained(tmp_path / "hf")
    again = load_tokenizer(tmp_path / "hf")
    assert again.chat_template == DEFAULT_CHAT_TEMPLATE and again.bos_token_id == tok.bos_token_id
    assert again.apply_chat_template(CHAT, add_generation_prompt=True) == want
    # and from a loaded transformers tokenizer
    assert Tokenizer_from(AutoTokenizer.from_pretrained(tmp_path / "hf")).apply_chat_template(CHAT) == \
        tok.apply_chat_template(CHAT)
    # in a checkpoint, through interp.load
    model = presets.make("vanilla", "tiny", d_vocab=tok.vocab_size)
    interp.save(model, tmp_path / "ckpt", tok)
    _, loaded = interp.load(tmp_path / "ckpt")
    assert loaded.chat_template == DEFAULT_CHAT_TEMPLATE
    assert loaded.apply_chat_template(CHAT, add_generation_prompt=True) == want
    # saving a tokenizer without a template removes a stale template file
    char_tokenizer(CORPUS).save(tmp_path / "ours")
    assert not (tmp_path / "ours" / CHAT_TEMPLATE_FILE).exists()
    assert load_tokenizer(tmp_path / "ours").chat_template is None


def Tokenizer_from(hf_tokenizer):
    from interp.tokenizers import Tokenizer

    return Tokenizer.from_transformers(hf_tokenizer)


def test_hf_export_carries_the_template(tmp_path):
    from models.hf import export_hf

    tok = char_tokenizer(CORPUS).set_chat_template()
    model = presets.make("factored", "tiny", d_vocab=tok.vocab_size)
    export_hf(model, tmp_path, tok, arch="auto")
    hf = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert hf_ids(hf, CHAT, add_generation_prompt=True) == tok.apply_chat_template(CHAT, add_generation_prompt=True)


def test_errors_name_the_problem():
    tok = char_tokenizer(CORPUS)
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template(CHAT)
    with pytest.raises(ValueError, match="not valid Jinja"):
        tok.set_chat_template("{% for m in messages %}")
    tok.set_chat_template()
    with pytest.raises(ValueError, match="empty conversation"):
        tok.apply_chat_template([])
    with pytest.raises(ValueError, match="message 0"):
        tok.apply_chat_template(["hello"])
