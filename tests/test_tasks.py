"""Tasks: deterministic, disjoint splits; correct scratchpads; exact masks; sound batching;
and a tiny model that learns from the pipeline within seconds."""

from __future__ import annotations

import json
import math
import re
import time
import warnings

import pytest
import torch

from interp.tasks import (
    ANSWER,
    IGNORE_INDEX,
    PAD_SEGMENT,
    PROMPT,
    SEGMENT_NAMES,
    STEP,
    Batch,
    Example,
    TaskConfigError,
    batches,
    collate,
    make_task,
)

SMALL = {
    "arithmetic": dict(digits=2, ops="+-*", format="scratchpad", n_train=300, n_val=50, n_test=50),
    "modular": dict(p=23),
    "induction": dict(vocab=12, seq_len=5, n_train=300, n_val=50, n_test=50),
    "text": dict(max_chars=60_000, seq_len=32),
}


def _key(name: str, ex: Example):
    """What makes two examples 'the same problem' for each task."""
    if name == "arithmetic":
        return ex.meta["op"], tuple(ex.meta["operands"])
    if name == "modular":
        return ex.meta["a"], ex.meta["b"]
    if name == "induction":
        return tuple(ex.meta["block"])
    return ex.meta["split"], ex.meta["start"]


def _dump(task) -> dict:
    return {s: [(e.input_ids, e.labels, e.segments, e.text) for e in task.split(s)] for s in ("train", "val", "test")}


# ---------------------------------------------------------------------- common contract
@pytest.mark.parametrize("name", list(SMALL))
def test_same_seed_same_data_other_seed_other_data(name):
    a, b = make_task(name, **SMALL[name]), make_task(name, **SMALL[name])
    assert _dump(a) == _dump(b)
    if name != "text":  # text splits are corpus ranges: the seed only picks subsets
        c = make_task(name, **{**SMALL[name], "seed": 1})
        assert _dump(c)["train"] != _dump(a)["train"]


@pytest.mark.parametrize("name", list(SMALL))
def test_splits_never_overlap(name):
    task = make_task(name, **SMALL[name])
    keys = {s: [_key(name, e) for e in task.split(s)] for s in ("train", "val", "test")}
    for s, ks in keys.items():
        assert len(ks) > 0, s
        assert len(set(ks)) == len(ks), f"duplicates inside {s}"
    assert not set(keys["train"]) & set(keys["val"])
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["val"]) & set(keys["test"])
    if name != "text":  # and no identical token sequence crosses splits either
        seqs = {s: {tuple(e.input_ids) for e in task.split(s)} for s in ("train", "val", "test")}
        assert not seqs["train"] & seqs["val"] and not seqs["train"] & seqs["test"] and not seqs["val"] & seqs["test"]


@pytest.mark.parametrize("name", list(SMALL))
def test_example_invariants(name):
    task = make_task(name, **SMALL[name])
    tok = task.tokenizer
    longest = 0
    for split in ("train", "val", "test"):
        data = task.split(split)
        for ex in [data[i] for i in range(min(len(data), 200))]:
            n = len(ex.input_ids)
            longest = max(longest, n)
            assert len(ex.labels) == n == len(ex.segments)
            assert set(ex.segments) <= {PROMPT, STEP, ANSWER}
            assert ex.text == tok.decode(ex.input_ids)
            for t, (i, y, s) in enumerate(zip(ex.input_ids, ex.labels, ex.segments)):
                assert y in (IGNORE_INDEX, i)  # a label is the token itself or ignored
                if s == PROMPT:
                    assert y == IGNORE_INDEX  # the prompt is never a target
            assert ex.segments[0] == PROMPT and ex.labels[0] == IGNORE_INDEX
            assert ex.segments == sorted(ex.segments)  # prompt, then steps, then answer
            if name != "text":
                assert ex.input_ids[0] == tok.bos_token_id
                assert ex.input_ids[-1] == tok.eos_token_id
                assert tok.encode(ex.text) == ex.input_ids  # text re-encodes to the same ids
    assert task.max_len >= longest
    assert all(0 <= i < tok.vocab_size for e in task.split("train")[:50] for i in e.input_ids)


