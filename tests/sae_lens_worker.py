"""Runs inside SAELens's own virtualenv (tests/test_features_io.py, the `clients` group).

    python sae_lens_worker.py load INPUTS DIR...          # SAE.load_from_disk(DIR) on INPUTS["x"] -> DIR/out.safetensors
    python sae_lens_worker.py save OUT_DIR INPUTS        # one SAELens-saved dictionary per architecture

Tensors travel as .safetensors files; nothing here imports interp.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def outputs(sae, x):
    with torch.no_grad():
        z = sae.encode(x)
        return {"z": z.contiguous(), "decoded": sae.decode(z).contiguous(), "forward": sae(x).contiguous()}


def load(inputs, *dirs):
    from sae_lens import SAE

    x = load_file(inputs)["x"]
    classes = {}
    for d in dirs:
        sae = SAE.load_from_disk(d)
        save_file(outputs(sae, x), str(Path(d) / "out.safetensors"))
        classes[d] = type(sae).__name__
    print(json.dumps(classes))


def save(out_dir, inputs):
    from sae_lens.registry import get_sae_class
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    x = load_file(inputs)["x"]
    d_in, d_sae, d_out = x.shape[-1], 48, 10
    made = {}
    for arch in ["standard", "topk", "topk_rescaled", "jumprelu", "transcoder", "skip_transcoder",
                 "jumprelu_transcoder", "jumprelu_skip_transcoder"]:
        name = "topk" if arch == "topk_rescaled" else arch
        cls, cfg_cls = get_sae_class(name)
        kw = dict(d_in=d_in, d_sae=d_sae)
        meta = dict(hook_name="blocks.0.hook_resid_pre", model_name="tiny")
        if "transcoder" in arch:
            kw.update(d_out=d_out, apply_b_dec_to_input=False)
            meta["hook_name_out"] = "blocks.0.hook_mlp_out"
        if name == "topk":
            kw.update(k=5, rescale_acts_by_decoder_norm=arch == "topk_rescaled")
        sae = cls(cfg_cls(**kw, metadata=SAEMetadata(**meta)))
        with torch.no_grad():
            for n, p in sae.named_parameters():
                p.copy_(torch.randn_like(p) * (0.3 if n != "threshold" else 0.2))
            if hasattr(sae, "threshold"):
                sae.threshold.abs_()
            if arch == "topk_rescaled":
                sae.W_dec.mul_(torch.rand(d_sae, 1) + 0.5)
        path = Path(out_dir) / arch
        sae.save_model(path)
        save_file(outputs(sae, x), str(path / "outputs.safetensors"))
        made[arch] = type(sae).__name__
    print(json.dumps(made))


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"load": load, "save": save}[mode](*args)
