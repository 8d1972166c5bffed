"""Dictionaries on disk in SAELens's layout.

Always run: what `save` writes matches SAELens 6.x's format (the expected tensors and cfg keys
per architecture below are transcribed from SAELens 6.54's `saes/*.py` and its
`sae_lens_disk_loader`: `load_from_disk` loads the state dict strictly, so the names and
shapes must be exactly these), round trips, a hand-made SAELens-layout directory loads and
computes SAELens's formulas, and bad files fail with one `DictionaryError` naming the file.

The `clients` group runs the real SAELens in its own virtualenv (scripts/make_client_venvs.sh;
`SAELENS_PYTHON` points at its python, default `.venv-clients/saelens/bin/python`): SAELens
opens our dictionaries and computes what we compute, and we open SAELens-saved ones.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from interp import features
from interp.features import DictionaryError

from test_features_dictionary import ARCHS, KINDS, make

ROOT = Path(__file__).resolve().parent.parent

# SAELens 6.54: the state dict of each inference class (name -> shape in d_in / d_sae / d_out)
SAE_LENS_TENSORS = {
    "standard": {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_in"), "b_dec": ("d_in",)},
    "topk": {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_in"), "b_dec": ("d_in",)},
    "jumprelu": {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_in"), "b_dec": ("d_in",),
                 "threshold": ("d_sae",)},
    "transcoder": {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_out"), "b_dec": ("d_out",)},
    "skip_transcoder": {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_out"),
                        "b_dec": ("d_out",), "W_skip": ("d_out", "d_in")},
    "jumprelu_transcoder": {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_out"),
                            "b_dec": ("d_out",), "threshold": ("d_sae",)},
    "jumprelu_skip_transcoder": {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_out"),
                                 "b_dec": ("d_out",), "threshold": ("d_sae",), "W_skip": ("d_out", "d_in")},
}
# SAEConfig fields every cfg.json has, plus per architecture
SAE_LENS_CFG = ("architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
                "reshape_activations", "metadata")
SAE_LENS_CFG_EXTRA = {"topk": ("k", "rescale_acts_by_decoder_norm"), "transcoder": ("d_out",)}
# what our architectures are saved as (SAELens saves BatchTopK / Matryoshka as JumpReLU too)
EXPECTED_ARCH = {
    ("relu", "sae"): "standard", ("relu", "transcoder"): "transcoder", ("relu", "skip"): "skip_transcoder",
    ("topk", "sae"): "topk", ("topk", "transcoder"): "topk_transcoder", ("topk", "skip"): "topk_skip_transcoder",
    **{(a, "sae"): "jumprelu" for a in ("jumprelu", "batchtopk", "matryoshka")},
    **{(a, "transcoder"): "jumprelu_transcoder" for a in ("jumprelu", "batchtopk", "matryoshka")},
    **{(a, "skip"): "jumprelu_skip_transcoder" for a in ("jumprelu", "batchtopk", "matryoshka")},
}


def trained_like(arch: str, kind: str, seed: int = 0) -> features.SparseDictionary:
    """A dictionary with non-trivial scales, biases and thresholds (as after training)."""
    torch.manual_seed(seed)
    sae = make(arch, kind)
    x = torch.randn(256, 16) * 4 + 1
    t = torch.randn(256, sae.cfg.d_out) * 0.3
    sae.init_from_data(x, t if kind != "sae" else None)
    assert float(sae.scale_in) != pytest.approx(1.0)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        if arch in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.2)
    return sae


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_save_writes_the_sae_lens_format(tmp_path, arch, kind):
    sae = trained_like(arch, kind)
    sae.save(tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "cfg.json").read_text())
    arch_name = EXPECTED_ARCH[arch, kind]
    assert cfg["architecture"] == arch_name
    dims = {"d_in": 16, "d_sae": 64, "d_out": sae.cfg.d_out}
    tensors = load_file(str(tmp_path / "d" / "sae_weights.safetensors"))
    if arch_name in SAE_LENS_TENSORS:
        want = {k: tuple(dims[d] for d in shape) for k, shape in SAE_LENS_TENSORS[arch_name].items()}
        assert {k: tuple(v.shape) for k, v in tensors.items()} == want
        extra = SAE_LENS_CFG_EXTRA.get("transcoder" if "transcoder" in arch_name else arch_name, ())
        assert set(SAE_LENS_CFG) | set(extra) <= set(cfg)
    assert cfg["apply_b_dec_to_input"] is (kind == "sae")
    assert cfg["normalize_activations"] == "none"  # the scales are folded into the weights
    meta = cfg["metadata"]
    assert meta["hook_name"] == "blocks.0.hook_resid_pre"
    assert int(meta["sae_lens_version"].split(".")[0]) >= 6  # else SAELens converts it as a pre-6.0 config
    if kind != "sae":
        assert meta["hook_name_out"] == "blocks.0.hook_mlp_out"
    # the folded weights compute our function with SAELens's formulas
    x = torch.randn(20, 16) * 4
    x_hat, z = sae(x)
    z_ref, out_ref = sae_lens_reference(cfg, tensors, x)
    torch.testing.assert_close(z_ref, z, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_ref, x_hat, rtol=1e-4, atol=1e-4)


def sae_lens_reference(cfg: dict, t: dict, x: torch.Tensor):
    """SAELens 6.54's encode/forward on raw tensors (normalize_activations none)."""
    arch = cfg["architecture"]
    sae_in = x - t["b_dec"] if cfg["apply_b_dec_to_input"] else x
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    if arch.startswith("topk"):
        if cfg.get("rescale_acts_by_decoder_norm"):
            pre = pre * t["W_dec"].norm(dim=-1)
        vals, idx = pre.topk(cfg["k"], dim=-1)
        z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    elif "jumprelu" in arch:
        z = pre.relu() * (pre > t["threshold"])
    else:
        z = pre.relu()
    acts = z / t["W_dec"].norm(dim=-1) if cfg.get("rescale_acts_by_decoder_norm") else z
    out = acts @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        out = out + x @ t["W_skip"].T
    return z, out


