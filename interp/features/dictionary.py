"""`SparseDictionary`: the one module behind every sparse autoencoder (SAE) and transcoder.

```python
from interp import features
sae = features.make(dict(arch="topk", d_in=128, d_sae=1024, k=16, hook_name="blocks.0.hook_resid_post"))
z = sae.encode(acts)                    # (..., d_sae) dense latents
x_hat = sae.decode(z)                   # (..., d_out)
x_hat, z = sae(acts)                    # both, through the hook points below
_, cache = sae.run_with_cache(acts)     # cache["hook_sae_acts_post"], ...
```

Shapes (SAELens's convention): `W_enc (d_in, d_sae)`, `b_enc (d_sae,)`, `W_dec (d_sae, d_out)`,
`b_dec (d_out,)`, optional `W_skip (d_in, d_out)` for transcoders. An SAE reads and writes
one hook (`d_out == d_in`) and subtracts `b_dec` from its input before encoding; a transcoder
reads `hook_name` and writes `out_hook_name` (e.g. MLP input -> MLP output) and has no input
bias.

**Normalisation.** With `normalize="expected_norm"` (Anthropic's April 2024 update; SAELens's
"expected_average_only_in") `init_from_data` measures scalars `scale_in`, `scale_out` so that
the scaled activations have mean norm sqrt(width). The module takes and returns activations in
the model's units; the parameters and the loss live in the scaled space, so the sparsity
coefficients mean the same thing on every hook. `save` folds the scales into the weights
(SAELens's on-disk format has no place for them) and `load` unfolds them.

**Training interface** (what the trainer calls; no host sync, no data-dependent Python
branches, fixed shapes, so `torch.compile(fullgraph=True)` and CUDA-graph capture work):

* `training_forward(x_in, x_target, fired=None) -> TrainOutput(loss, x_hat, parts, active, l0)`
  with `x_in (b, d_in)`, `x_target (b, d_out)` (the same tensor for an SAE) in model units.
  `fired (d_sae,) bool` is the trainer's dead-latent bookkeeping: **True = the latent fired
  within the last `cfg.dead_after_tokens` tokens**; the others are dead and are what AuxK
  (TopK family) trains. `None` turns AuxK off for this step. `active (d_sae,) bool` says which
  latents fired in this batch (to update that bookkeeping), `l0` is the mean number of active
  latents per token, `parts` holds the loss terms and `fvu` as detached scalars.
* `after_step()` after `optimizer.step()`: decoder rows back to unit norm where the
  architecture constrains them (the gradient parallel to each row is already removed inside
  the graph, see `project_decoder_grad`), running thresholds updated.
* `init_from_data(x, x_target=None)` once, before training: normalisation scales and `b_dec`
  (geometric median of the targets).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Optional, Union

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformer_lens.HookedRootModule import HookedRootModule

from models.hooks import HookPoint, observed

__all__ = [
    "ARCHITECTURES", "DictionaryConfig", "DictionaryError", "SparseDictionary", "TrainOutput", "make",
    "register", "project_decoder_grad",
]


class DictionaryError(ValueError):
    """A dictionary config, file or splice target is wrong; the message names the file / field / value."""


# ============================================================================ config
NORMALIZE = ("none", "expected_norm")
DTYPES = ("float32", "float16", "bfloat16", "float64")
# architecture name -> module that registers it (imported on first use, so the registry is complete)
ARCH_MODULES = {
    "relu": "interp.features.relu",
    "topk": "interp.features.topk",
    "batchtopk": "interp.features.batchtopk",
    "jumprelu": "interp.features.jumprelu",
    "matryoshka": "interp.features.matryoshka",
}
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")


@dataclass
class DictionaryConfig:
    """Everything that defines a dictionary; JSON-serialisable (`to_dict` / `from_dict`).

    Fields:
        arch: "relu" (ReLU + decoder-norm-weighted L1), "topk", "batchtopk", "jumprelu",
            "matryoshka" (Matryoshka BatchTopK).
        d_in: width of the activation read at `hook_name` (for `attn.hook_z`: n_heads * d_head).
        d_sae: number of latents.
        hook_name: the model hook read, e.g. "blocks.0.hook_resid_post".
        out_hook_name: transcoders: the hook written, e.g. "blocks.0.hook_mlp_out"; None = SAE.
        d_out: transcoders: width written (defaults to d_in; an SAE must have d_out == d_in).
        skip: transcoders: a linear skip `x @ W_skip` added to the output (Paulo et al. 2025).
        k: latents kept per token (topk) or per token on average over the batch (batchtopk,
            matryoshka); 0 < k < d_sae.
        l1_coeff: relu: weight of sum_i z_i * ||W_dec[i]|| (per token, scaled space).
        l0_coeff: jumprelu: weight of the (straight-through) L0 penalty.
        bandwidth: jumprelu: width of the rectangle kernel of the straight-through estimator.
        threshold_init: jumprelu: initial threshold (its log is the parameter).
        threshold_lr: batchtopk / matryoshka: rate of the running inference threshold's EMA
            towards each batch's smallest kept activation.
        matryoshka_widths: matryoshka: strictly increasing prefix widths ending at d_sae; one
            reconstruction loss per prefix, summed.
        aux_k: TopK family: dead latents used by the AuxK loss per token (None: d_in // 2,
            at most d_sae - 1; Gao et al. 2024, appendix B.1).
        aux_coeff: TopK family: weight of the AuxK loss (0 turns it off).
        dead_after_tokens: a latent that has not fired for this many training tokens is dead
            (read by the trainer's bookkeeping, which passes `fired` to training_forward).
        normalize: "none" or "expected_norm" (input and target scaled to mean norm sqrt(width)).
        model: identity of the model trained on (`features.model_identity`): config fields
            compared when splicing, plus the checkpoint path for reference.
        dtype: parameter dtype ("float32", "bfloat16", ...).
    """

    arch: str
    d_in: int
    d_sae: int
    hook_name: str
    out_hook_name: Optional[str] = None
    d_out: Optional[int] = None
    skip: bool = False
    k: Optional[int] = None
    l1_coeff: float = 5.0
    l0_coeff: float = 1.0
    bandwidth: float = 0.05
    threshold_init: float = 0.1
    threshold_lr: float = 0.01
    matryoshka_widths: Optional[list[int]] = None
    aux_k: Optional[int] = None
    aux_coeff: float = 1 / 32
    dead_after_tokens: int = 10_000_000
    normalize: str = "expected_norm"
    model: dict = field(default_factory=dict)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def bad(name: str, why: str) -> DictionaryError:
            return DictionaryError(f"dictionary config: {name}={getattr(self, name)!r}: {why}")

        archs = architectures()
        if self.arch not in archs:
            raise bad("arch", f"unknown architecture; choose from {sorted(archs)}")
        for name in ("d_in", "d_sae", "dead_after_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, "must be a positive integer")
        if not isinstance(self.hook_name, str) or not self.hook_name:
            raise bad("hook_name", "must name a hook, e.g. 'blocks.0.hook_resid_post'")
        if self.out_hook_name is not None and (not isinstance(self.out_hook_name, str) or not self.out_hook_name):
            raise bad("out_hook_name", "must be a hook name or null")
        if self.d_out is None:
            self.d_out = self.d_in
        if isinstance(self.d_out, bool) or not isinstance(self.d_out, int) or self.d_out < 1:
            raise bad("d_out", "must be a positive integer")
        if self.out_hook_name is None and self.d_out != self.d_in:
            raise bad("d_out", f"an SAE (no out_hook_name) reconstructs its input: d_out must equal d_in={self.d_in}")
        if self.skip is not False and self.skip is not True:
            raise bad("skip", "must be true or false")
        if self.skip and self.out_hook_name is None:
            raise bad("skip", "a linear skip is for transcoders; set out_hook_name too")
        if self.arch in TOPK_FAMILY:
            if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
                raise bad("k", f"arch {self.arch!r} needs k, a positive integer")
            if self.k >= self.d_sae:
                raise bad("k", f"must be < d_sae={self.d_sae}")
            if self.aux_k is not None and (isinstance(self.aux_k, bool) or not isinstance(self.aux_k, int)
                                           or not 1 <= self.aux_k <= self.d_sae):
                raise bad("aux_k", f"must be an integer in [1, d_sae={self.d_sae}] or null")
        elif self.k is not None:
            raise bad("k", f"arch {self.arch!r} has no k (only {list(TOPK_FAMILY)} do); remove it")
        for name in ("l1_coeff", "l0_coeff", "aux_coeff"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise bad(name, "must be a finite number >= 0")
        for name in ("bandwidth", "threshold_init"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise bad(name, "must be a finite number > 0")
        if isinstance(self.threshold_lr, bool) or not isinstance(self.threshold_lr, (int, float)) \
                or not 0 < self.threshold_lr <= 1:
            raise bad("threshold_lr", "must be in (0, 1]")
        if self.arch == "matryoshka":
            w = self.matryoshka_widths
            if not isinstance(w, (list, tuple)) or not w or not all(isinstance(v, int) and not isinstance(v, bool) for v in w):
                raise bad("matryoshka_widths", "matryoshka needs a list of prefix widths, e.g. [128, 512, d_sae]")
            self.matryoshka_widths = list(w)
            if any(b <= a for a, b in zip(w, w[1:])) or w[0] < 1:
                raise bad("matryoshka_widths", "must be positive and strictly increasing")
            if w[-1] != self.d_sae:
                raise bad("matryoshka_widths", f"the last width must be d_sae={self.d_sae}")
        elif self.matryoshka_widths is not None:
            raise bad("matryoshka_widths", f"only arch 'matryoshka' has prefix widths; remove it for {self.arch!r}")
        if self.normalize not in NORMALIZE:
            raise bad("normalize", f"choose from {list(NORMALIZE)}")
        if not isinstance(self.model, dict):
            raise bad("model", "must be a mapping (features.model_identity(model))")
        if self.dtype not in DTYPES:
            raise bad("dtype", f"choose from {list(DTYPES)}")

    # ------------------------------------------------------------------ (de)serialisation
    @property
    def is_transcoder(self) -> bool:
        return self.out_hook_name is not None

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "dictionary config") -> "DictionaryConfig":
        if isinstance(data, DictionaryConfig):
            return data
        if not isinstance(data, dict):
            raise DictionaryError(f"{where}: expected a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise DictionaryError(f"{where}: unknown key(s) {unknown}; valid keys: {names}")
        missing = [n for n in ("arch", "d_in", "d_sae", "hook_name") if n not in data]
        if missing:
            raise DictionaryError(f"{where}: missing required key(s) {missing}")
        try:
            return cls(**data)
        except DictionaryError as e:
            raise DictionaryError(f"{where}: {str(e).removeprefix('dictionary config: ')}") from None


class TrainOutput(NamedTuple):
    loss: Tensor  # scalar, what the trainer differentiates
    x_hat: Tensor  # (b, d_out) reconstruction in model units
    parts: dict  # name -> detached scalar tensor (loss terms, fvu)
    active: Tensor  # (d_sae,) bool: fired on some token of this batch
    l0: Tensor  # scalar: mean active latents per token


# ============================================================================ registry
ARCHITECTURES: dict[str, type] = {}


def register(name: str):
    """Class decorator: make `arch=name` build this class."""

    def deco(cls):
        cls.arch = name
        ARCHITECTURES[name] = cls
        return cls

    return deco


def architectures() -> dict[str, type]:
    """The registry, with every built-in architecture's module imported."""
    for name, module in ARCH_MODULES.items():
        if name not in ARCHITECTURES:
            importlib.import_module(module)
    return ARCHITECTURES


def make(cfg: Union[DictionaryConfig, dict], device: Union[str, torch.device, None] = None) -> "SparseDictionary":
    """A freshly initialised dictionary of `cfg.arch`."""
    cfg = DictionaryConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    module = architectures()[cfg.arch](cfg)
    return module.to(device) if device is not None else module


# ============================================================================ helpers
class _ProjectDecoderGrad(torch.autograd.Function):
    """Identity forward; backward removes from each row's gradient its component along the
    row, so a step moves unit-norm rows (nearly) along the sphere (Bricken et al. 2023)."""

    @staticmethod
    def forward(ctx, W):
        ctx.save_for_backward(W)
        return W.view_as(W)

    @staticmethod
    def backward(ctx, grad):
        (W,) = ctx.saved_tensors
        W = W.to(grad.dtype)
        along = (grad * W).sum(-1, keepdim=True) / (W * W).sum(-1, keepdim=True).clamp_min(1e-12)
        return grad - along * W


def project_decoder_grad(W_dec: Float[Tensor, "d_sae d_out"]) -> Float[Tensor, "d_sae d_out"]:
    """`W_dec` for the training graph: its gradient arrives with the per-row parallel part removed."""
    return _ProjectDecoderGrad.apply(W_dec)


@torch.no_grad()
def geometric_median(x: Float[Tensor, "n d"], iters: int = 30, eps: float = 1e-8) -> Float[Tensor, "d"]:
    """Weiszfeld's iteration from the mean: robust to the few huge-norm tokens (BOS) a stream has."""
    x = x.double()
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=-1).clamp_min(eps)
        m = (w[:, None] * x).sum(0) / w.sum()
    return m