@pytest.mark.parametrize("name", list(SMALL))
def test_config_is_json_and_rebuilds_the_task(name):
    task = make_task(name, **SMALL[name])
    cfg = json.loads(json.dumps(task.config()))
    assert cfg["name"] == name
    again = make_task(**cfg)
    assert _dump(again) == _dump(task)
    assert again.tokenizer == task.tokenizer


def test_make_task_rejects_unknown_names_and_options():
    with pytest.raises(TaskConfigError, match="unknown task 'sorting'"):
        make_task("sorting")
    with pytest.raises(TaskConfigError, match=r"no option\(s\) \['digit'\].*'digits'"):
        make_task("arithmetic", digit=3)
    with pytest.raises(TaskConfigError, match="format='latex'"):
        make_task("arithmetic", format="latex")
    with pytest.raises(TaskConfigError, match="mask_answer"):
        make_task("arithmetic", format="plain", step_masking_mode="mask_answer")
    with pytest.raises(TaskConfigError, match="only 100 exist"):
        make_task("arithmetic", digits=1, n_train=200, n_val=0, n_test=0).split("train")


def test_split_sizes_are_configurable():
    t = make_task("arithmetic", digits=3, n_train=123, n_val=45, n_test=67)
    assert (t.n_train, t.n_val, t.n_test) == (123, 45, 67)
    t = make_task("induction", n_train=10, n_val=2, n_test=3)
    assert (t.n_train, t.n_val, t.n_test) == (10, 2, 3)
    t = make_task("text", max_chars=60_000, seq_len=32, n_train=7, n_val=2, n_test=1)
    assert (t.n_train, t.n_val, t.n_test) == (7, 2, 1)
    with pytest.raises(ValueError, match="unknown split"):
        t.split("dev")