def test_same_width_topk_transcoder_reads_as_sae_lens_topk(tmp_path):
    """SAELens 6.54 has no TopK transcoder; one that keeps the width is its TopKSAE without the
    input bias, which computes the same thing."""
    sae = make("topk", "transcoder", d_out=16)
    sae.save(tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["apply_b_dec_to_input"] is False
    x = torch.randn(10, 16)
    z_ref, out_ref = sae_lens_reference(cfg, load_file(str(tmp_path / "d" / "sae_weights.safetensors")), x)
    torch.testing.assert_close(out_ref, sae(x)[0], rtol=1e-5, atol=1e-5)
    assert features.load(tmp_path / "d").cfg == sae.cfg


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip(tmp_path, arch, kind):
    sae = trained_like(arch, kind)
    sae.save(tmp_path / "d")
    back = features.load(tmp_path / "d")
    assert back.cfg == sae.cfg and type(back) is type(sae)
    x = torch.randn(30, 16) * 4
    (a, za), (b, zb) = sae(x), back(x)
    torch.testing.assert_close(zb, za, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for name, p in sae.state_dict().items():  # unfolded back to the training parameterisation
        torch.testing.assert_close(back.state_dict()[name], p, rtol=1e-5, atol=1e-6, msg=name)


def test_round_trip_fp16_storage(tmp_path):
    sae = trained_like("topk", "sae")
    sae.save(tmp_path / "d", dtype=torch.float16)
    tensors = load_file(str(tmp_path / "d" / "sae_weights.safetensors"))
    assert all(v.dtype == torch.float16 for v in tensors.values())
    back = features.load(tmp_path / "d")
    assert back.W_enc.dtype == torch.float32
    x = torch.randn(30, 16) * 4
    torch.testing.assert_close(back(x)[0], sae(x)[0], rtol=2e-2, atol=2e-2)


def handmade(tmp_path: Path, arch: str, **cfg_extra) -> tuple[Path, dict, dict]:
    """A directory as SAELens 6.x writes it, with random weights."""
    g = torch.Generator().manual_seed(3)
    d_in, d_sae, d_out = 16, 40, 12 if "transcoder" in arch else 16
    dims = {"d_in": d_in, "d_sae": d_sae, "d_out": d_out}
    tensors = {k: torch.randn(*(dims[d] for d in shape), generator=g) * 0.3
               for k, shape in SAE_LENS_TENSORS[arch].items()}
    if "threshold" in tensors:
        tensors["threshold"] = tensors["threshold"].abs()
    cfg = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": "transcoder" not in arch, "normalize_activations": "none",
           "reshape_activations": "none", "architecture": arch,
           "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12",
                        "hook_name": "blocks.0.hook_resid_pre", "model_name": "tiny"}}
    if "transcoder" in arch:
        cfg["d_out"] = d_out
        cfg["metadata"]["hook_name_out"] = "blocks.0.hook_mlp_out"
    if arch == "topk":
        cfg.update(k=4, rescale_acts_by_decoder_norm=False)
    cfg.update(cfg_extra)
    path = tmp_path / arch
    path.mkdir()
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(path / "sae_weights.safetensors"))
    return path, cfg, tensors