def sparse_decode(values: Float[Tensor, "b k"], indices: Tensor, W_dec: Float[Tensor, "d_sae d_out"]
                  ) -> Float[Tensor, "b d_out"]:
    """sum_j values[:, j] * W_dec[indices[:, j]] without building the dense (b, d_sae) latents."""
    return torch.nn.functional.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")


# ============================================================================ the module
class SparseDictionary(HookedRootModule):
    """Base class: parameters, hook points, normalisation, encode/decode, splicing support.

    Subclasses set `arch` (via `@register`) and implement `activation(pre)` (dense latents from
    pre-activations) and `training_forward`; they may override `init_weights`, `after_step`,
    and set `unit_norm_decoder`.
    """

    arch: ClassVar[str] = "?"
    unit_norm_decoder: ClassVar[bool] = True  # rows of W_dec kept at norm 1 (after_step)

    def __init__(self, cfg: DictionaryConfig):
        super().__init__()
        cfg = DictionaryConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
        if cfg.arch != self.arch:
            raise DictionaryError(f"config arch {cfg.arch!r} given to the {self.arch!r} class; use features.make(cfg)")
        self.cfg = cfg
        dt = cfg.torch_dtype
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_out
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dt))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_out, dtype=dt))
        self.b_dec = nn.Parameter(torch.zeros(d_out, dtype=dt))
        self.W_skip = nn.Parameter(torch.zeros(d_in, d_out, dtype=dt)) if cfg.skip else None
        # normalisation scales (1 until init_from_data); float32 whatever the parameter dtype
        self.register_buffer("scale_in", torch.ones((), dtype=torch.float32))
        self.register_buffer("scale_out", torch.ones((), dtype=torch.float32))
        self.hook_sae_input = HookPoint()  # (..., d_in) the activation read, model units
        self.hook_sae_acts_pre = HookPoint()  # (..., d_sae) pre-activations
        self.hook_sae_acts_post = HookPoint()  # (..., d_sae) latents
        self.hook_sae_recons = HookPoint()  # (..., d_out) reconstruction, model units
        self.hook_sae_error = HookPoint()  # (..., d_out) target - reconstruction (splice with include_error)
        self.init_weights()
        self.setup()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self) -> None:
        """Unit-norm random decoder rows; the encoder is their transpose where shapes allow
        (Gao et al. 2024), otherwise random with the same column norms."""
        W = torch.randn(self.cfg.d_sae, self.cfg.d_out, dtype=torch.float32)
        W /= W.norm(dim=-1, keepdim=True)
        self.W_dec.copy_(W)
        if self.cfg.d_in == self.cfg.d_out:
            self.W_enc.copy_(W.T)
        else:
            E = torch.randn(self.cfg.d_in, self.cfg.d_sae)
            self.W_enc.copy_(E / E.norm(dim=0, keepdim=True))

    @torch.no_grad()
    def init_from_data(self, x: Float[Tensor, "n d_in"], x_target: Optional[Float[Tensor, "n d_out"]] = None) -> None:
        """Normalisation scales from a sample of activations and `b_dec` = the geometric median
        of the (scaled) targets. `x_target` defaults to `x` (an SAE); a transcoder without one
        keeps `b_dec = 0` and uses the input's scale for its output."""
        x = x.detach().reshape(-1, self.cfg.d_in).float()
        target = None if x_target is None else x_target.detach().reshape(-1, self.cfg.d_out).float()
        if target is None and not self.cfg.is_transcoder:
            target = x
        if self.cfg.normalize == "expected_norm":
            self.scale_in.fill_(math.sqrt(self.cfg.d_in) / float(x.norm(dim=-1).mean().clamp_min(1e-12)))
            if target is not None:
                self.scale_out.fill_(math.sqrt(self.cfg.d_out) / float(target.norm(dim=-1).mean().clamp_min(1e-12)))
            else:
                self.scale_out.copy_(self.scale_in)
        if target is not None:
            self.b_dec.copy_(geometric_median(target * self.scale_out.to(target.device)).to(self.b_dec.dtype))

    # ------------------------------------------------------------------ inference
    def pre_acts(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Encoder pre-activations of model-unit input `x` (no hooks)."""
        x = x.to(self.W_enc.dtype) * self.scale_in.to(self.W_enc.dtype)
        if not self.cfg.is_transcoder:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activation(self, pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:  # pragma: no cover
        raise NotImplementedError

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Dense latents (inference: TopK keeps k per token, BatchTopK-family uses the learned threshold)."""
        pre = self.hook_sae_acts_pre(self.pre_acts(x))
        return self.hook_sae_acts_post(self.activation(pre))

    def decode(self, z: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_out"]:
        """What the latents write, plus `b_dec`, in model units (a skip transcoder's skip term
        depends on the input, so it is added by `forward`, not here)."""
        out = z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        return out / self.scale_out.to(out.dtype)

    def skip_out(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """The linear skip's contribution (model units), zero without a skip."""
        if self.W_skip is None:
            return torch.zeros((), dtype=self.W_dec.dtype, device=self.W_dec.device)
        xs = x.to(self.W_skip.dtype) * self.scale_in.to(self.W_skip.dtype)
        return (xs @ self.W_skip) / self.scale_out.to(self.W_skip.dtype)

    def forward(self, x: Float[Tensor, "... d_in"]) -> tuple[Float[Tensor, "... d_out"], Float[Tensor, "... d_sae"]]:
        """(reconstruction, latents); fires hook_sae_input, _acts_pre, _acts_post, _recons."""
        x = self.hook_sae_input(x)
        z = self.encode(x)
        x_hat = self.decode(z)
        if self.W_skip is not None:
            x_hat = x_hat + self.skip_out(x)
        return self.hook_sae_recons(x_hat), z

    def replace(self, x: Float[Tensor, "... d_in"], target: Optional[Float[Tensor, "... d_out"]] = None,
                include_error: bool = False) -> Float[Tensor, "... d_out"]:
        """What a splice writes at the output hook: the reconstruction, or with `include_error`
        the reconstruction + `hook_sae_error(target - clean reconstruction)`, so the model's
        output is unchanged unless a hook edits the latents. The error is computed without
        hooks and without gradient (as SAELens does): features carry the gradient, the error
        is a constant node."""
        x_hat, _ = self(x)
        if not include_error:
            return x_hat
        target = x if target is None else target
        with torch.no_grad():
            if observed(*self.hook_dict.values()):  # a hook may edit latents: recompute clean
                clean = self.decode(self.activation(self.pre_acts(x)))
                if self.W_skip is not None:
                    clean = clean + self.skip_out(x)
            else:
                clean = x_hat
            error = (target.to(clean.dtype) - clean).detach()
        return x_hat + self.hook_sae_error(error)

    # ------------------------------------------------------------------ training
    def _scaled(self, x_in: Tensor, x_target: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs and targets in the scaled space the parameters live in (float32 targets for the loss)."""
        x = x_in.to(self.W_enc.dtype) * self.scale_in.to(self.W_enc.dtype)
        t = x_target.float() * self.scale_out
        return x, t

    def _encoder_in(self, x: Tensor) -> Tensor:
        return x if self.cfg.is_transcoder else x - self.b_dec.to(x.dtype)

    def _with_skip(self, x_s: Tensor, recon: Tensor) -> Tensor:
        """Float32 reconstruction in the scaled space, plus the skip term (scaled input)."""
        recon = recon.float()
        if self.W_skip is not None:
            recon = recon + (x_s.to(self.W_skip.dtype) @ self.W_skip).float()
        return recon

    def _finish(self, t: Tensor, recon: Tensor, extra: dict, active: Tensor, l0: Tensor) -> TrainOutput:
        """Shared tail of training_forward: MSE (sum over width, mean over tokens) + `extra`
        loss terms, FVU, x_hat in model units."""
        err = t - recon
        mse = err.pow(2).sum(-1).mean()
        loss = mse
        parts = {"mse": mse.detach()}
        for name, value in extra.items():
            loss = loss + value
            parts[name] = value.detach()
        with torch.no_grad():
            var = (t - t.mean(0)).pow(2).sum()
            parts["fvu"] = err.pow(2).sum() / var.clamp_min(1e-12)
        return TrainOutput(loss, recon / self.scale_out, parts, active, l0.detach())

    def training_forward(self, x_in: Float[Tensor, "b d_in"], x_target: Float[Tensor, "b d_out"],
                         fired: Optional[Bool[Tensor, "d_sae"]] = None) -> TrainOutput:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self) -> None:
        """After `optimizer.step()`: unit-norm decoder rows where the architecture constrains them."""
        if self.unit_norm_decoder:
            self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    def decoder_weights(self) -> Tensor:
        """W_dec for the training graph (gradient projected where rows are unit-norm)."""
        return project_decoder_grad(self.W_dec) if self.unit_norm_decoder else self.W_dec

    # ------------------------------------------------------------------ io
    def save(self, path, dtype: Optional[torch.dtype] = None):
        """Write `path/cfg.json` + `path/sae_weights.safetensors` in SAELens's layout (atomic)."""
        from .io import save

        return save(self, path, dtype=dtype)

    @classmethod
    def load(cls, path, device: Union[str, torch.device] = "cpu") -> "SparseDictionary":
        from .io import load

        return load(path, device=device)

    def extra_repr(self) -> str:
        c = self.cfg
        s = f"arch={c.arch}, d_in={c.d_in}, d_sae={c.d_sae}, hook={c.hook_name}"
        if c.is_transcoder:
            s += f" -> {c.out_hook_name} (d_out={c.d_out}{', skip' if c.skip else ''})"
        return s + (f", k={c.k}" if c.k is not None else "")