# ---------------------------------------------------------------------- arithmetic
def _column_digit(x: int, i: int) -> int:
    return (x // 10**i) % 10


def check_scratchpad(text: str) -> int:
    """Parse `<bos>PROMPT=<bot>STEPS<eot>ANSWER<eos>` and check every step's arithmetic from
    scratch (written from the format's description, not from the generator). Returns the
    number of steps checked."""
    m = re.fullmatch(r"<bos>(.+)=<bot>(.*)<eot>(-?\d+)<eos>", text)
    assert m, text
    problem, steps, answer = m.groups()
    op = next(c for c in "+-*" if c in problem)
    operands = [int(x) for x in problem.split(op)]
    true = operands[0]
    for x in operands[1:]:
        true = true + x if op == "+" else true - x if op == "-" else true * x
    assert int(answer) == true, text
    if op == "*":
        a, b = operands
        partial, _, sums = steps.partition("|")
        parts = []
        for j, step in enumerate(partial.split(";")):
            lhs, p = step.split("=")
            x, mult = lhs.split("*")
            assert int(x) == a and mult == str(_column_digit(b, j)) + "0" * j, (text, step)
            assert int(p) == a * int(mult), (text, step)
            parts.append(int(p))
        assert len(parts) == len(str(b))
        acc = parts[0]
        if len(parts) > 1:
            sum_steps = sums.split(";")
            assert len(sum_steps) == len(parts) - 1
            for p, step in zip(parts[1:], sum_steps):
                lhs, s = step.split("=")
                x, y = map(int, lhs.split("+"))
                assert (x, y) == (acc, p) and int(s) == acc + p, (text, step)
                acc += p
        else:
            assert not sums
        assert acc == true
        return len(parts) + max(0, len(parts) - 1)
    # + and -: one step per column, least significant first
    work = list(operands)
    if op == "-" and true < 0:
        work = [operands[1], operands[0]]  # negative a-b is worked as b-a
    cols = steps.split(";")
    assert len(cols) == max(len(str(x)) for x in work), text
    carry, digits = 0, []
    for i, step in enumerate(cols):
        lhs, rhs = step.split("=")
        s, c_out = map(int, rhs.split(","))
        terms = [int(t) for t in lhs.split(op)]
        assert terms[:-1] == [_column_digit(x, i) for x in work], (text, step)
        assert terms[-1] == carry, (text, step)
        if op == "+":
            total = sum(terms)
            assert (s, c_out) == (total % 10, total // 10), (text, step)
        else:
            v = terms[0] - sum(terms[1:])
            assert 0 <= s <= 9 and s - 10 * c_out == v, (text, step)
        digits.append(s)
        carry = c_out
    number = "".join(map(str, reversed(digits)))
    if op == "+":
        number = (str(carry) if carry else "") + number
    else:
        assert carry == 0
    assert int(number) == abs(true), text
    return len(cols)


@pytest.mark.parametrize(
    "options",
    [
        dict(digits=3, ops="+"),
        dict(digits=4, ops="+", n_operands=3),
        dict(digits=3, ops="-"),
        dict(digits=[4, 2], min_digits=1, ops="-", n_operands=2, allow_negative=True),
        dict(digits=3, ops="-", n_operands=3),
        dict(digits=3, ops="*"),
        dict(digits=[2, 4], min_digits=1, ops="+-*"),
    ],
)
def test_scratchpad_steps_are_correct(options):
    task = make_task("arithmetic", format="scratchpad", n_train=400, n_val=50, n_test=50, **options)
    checked = 0
    for split in ("train", "val", "test"):
        for ex in task.split(split):
            checked += check_scratchpad(ex.text)
    assert checked > 500


def test_arithmetic_plain_and_reversed_answers():
    plain = make_task("arithmetic", digits=3, ops="+-*", allow_negative=True, n_train=500, n_val=10, n_test=10)
    rev = make_task("arithmetic", digits=3, ops="+-*", allow_negative=True, n_train=500, n_val=10, n_test=10, format="reversed")
    negatives = 0
    for p, r in zip(plain.split("train"), rev.split("train")):
        assert p.meta == {**r.meta, "answer": p.meta["answer"]}  # same problems, same order
        prompt, answer = re.fullmatch(r"<bos>(.+=)(-?\d+)<eos>", p.text).groups()
        assert int(answer) == p.meta["result"] == eval(prompt[:-1])
        r_answer = re.fullmatch(r"<bos>.+=(-?\d+)<eos>", r.text).group(1)
        sign = "-" if p.meta["result"] < 0 else ""
        assert r_answer == sign + str(abs(p.meta["result"]))[::-1]
        negatives += p.meta["result"] < 0
    assert negatives > 0
    no_neg = make_task("arithmetic", digits=2, ops="-", n_train=500, n_val=10, n_test=10)
    assert all(e.meta["result"] >= 0 for e in no_neg.split("train"))


def test_arithmetic_digit_counts():
    fixed = make_task("arithmetic", digits=3, n_train=300, n_val=0, n_test=0)
    assert all(len(str(x)) == 3 for e in fixed.split("train") for x in e.meta["operands"])
    mixed = make_task("arithmetic", digits=[4, 2], min_digits=[1, 2], n_train=300, n_val=0, n_test=0)
    lens = [tuple(len(str(x)) for x in e.meta["operands"]) for e in mixed.split("train")]
    assert {a for a, _ in lens} == {1, 2, 3, 4} and {b for _, b in lens} == {2}


SEGMENT_TRAINED = {  # mode -> which segments are targets
    "none": {STEP: True, ANSWER: True},
    "mask_steps": {STEP: False, ANSWER: True},
    "mask_answer": {STEP: True, ANSWER: False},
}


@pytest.mark.parametrize("fmt", ["plain", "reversed", "scratchpad"])
@pytest.mark.parametrize("mode", list(SEGMENT_TRAINED))
def test_masking_modes_label_exactly_the_right_segments(fmt, mode):
    if mode == "mask_answer" and fmt != "scratchpad":
        with pytest.raises(TaskConfigError):
            make_task("arithmetic", format=fmt, step_masking_mode=mode)
        return
    task = make_task("arithmetic", digits=3, ops="+-*", format=fmt, step_masking_mode=mode, n_train=100, n_val=10, n_test=10)
    tok = task.tokenizer
    for ex in task.split("train"):
        segs = ex.segments
        # segment layout: <bos> ... '=' | <bot> ... <eot> | answer ... <eos>
        prompt = [t for t, s in zip(ex.input_ids, segs) if s == PROMPT]
        steps = [t for t, s in zip(ex.input_ids, segs) if s == STEP]
        answer = [t for t, s in zip(ex.input_ids, segs) if s == ANSWER]
        assert prompt[0] == tok.bos_token_id and tok.decode(prompt[-1:]) == "="
        if fmt == "scratchpad":
            assert steps[0] == tok.bot_token_id and steps[-1] == tok.eot_token_id
            assert tok.bot_token_id not in steps[1:-1] and tok.eot_token_id not in steps[1:-1]
        else:
            assert steps == []
        assert answer[-1] == tok.eos_token_id and tok.decode(answer[:-1]) == ex.meta["answer"]
        for t, (i, y, s) in enumerate(zip(ex.input_ids, ex.labels, segs)):
            trained = s != PROMPT and SEGMENT_TRAINED[mode][s]
            assert y == (i if trained else IGNORE_INDEX), (mode, fmt, t, SEGMENT_NAMES[s], ex.text)
        # answer_spans: prompt = everything before the first target; target = the trained run
        p, target = task.answer_spans(ex)
        assert p + target == ex.input_ids[: len(p) + len(target)]
        if mode == "none":
            assert p == prompt and target == steps + answer
        elif mode == "mask_steps":
            assert p == prompt + steps and target == answer
        else:
            assert p == prompt and target == steps


def test_example_for_a_typed_problem():
    task = make_task("arithmetic", digits=3, format="scratchpad")
    ex = task.example_for("+", [123, 459])
    assert ex.text == "<bos>123+459=<bot>3+9+0=2,1;2+5+1=8,0;1+4+0=5,0<eot>582<eos>"
    assert task.example_for("*", [123, 45]).text == "<bos>123*45=<bot>123*5=615;123*40=4920|615+4920=5535<eot>5535<eos>"
    assert task.example_for("-", [582, 459]).text == "<bos>582-459=<bot>2-9-0=3,1;8-5-1=2,0;5-4-0=1,0<eot>123<eos>"


# ---------------------------------------------------------------------- modular
def test_modular_split_is_a_permutation_of_all_pairs():
    p = 23
    task = make_task("modular", p=p, train_frac=0.5, val_frac=0.2)
    pairs = {s: [(e.meta["a"], e.meta["b"]) for e in task.split(s)] for s in ("train", "val", "test")}
    assert len(pairs["train"]) == round(0.5 * p * p) and len(pairs["val"]) == round(0.2 * p * p)
    everything = pairs["train"] + pairs["val"] + pairs["test"]
    assert sorted(everything) == [(a, b) for a in range(p) for b in range(p)]
    ex = task.split("test")[0]
    a, b, c = ex.meta["a"], ex.meta["b"], ex.meta["c"]
    assert c == (a + b) % p
    assert ex.input_ids[1:6] == [a, task.tokenizer.token_to_id("+"), b, task.tokenizer.token_to_id("="), c]
    assert ex.text == f"<bos> {a} + {b} = {c} <eos>"
    assert [y for y in ex.labels if y != IGNORE_INDEX] == [c, task.tokenizer.eos_token_id]
    assert task.answer_spans(ex) == (ex.input_ids[:5], [c, task.tokenizer.eos_token_id])
    short = make_task("modular", p=p, eos=False, n_train=10, n_val=5, n_test=5)
    assert short.split("train")[0].input_ids[-1] == short.split("train")[0].meta["c"]
    assert make_task("modular").vocab_size == 113 + 4 + 3


# ---------------------------------------------------------------------- induction
@pytest.mark.parametrize("label_mode", ["second_half", "all"])
def test_induction_sequences_and_labels(label_mode):
    n = 6
    task = make_task("induction", vocab=10, seq_len=n, repeats=3, label_mode=label_mode, n_train=50, n_val=5, n_test=5)
    tok = task.tokenizer
    for ex in task.split("train"):
        block = ex.input_ids[1 : 1 + n]
        assert len(set(block)) == n  # unique symbols
        assert ex.input_ids == [tok.bos_token_id] + block * 3 + [tok.eos_token_id]
        first_copy_trained = label_mode == "all"
        for t, y in enumerate(ex.labels):
            if t == 0:
                assert y == IGNORE_INDEX and ex.segments[t] == PROMPT
            elif t <= n:
                assert (y != IGNORE_INDEX) == first_copy_trained
                assert ex.segments[t] == (ANSWER if first_copy_trained else PROMPT)
            else:
                assert y == ex.input_ids[t] and ex.segments[t] == ANSWER
    ex = task.split("val")[0]
    prompt, target = task.answer_spans(ex)
    assert len(prompt) == (1 if label_mode == "all" else 1 + n)


# ---------------------------------------------------------------------- text
@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_text_windows_and_contiguous_ranges(tokenizer):
    kw = dict(max_chars=80_000, seq_len=48, tokenizer=tokenizer)
    if tokenizer == "bpe":
        kw["bpe_vocab_size"] = 300
    task = make_task("text", **kw)
    (a0, a1), (b0, b1), (c0, c1) = (task.char_ranges[s] for s in ("train", "val", "test"))
    assert a0 == 0 and a1 == b0 and b1 == c0 and c1 == 80_000  # contiguous, ordered, disjoint
    assert abs(a1 - 0.9 * 80_000) <= 1 and abs((b1 - b0) - 0.05 * 80_000) <= 1
    text = task._text
    for split in ("train", "val", "test"):
        lo, hi = task.char_ranges[split]
        data = task.split(split)
        assert len(data) > 0
        for ex in [data[0], data[len(data) // 2], data[-1]]:
            assert len(ex.input_ids) == 48
            assert ex.input_ids[0] == task.tokenizer.bos_token_id
            assert ex.labels == [IGNORE_INDEX] + ex.input_ids[1:]
            body = task.tokenizer.decode(ex.input_ids[1:])
            assert body in text[lo:hi]  # every window lies inside its own range
        starts = [data[i].meta["start"] for i in range(len(data))]
        assert starts == sorted(starts) and all(b - a == 47 for a, b in zip(starts, starts[1:]))
    assert task.max_len == 48
    ex = task.split("test")[0]
    assert task.answer_spans(ex) == (ex.input_ids[:-1], ex.input_ids[-1:])


def test_text_default_is_tinyshakespeare():
    task = make_task("text", seq_len=256)
    assert task.vocab_size == 65 + 3
    assert task.split("train")[0].text.startswith("<bos>First Citizen:\nBefore we proceed")
    total = sum(len(task.split(s)) for s in ("train", "val", "test"))
    assert total == pytest.approx(1_115_394 / 255, rel=0.01)


# ---------------------------------------------------------------------- batching
def _ex(n: int, start: int = 1) -> Example:
    ids = list(range(start, start + n))
    return Example(ids, [IGNORE_INDEX] + ids[1:], [PROMPT] + [ANSWER] * (n - 1), "")


def test_collate_pads_right_and_counts():
    exs = [_ex(3), _ex(5), _ex(1)]
    b = collate(exs, pad_id=0)
    assert isinstance(b, Batch) and b.input_ids.shape == (3, 5) and b.input_ids.dtype == torch.long
    assert b.input_ids.tolist() == [[1, 2, 3, 0, 0], [1, 2, 3, 4, 5], [1, 0, 0, 0, 0]]
    assert b.attention_mask.dtype == torch.bool
    assert b.attention_mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5, [True] + [False] * 4]
    assert b.labels.tolist() == [[-100, 2, 3, -100, -100], [-100, 2, 3, 4, 5], [-100] * 5]
    assert b.segments.tolist() == [[0, 2, 2, -1, -1], [0, 2, 2, 2, 2], [0, -1, -1, -1, -1]]
    assert b.n_tokens == 9 and b.n_truncated == 0 and b.n_targets == 6
    assert (b.labels[~b.attention_mask] == IGNORE_INDEX).all()
    assert (b.segments[~b.attention_mask] == PAD_SEGMENT).all()
    moved = b.to("cpu")
    assert torch.equal(moved.input_ids, b.input_ids) and moved.n_tokens == 9


def test_collate_truncates_and_warns():
    exs = [_ex(3), _ex(8), _ex(10)]
    with pytest.warns(UserWarning, match=r"truncated 2 of 3 examples to max_len=6 \(longest 10; 6 tokens dropped\)"):
        b = collate(exs, pad_id=0, max_len=6)
    assert b.input_ids.shape == (3, 6) and b.n_truncated == 2 and b.n_tokens == 3 + 6 + 6
    assert b.input_ids[2].tolist() == list(range(1, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collate(exs, pad_id=0, max_len=10)  # nothing cut, nothing said


def test_batches_deterministic_complete_and_epochs():
    task = make_task("induction", vocab=12, seq_len=5, n_train=50, n_val=10, n_test=10)

    def order(**kw):
        return [tuple(map(tuple, b.input_ids.tolist())) for b in batches(task, "train", 8, **kw)]

    once = order(shuffle=True, seed=3, epochs=1)
    assert once == order(shuffle=True, seed=3, epochs=1)
    assert once != order(shuffle=True, seed=4, epochs=1)
    rows = [r for b in once for r in b]
    assert sorted(rows) == sorted(tuple(e.input_ids) for e in task.split("train"))  # each once
    assert len(once) == 7 and len(order(shuffle=True, seed=3, epochs=1, drop_last=True)) == 6
    plain = order(shuffle=False, epochs=1)
    assert [r for b in plain for r in b] == [tuple(e.input_ids) for e in task.split("train")]
    two = order(shuffle=True, seed=3, epochs=2)
    assert two[:7] == once and two[7:] != once
    forever = batches(task, "val", 4, shuffle=False)  # epochs=None cycles
    got = [next(forever) for _ in range(10)]
    assert len(got) == 10 and torch.equal(got[0].input_ids, got[3].input_ids)


def test_batches_warn_once_about_truncation():
    task = make_task("arithmetic", digits=3, format="scratchpad", n_train=40, n_val=4, n_test=4)
    with pytest.warns(UserWarning, match=r"40 of 40 examples are longer than max_len=20") as rec:
        out = list(batches(task, "train", 8, shuffle=False, max_len=20, epochs=1))
    assert len(rec) == 1
    assert all(b.input_ids.shape[1] == 20 and b.n_truncated == 8 for b in out)


# ---------------------------------------------------------------------- learnability
def test_tiny_model_learns_induction_quickly():
    """The pipeline is learnable: a 2-layer model drops far below chance within seconds."""
    from models import presets

    task = make_task("induction", vocab=16, seq_len=4, n_train=2000, n_val=200, n_test=200)
    tok = task.tokenizer
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest and steadiest on shared CPUs
    try:
        torch.manual_seed(0)
        model = presets.make("vanilla", "tiny", d_vocab=tok.vocab_size, n_ctx=task.max_len, **tok.special_token_ids())
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        chance = math.log(tok.vocab_size)
        start, losses = time.monotonic(), []
        for batch in batches(task, "train", 32, shuffle=True, seed=0):
            loss = model(batch.input_ids, labels=batch.labels, attention_mask=batch.attention_mask, return_type="loss")
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if time.monotonic() - start > 15 or (len(losses) >= 20 and max(losses[-10:]) < 0.05 * chance):
                break
        model.eval()
        with torch.no_grad():
            val = next(batches(task, "val", 200, shuffle=False, epochs=1))
            val_loss = model(val.input_ids, labels=val.labels, attention_mask=val.attention_mask, return_type="loss").item()
    finally:
        torch.set_num_threads(threads)
    assert losses[0] > 0.8 * chance
    assert val_loss < 0.15 * chance, f"val loss {val_loss:.3f} after {len(losses)} steps (chance {chance:.3f})"


def test_induction_variable_block_length():
    task = make_task("induction", vocab=20, seq_len=8, min_seq_len=3, n_train=200, n_val=20, n_test=20, seed=1)
    seen = {len(e.input_ids) for e in task.split("train")}
    assert seen == {2 * n + 2 for n in range(3, 9)}  # <bos> + 2 blocks + <eos>, every length drawn
    for e in task.split("val"):
        n = (len(e.input_ids) - 2) // 2
        assert e.input_ids[1 : 1 + n] == e.input_ids[1 + n : 1 + 2 * n]
    with pytest.raises(ValueError, match="min_seq_len"):
        make_task("induction", vocab=20, seq_len=4, min_seq_len=6)