@pytest.mark.parametrize("arch, extra", [
    ("standard", {}), ("standard", {"apply_b_dec_to_input": False}), ("topk", {}),
    ("topk", {"rescale_acts_by_decoder_norm": True}), ("jumprelu", {}), ("transcoder", {}),
    ("skip_transcoder", {}), ("jumprelu_transcoder", {}), ("jumprelu_skip_transcoder", {}),
])
def test_loads_a_sae_lens_directory(tmp_path, arch, extra):
    path, cfg, tensors = handmade(tmp_path, arch, **extra)
    sae = features.load(path)
    assert sae.cfg.hook_name == "blocks.0.hook_resid_pre" and sae.cfg.model == {"name": "tiny"}
    assert sae.cfg.is_transcoder == ("transcoder" in arch) and sae.cfg.skip == ("skip" in arch)
    x = torch.randn(25, 16)
    z_ref, out_ref = sae_lens_reference(cfg, tensors, x)
    x_hat, z = sae(x)
    scale = z_ref.abs().max()
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-5 * float(scale))
    torch.testing.assert_close(x_hat, out_ref, rtol=1e-5, atol=1e-5 * float(out_ref.abs().max()))


def test_bad_files_raise_one_error_naming_the_file(tmp_path):
    sae = trained_like("topk", "sae")
    good = tmp_path / "good"
    sae.save(good)
    weights = good / "sae_weights.safetensors"

    def broken(name: str, fn) -> Path:
        d = tmp_path / name
        d.mkdir()
        for f in good.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        fn(d)
        return d

    cases = {
        "pickled": (lambda d: torch.save({"W_enc": torch.zeros(2)}, d / "sae_weights.safetensors"), "never unpickled"),
        "truncated": (lambda d: (d / "sae_weights.safetensors").write_bytes(weights.read_bytes()[:200]), "corrupt or truncated"),
        "garbage": (lambda d: (d / "sae_weights.safetensors").write_bytes(b"\x07" * 64), "corrupt or truncated"),
        "extra_key": (lambda d: save_file({**load_file(str(weights)), "W_extra": torch.zeros(3)},
                                          str(d / "sae_weights.safetensors")), r"unexpected tensors \['W_extra'\]"),
        "missing_key": (lambda d: save_file({k: v for k, v in load_file(str(weights)).items() if k != "b_enc"},
                                            str(d / "sae_weights.safetensors")), r"missing tensors \['b_enc'\]"),
        "misshaped": (lambda d: save_file({**load_file(str(weights)), "b_enc": torch.zeros(5)},
                                          str(d / "sae_weights.safetensors")), "mis-shaped tensors"),
        "nan": (lambda d: save_file({**load_file(str(weights)), "b_dec": torch.full((16,), float("nan"))},
                                    str(d / "sae_weights.safetensors")), "non-finite"),
        "bad_json": (lambda d: (d / "cfg.json").write_text("{not json"), "malformed JSON"),
        "no_cfg": (lambda d: (d / "cfg.json").unlink(), "missing file"),
        "no_weights": (lambda d: (d / "sae_weights.safetensors").unlink(), "missing file"),
        "bad_config_key": (lambda d: (d / "cfg.json").write_text(
            (d / "cfg.json").read_text().replace('"k": 3,', '"k": 3, "kk": 1,', 1)), "unknown key"),
    }
    for name, (fn, message) in cases.items():
        d = broken(name, fn)
        with pytest.raises(DictionaryError, match=message) as e:
            features.load(d)
        assert str(d) in str(e.value), name
    pt = tmp_path / "sae.pt"
    torch.save(sae.state_dict(), pt)
    with pytest.raises(DictionaryError, match="never unpickled"):
        features.load(pt)
    path, _, _ = handmade(tmp_path, "standard", architecture="gated")
    with pytest.raises(DictionaryError, match="architecture 'gated' is not supported"):
        features.load(path)


