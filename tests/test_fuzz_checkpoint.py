"""Property-based fuzzing of the checkpoint loader: truncated files, flipped bits, crafted
weights (wrong dtypes, shapes, names), garbage config.json and safetensors headers, pickles
where safetensors belong. Every case ends in one `CheckpointError` naming the file, or loads
exactly the model that was saved; never a traceback from deep inside, never a silently
different model."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

import interp
from interp import checkpoint as ck
from interp.checkpoint import CheckpointError
from interp.tokenizers import char_tokenizer
from models import presets

TOKENS = torch.tensor([[1, 5, 7, 3, 9, 4], [1, 8, 6, 6, 3, 2]])


def make_model():
    torch.manual_seed(0)
    model = presets.make("llama-like", "tiny", d_vocab=16, n_ctx=16, n_layers=1, d_model=24, n_heads=2,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


MODEL = make_model()
TOKENIZER = char_tokenizer("abcdefghijklm")
SOURCE = Path(tempfile.mkdtemp(prefix="fuzz-ckpt-")) / "ckpt"
ck.save(MODEL, SOURCE, TOKENIZER, task={"name": "count"}, training={"step": 3})
with torch.no_grad():
    WANT = MODEL(TOKENS)


def copy_of_source() -> Path:
    dst = Path(tempfile.mkdtemp(prefix="fuzz-case-")) / "ckpt"
    shutil.copytree(SOURCE, dst)
    return dst


def refused_or_identical(path: Path) -> str:
    """'refused' after one CheckpointError that names a file of the checkpoint, 'identical' if
    what loads is the saved model (same config, weights, tokenizer). Anything else fails."""
    try:
        model, tok = interp.load(path)
    except CheckpointError as e:
        assert str(path) in str(e), e
        return "refused"
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    assert model.cfg.to_dict() == MODEL.cfg.to_dict()
    for (name, a), b in zip(model.state_dict().items(), MODEL.state_dict().values()):
        assert torch.equal(a, b), name
    assert tok.to_json_str() == TOKENIZER.to_json_str()
    with torch.no_grad():
        assert torch.equal(model(TOKENS), WANT)
    return "identical"


FILES = ["model.safetensors", "config.json", "tokenizer.json"]


@fuzz(60)
@given(st.sampled_from(FILES), st.floats(0, 1, exclude_max=True))
def test_truncated_files_are_refused(name, fraction):
    path = copy_of_source()
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: int(len(data) * fraction)])
    assert refused_or_identical(path) == "refused"


@fuzz(150)
@given(st.sampled_from(FILES), st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=4),
       st.integers(0, 7))
def test_flipped_bits_are_refused_or_change_nothing(name, where, bit):
    """A flipped bit anywhere (weights, the safetensors header, config.json, tokenizer.json)
    is caught; the only flips allowed through are those that leave the model the same (e.g.
    `1e-05` -> `1E-05` in config.json)."""
    path = copy_of_source()
    data = bytearray((path / name).read_bytes())
    for w in sorted({int(len(data) * f) for f in where}):
        data[w] ^= 1 << bit
    (path / name).write_bytes(bytes(data))
    refused_or_identical(path)


def test_every_weight_byte_is_covered():
    """Deterministically: a flip in the first, a middle and the last byte of the tensor data."""
    size = (SOURCE / "model.safetensors").stat().st_size
    header = 8 + struct.unpack("<Q", (SOURCE / "model.safetensors").read_bytes()[:8])[0]
    for offset in (header, (header + size) // 2, size - 1):
        path = copy_of_source()
        data = bytearray((path / "model.safetensors").read_bytes())
        data[offset] ^= 0x10
        (path / "model.safetensors").write_bytes(bytes(data))
        assert refused_or_identical(path) == "refused", offset


# ------------------------------------------------------------------ crafted weights
def strip_integrity(path: Path) -> None:
    """Make the checkpoint look like one written elsewhere (no recorded sha256 / config):
    then only the structural checks stand between a crafted file and a wrong model."""
    data = json.loads((path / "config.json").read_text())
    data.pop("weights_sha256", None)
    (path / "config.json").write_text(json.dumps(data))


DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool]
NAMES = list(MODEL.state_dict())


@st.composite
def crafted_state_dicts(draw):
    sd = {k: v.clone() for k, v in MODEL.state_dict().items()}
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["dtype", "shape", "drop", "add", "rename"]))
        name = draw(st.sampled_from(sorted(sd))) if sd else None
        if op == "dtype" and name:
            sd[name] = sd[name].to(draw(st.sampled_from(DTYPES)))
        elif op == "shape" and name:
            t = sd[name].flatten()
            how = draw(st.sampled_from(["flat", "extra", "cut"]))
            sd[name] = t if how == "flat" else t[None] if how == "extra" else t[: max(0, t.numel() - 1)]
        elif op == "drop" and name:
            del sd[name]
        elif op == "add":
            sd[draw(st.sampled_from(["extra.weight", "blocks.9.attn.qkv.weight", "_orig_mod.x"]))] = torch.zeros(3)
        elif op == "rename" and name:
            sd["module." + name + draw(st.sampled_from(["", "_", ".x"]))] = sd.pop(name)
    return sd


@fuzz(100)
@given(crafted_state_dicts())
def test_crafted_weights_are_refused_by_name_or_load_as_written(sd):
    path = copy_of_source()
    strip_integrity(path)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))
    try:
        model, _ = interp.load(path)
    except CheckpointError as e:
        assert "model.safetensors" in str(e), e
        return
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    # loaded: then every tensor is the crafted one (a float dtype change is a cast, `module.` a prefix)
    got = model.state_dict()
    for name, t in sd.items():
        key = ck._strip_prefixes(name)
        assert t.is_floating_point() and torch.equal(got[key], t.float()), name
    assert set(map(ck._strip_prefixes, sd)) == set(got) - {n for n, _ in model.named_buffers()}


# ------------------------------------------------------------------ garbage config.json
def json_values():
    return st.recursive(st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=False)
                        | st.text(max_size=8), lambda kids: st.lists(kids, max_size=3)
                        | st.dictionaries(st.text(max_size=8), kids, max_size=3), max_leaves=8)


CONFIG = json.loads((SOURCE / "config.json").read_text())


@st.composite
def mutated_configs(draw):
    data = json.loads(json.dumps(CONFIG))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "drop", "add"]))
        key = draw(st.sampled_from(sorted(data))) if data else "x"
        if op == "set":
            data[key] = draw(json_values() | st.sampled_from(["true", "false", "64", 64.0, 1e30, -1, 0, True, False]))
        elif op == "drop":
            data.pop(key, None)
        else:
            data[draw(st.text(min_size=1, max_size=8))] = draw(json_values())
    return json.dumps(data).encode()


@fuzz(80)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=100).map(str.encode),
                 json_values().map(lambda v: json.dumps(v).encode()), mutated_configs()))
def test_garbage_config_json_is_refused_by_name(blob):
    """Also with the integrity record stripped (a config written by hand or by another tool):
    a field of the wrong type or value is refused by name, never built into a model."""
    for strip in (False, True):
        path = copy_of_source()
        if strip:
            strip_integrity(path)
            weights = ck.load_state_dict(path)
            save_file(weights, str(path / "model.safetensors"))  # no recorded config either
        (path / "config.json").write_bytes(blob)
        try:
            model, _ = interp.load(path)
        except CheckpointError as e:
            assert "config.json" in str(e) or "model.safetensors" in str(e), e
            continue
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)
        # what loads is what the file says, value for value and type for type (no "false" read as
        # true, no 64.0 rounded to 64), and it runs
        given = {k: v for k, v in json.loads(blob).items() if k not in ck.META_KEYS}
        have = model.cfg.to_dict()
        for field, value in given.items():
            assert have[field] == value and type(have[field]) is type(value), (field, value, have[field])
        with torch.no_grad():
            assert model(TOKENS[:, :2]).isfinite().all()


# ------------------------------------------------------------------ garbage safetensors
@fuzz(60)
@given(st.one_of(
    st.binary(max_size=64),
    st.tuples(st.integers(0, 2**64 - 1), st.binary(max_size=64)).map(lambda t: struct.pack("<Q", t[0]) + t[1]),
    json_values().map(lambda v: json.dumps(v).encode()).map(lambda h: struct.pack("<Q", len(h)) + h + b"\0" * 16),
    st.dictionaries(st.sampled_from(NAMES[:4] + ["__metadata__"]),
                    st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "I64", "BOOL", "X"]),
                                           "shape": st.lists(st.integers(-1, 70), max_size=3),
                                           "data_offsets": st.lists(st.integers(-1, 9000), min_size=2, max_size=2)}),
                    max_size=4).map(lambda d: json.dumps(d).encode()).map(
        lambda h: struct.pack("<Q", len(h)) + h + b"\0" * 256)))
def test_garbage_safetensors_is_refused(blob):
    for strip in (False, True):
        path = copy_of_source()
        if strip:
            strip_integrity(path)
        (path / "model.safetensors").write_bytes(blob)
        assert refused_or_identical(path) == "refused"


# ------------------------------------------------------------------ pickles
class Boom:
    """Unpickling this would create a file: proof that a pickle ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("where", ["model.safetensors", "model.pt"])
def test_a_pickle_is_never_unpickled(tmp_path, where):
    marker = tmp_path / "ran"
    for payload in ({"state_dict": MODEL.state_dict()}, Boom(str(marker)), {"w": Boom(str(marker))}):
        path = copy_of_source()
        if where == "model.pt":
            (path / "model.safetensors").unlink()
            strip_integrity(path)
        with open(path / where, "wb") as f:
            if isinstance(payload, dict) and "state_dict" in payload:
                torch.save(payload, f)
            else:
                pickle.dump(payload, f)
        outcome = refused_or_identical(path)
        assert not marker.exists(), "a pickle ran"
        if where == "model.safetensors" or not isinstance(payload, dict) or "w" in payload:
            assert outcome == "refused"