# ============================================================================ the real SAELens
def sae_lens_python() -> Path:
    return Path(os.environ.get("SAELENS_PYTHON", ROOT / ".venv-clients" / "saelens" / "bin" / "python"))


clients = pytest.mark.skipif(not sae_lens_python().exists(),
                             reason="SAELens venv missing (scripts/make_client_venvs.sh, or set SAELENS_PYTHON)")


def run_worker(*args: str) -> str:
    worker = Path(__file__).with_name("sae_lens_worker.py")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    proc = subprocess.run([str(sae_lens_python()), str(worker), *args], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.clients
@clients
def test_sae_lens_loads_ours(tmp_path):
    """SAE.load_from_disk opens every dictionary of ours that SAELens has a class for and
    computes our latents and reconstructions."""
    x = torch.randn(24, 16) * 4
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    cases = [(a, k) for a in ARCHS for k in KINDS if (a, k) not in (("topk", "transcoder"), ("topk", "skip"))]
    saes = {}
    for arch, kind in cases + [("topk", "same-width transcoder")]:  # SAELens has no other TopK transcoder
        sae = make("topk", "transcoder", d_out=16) if kind == "same-width transcoder" else trained_like(arch, kind)
        d = tmp_path / f"{arch}_{kind}".replace(" ", "_")
        sae.save(d)
        saes[d] = sae
    classes = json.loads(run_worker("load", str(tmp_path / "x.safetensors"), *map(str, saes)))
    for d, sae in saes.items():
        out = load_file(str(d / "out.safetensors"))
        x_hat, z = sae(x)
        what = f"{d.name} (SAELens {classes[str(d)]})"
        torch.testing.assert_close(out["z"], z, rtol=1e-4, atol=1e-4, msg=what)
        torch.testing.assert_close(out["forward"], x_hat, rtol=1e-4, atol=1e-4, msg=what)
        torch.testing.assert_close(out["decoded"], sae.decode(z), rtol=1e-4, atol=1e-4, msg=what)


@pytest.mark.clients
@clients
def test_we_load_sae_lens_saved(tmp_path):
    x = torch.randn(24, 16)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    made = json.loads(run_worker("save", str(tmp_path / "saved"), str(tmp_path / "x.safetensors")))
    assert len(made) == 8
    for arch in made:
        d = tmp_path / "saved" / arch
        ref = load_file(str(d / "outputs.safetensors"))
        sae = features.load(d)
        x_hat, z = sae(x)
        torch.testing.assert_close(z, ref["z"], rtol=1e-4, atol=1e-4, msg=arch)
        torch.testing.assert_close(x_hat, ref["forward"], rtol=1e-4, atol=1e-4, msg=arch)
