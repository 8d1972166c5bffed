"""Continuous latent thoughts (Coconut, Hao et al. 2024) on a `HookedTransformer`.

Between `<bot>` and `<eot>` a Coconut model emits no tokens: each *latent slot* (a
`<latent>` token in `input_ids`) takes as its input embedding the model's last hidden state at
the position before it, the **thought**. Here the thought is the final-norm input, the
residual stream after the last block (`thought="normed"` feeds `ln_final` of it instead, which
is what HF GPT-2's `hidden_states[-1]`, used by the reference implementation, holds).

```python
from models.thoughts import LatentReasoner
reasoner = LatentReasoner(model, latent_token_id=tok.token_to_id("<latent>"))
loss = reasoner(input_ids, labels=labels, return_type="loss")        # n + 1 passes, KV-cached
out = reasoner.generate(prompts, n_latents=6, eot_token_id=tok.eot_token_id, max_new_tokens=4)
```

**Passes.** A row whose first slot sits at column `f` with `n` slots needs the thought of slot
`j` (the hidden state at `f + j - 1`) before slot `j` can be computed: `n + 1` dependent
passes. Rows of a batch hold their slots at different offsets, so each row is first moved right
(left padding, masked) until every row's first slot is at the same column `a`
(`LatentPlan.shift`). Then pass 0 runs columns `[0, a)`, pass `k` (1 <= k < n) runs column
`a + k - 1` alone and pass `n` runs `[a + n - 1, end)`, each on top of the `KVCache` the
earlier passes filled: every position is computed exactly once. Rows with fewer slots compute
their ordinary tokens in those columns. The logits are then gathered back to the caller's
layout. Padding moves positions nowhere: positions count real tokens only (see
`HookedTransformer.forward`), so learned / RoPE / ALiBi / no positions all give what the
unshifted row gives; `latent_forward_naive` (one full forward per thought) is the reference
the tests and `benchmarks/bench_thoughts.py` compare against.

**Hooks.** The model's own hook points (`blocks.{i}.hook_*`, ...) fire on every pass; while a
pass runs, `reasoner.pass_index` says which (and `reasoner.plan` where its columns are).
`hook_thought` fires once per latent pass on the (batch, 1, d_model) thought about to be fed
into slot `pass_index - 1`; a hook may replace it (patching a thought). `reasoner.thoughts`
holds what was fed (detached), (batch, slot, d_model), zero where a row has fewer slots. `reasoner.hooks(...)` accepts both kinds of name.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch.utils.checkpoint import checkpoint
from transformer_lens.HookedRootModule import HookedRootModule

from . import decoding
from .decoding import StaticKVCache
from .generation import left_pad, sample_logits
from .hooks import HookPoint
from .transformer import HookedTransformer, KVCache, Output, forward_arguments

LATENT_TOKEN = "<latent>"
THOUGHT_SOURCES = ("resid", "normed")


# ============================================================================ the trunk
def trunk(
    model: HookedTransformer,
    embeds: Float[torch.Tensor, "batch pos d_model"],
    attention_mask: Optional[torch.Tensor] = None,
    past_kv_cache: Optional[Union[KVCache, StaticKVCache]] = None,
    max_position: Optional[int] = None,
) -> Float[torch.Tensor, "batch pos d_model"]:
    """`HookedTransformer.forward` from input embeddings up to the final residual stream (the
    input of `ln_final`), with the same parts in the same order (so the same hooks fire);
    `tests/test_thoughts.py` checks it against forward's own `ln_final` input. The
    unembedding is left to the caller, who needs the residual (a thought) more often than
    logits. Gradient checkpointing applies only without a cache (a recomputed block would
    append its keys to the cache twice). `max_position`: a host-known bound on the positions
    (learned positions then check it instead of reading the largest position off the device)."""
    shape, device = embeds.shape[:2], embeds.device
    ctx = model.attn_context(shape, device, attention_mask, None, past_kv_cache)
    if max_position is not None and getattr(ctx, "max_position", None) is None:
        ctx.max_position = max_position
    x = model.hook_embed(embeds)
    if model.cfg.uses_learned_positions:  # learned and learned+rope (as HookedTransformer.forward)
        pos = model.pos_embed(ctx.q_pos, max_position=getattr(ctx, "max_position", None))
        x = x + model.hook_pos_embed(pos.expand(shape[0], -1, -1))
    x = model.drop(x)
    stream = (x, torch.zeros_like(x)) if model.cfg.stream == "factored" else (x, None)
    ckpt = model.cfg.gradient_checkpointing and model.training and torch.is_grad_enabled() and past_kv_cache is None
    for i, block in enumerate(model.blocks):
        kv = past_kv_cache.layers[i] if past_kv_cache is not None else None
        stream = checkpoint(block, stream, ctx, kv, use_reentrant=False) if ckpt else block(stream, ctx, kv)
    return stream[0] if stream[1] is None else stream[0] + stream[1]


# ============================================================================ the plan
@dataclass
class LatentPlan:
    """Where a batch's latent slots are and which columns each pass computes.

    Columns are those of the aligned layout: row `b`'s original position `t` sits at column
    `t + shift[b]`; `width` = original length + max(shift). `shift` and `n_slots` are host
    tensors from `plan_latents`, device tensors from `LatentLayout.plan` (no host read).
    """

    shift: Int[torch.Tensor, "batch"]
    width: int
    first_slot: int  # aligned column of every row's first slot; -1 when the batch has none
    n_slots: Int[torch.Tensor, "batch"]
    passes: list[tuple[int, int]]  # [start, stop) columns of each pass
    max_slots: int  # slots of the row that has most (the number of latent passes)
    aligned: bool  # no row moves: the aligned layout is the caller's
    max_position: Optional[int] = None  # a host bound on the positions, when one is known

    @property
    def n_passes(self) -> int:
        return len(self.passes)

    def slot_columns(self) -> list[int]:
        """Aligned column of slot j, j = 0 .. max_slots - 1."""
        return [self.first_slot + j for j in range(self.max_slots)]

    def producer_columns(self) -> list[int]:
        """Aligned column whose final residual becomes thought j (the position before slot j)."""
        return [self.first_slot + j - 1 for j in range(self.max_slots)]

    def positions(self, columns: Sequence[int]) -> Int[torch.Tensor, "batch n"]:
        """Original positions of aligned `columns`, per row (negative or >= the original
        length where a column holds padding this plan added)."""
        return torch.as_tensor(list(columns), dtype=torch.long, device=self.shift.device)[None, :] - self.shift[:, None]


def _passes(first_slot: int, n: int, width: int) -> list[tuple[int, int]]:
    """Pass 0 up to the first slot, one column per later slot, the rest in the last pass."""
    if n == 0:
        return [(0, width)]
    a = first_slot
    return [(0, a)] + [(a + k - 1, a + k) for k in range(1, n)] + [(a + n - 1, width)]


def plan_latents(
    input_ids: Int[torch.Tensor, "batch pos"],
    latent_token_id: int,
    attention_mask: Optional[torch.Tensor] = None,
) -> LatentPlan:
    """Read the slots of a batch (one host read) and plan the passes. Every row's slots must be
    one contiguous run with a real token before it."""
    B, T = input_ids.shape
    is_slot = (input_ids == latent_token_id).cpu()
    n_slots = is_slot.sum(1)
    first = torch.where(n_slots > 0, is_slot.long().argmax(1), torch.zeros_like(n_slots))
    mask = attention_mask.bool().cpu() if attention_mask is not None else None
    for b in torch.nonzero(n_slots).flatten().tolist():
        f, n = int(first[b]), int(n_slots[b])
        if not bool(is_slot[b, f : f + n].all()):
            cols = torch.nonzero(is_slot[b]).flatten().tolist()
            raise ValueError(f"row {b}: latent slots must be one contiguous run, found them at positions {cols}")
        real_before = f > 0 and (mask is None or bool(mask[b, f - 1]))
        if not real_before:
            raise ValueError(f"row {b}: the latent slot at position {f} has no real token before it to take a thought from")
    if mask is not None and bool((is_slot & ~mask).any()):
        raise ValueError("a latent slot sits on a padded position (attention_mask is False there)")
    if not bool(n_slots.any()):
        return LatentPlan(torch.zeros(B, dtype=torch.long), T, -1, n_slots, [(0, T)], 0, True)
    a = int(first[n_slots > 0].max())
    shift = torch.where(n_slots > 0, a - first, torch.zeros_like(first))
    width = T + int(shift.max())
    n = int(n_slots.max())
    return LatentPlan(shift, width, a, n_slots, _passes(a, n, width), n, not bool(shift.any()))


@dataclass(frozen=True)
class LatentLayout:
    """The static part of a plan, fixed for a whole set of rows (a curriculum stage's train
    split): every batch drawn from those rows runs the same passes over the same columns, so
    planning it reads nothing on the host and the whole training step can be captured as one
    CUDA graph (`interp.training.coconut`). Make one with `latent_layout(all_rows, ...)`."""

    length: int  # the rows' width (every batch has it)
    first_slot: int  # aligned column of every first slot (-1: no row has slots)
    width: int  # aligned width: length + the largest shift of any row
    max_slots: int

    def plan(self, input_ids: Int[torch.Tensor, "batch pos"], latent_token_id: int) -> LatentPlan:
        """The plan of a batch drawn from the layout's rows, computed on the device. Rows are
        trusted to come from those rows (on CPU they are checked; on CUDA a check would cost
        the host read this exists to avoid)."""
        B, T = input_ids.shape
        if T != self.length:
            raise ValueError(f"a batch of width {T} under a LatentLayout made for rows of width {self.length}")
        is_slot = input_ids == latent_token_id
        n_slots = is_slot.sum(1)
        if self.max_slots == 0:
            shift = torch.zeros_like(n_slots)
        else:
            shift = torch.where(n_slots > 0, self.first_slot - is_slot.long().argmax(1), torch.zeros_like(n_slots))
        if input_ids.device.type == "cpu" and not torch.compiler.is_compiling():
            got = plan_latents(input_ids, latent_token_id)
            if got.max_slots > self.max_slots or (got.max_slots and int((shift + T).max()) > self.width) \
                    or (got.max_slots and bool((shift < 0).any())):
                raise ValueError("this batch does not fit its LatentLayout: make the layout from every row batches are "
                                 "drawn from (latent_layout(all_rows, ...))")
        aligned = self.width == T and self.max_slots == 0
        return LatentPlan(shift, self.width, self.first_slot, n_slots, _passes(self.first_slot, self.max_slots,
                          self.width), self.max_slots, aligned, max_position=T - 1)


def latent_layout(
    input_ids: Int[torch.Tensor, "rows pos"], latent_token_id: int, attention_mask: Optional[torch.Tensor] = None,
) -> LatentLayout:
    """The `LatentLayout` of these rows (validated here, once: one host read)."""
    plan = plan_latents(input_ids, latent_token_id, attention_mask)
    return LatentLayout(input_ids.shape[1], plan.first_slot, plan.width, plan.max_slots)


def _align(x: torch.Tensor, plan: LatentPlan, fill) -> torch.Tensor:
    """(B, T, ...) caller layout -> (B, width, ...) aligned layout, `fill` where nothing maps."""
    B, T = x.shape[:2]
    rel = torch.arange(plan.width, device=x.device)[None, :] - plan.shift.to(x.device)[:, None]
    inside = (rel >= 0) & (rel < T)
    idx = rel.clamp(0, T - 1)
    out = x.gather(1, idx.view(B, plan.width, *([1] * (x.ndim - 2))).expand(B, plan.width, *x.shape[2:]))
    keep = inside.view(B, plan.width, *([1] * (x.ndim - 2)))
    return out.masked_fill(~keep, fill)  # a Python fill: no host-to-device copy (CUDA-graph safe)


def _unalign(x: torch.Tensor, plan: LatentPlan, T: int) -> torch.Tensor:
    """(B, width, ...) aligned -> (B, T, ...) caller layout."""
    if plan.aligned:
        return x[:, :T]
    B = x.shape[0]
    idx = torch.arange(T, device=x.device)[None, :] + plan.shift.to(x.device)[:, None]
    return x.gather(1, idx.view(B, T, *([1] * (x.ndim - 2))).expand(B, T, *x.shape[2:]))


# ============================================================================ the wrapper
@dataclass
class LatentGeneration:
    tokens: Int[torch.Tensor, "batch pos"]  # prompt (left-padded) + the fed <eot> + generated tokens
    attention_mask: torch.Tensor  # (batch, pos) bool; the latent passes are not in `tokens`
    new_tokens: list[list[int]]  # per row, generated ids (stop token included)
    thoughts: Float[torch.Tensor, "batch slot d_model"]


class LatentReasoner(HookedRootModule):
    """A `HookedTransformer` that fills `<latent>` slots with continuous thoughts.

    Holds no parameters of its own: save and load `reasoner.model` as any checkpoint.
    """

    def __init__(self, model: HookedTransformer, latent_token_id: int, thought: str = "resid",
                 layout: Optional[LatentLayout] = None):
        super().__init__()
        if not 0 <= int(latent_token_id) < model.cfg.d_vocab:
            raise ValueError(f"latent_token_id={latent_token_id} is outside the vocabulary [0, {model.cfg.d_vocab})")
        if thought not in THOUGHT_SOURCES:
            raise ValueError(f"thought must be one of {THOUGHT_SOURCES}, got {thought!r}")
        self.model = model
        self.cfg = model.cfg
        self.latent_token_id = int(latent_token_id)
        self.thought_source = thought
        self.hook_thought = HookPoint()
        self.pass_index: Optional[int] = None  # the pass running now (None outside a forward)
        self.plan: Optional[LatentPlan] = None  # the plan of the current / last forward
        self.thoughts: Optional[torch.Tensor] = None  # (batch, slot, d_model) fed in the last forward
        # A fixed layout (every batch from one set of rows): plans on the device, no host read,
        # so a training step can be captured as a CUDA graph. None: each batch is planned anew.
        self.layout: Optional[LatentLayout] = layout
        self.setup()

    def setup(self) -> None:
        """The model's hook points under their own names, plus `hook_thought` (HookedRootModule's
        setup would rename them `model.blocks...` and break the model's own caches)."""
        self.mod_dict = dict(self.model.mod_dict)
        self.hook_dict = dict(self.model.hook_dict)
        self.hook_thought.name = "hook_thought"
        self.mod_dict["hook_thought"] = self.hook_thought
        self.hook_dict["hook_thought"] = self.hook_thought

    def run_with_cache(self, *args, **kwargs):
        raise NotImplementedError(
            "a latent forward runs every hook once per pass, which one ActivationCache cannot hold; "
            "use interp.thoughts.pass_caches (one cache per pass) or hooks reading reasoner.pass_index"
        )

    def _thought(self, resid: torch.Tensor) -> torch.Tensor:
        return self.model.ln_final(resid) if self.thought_source == "normed" else resid

    # ------------------------------------------------------------------ training / scoring
    def forward(
        self,
        input: Optional[torch.Tensor] = None,
        return_type: Optional[str] = "default",
        *,
        input_ids: Optional[Int[torch.Tensor, "batch pos"]] = None,
        labels: Optional[Int[torch.Tensor, "batch pos"]] = None,
        attention_mask: Optional[torch.Tensor] = None,
        loss_per_token: bool = False,
    ):
        """Logits / loss of a batch whose `<latent>` slots are filled with thoughts.

        The signature is `HookedTransformer.forward`'s (so the trainer's step can call either).
        `labels` default to the tokens with the slots ignored (a slot has no token to predict).
        """
        input, return_type = forward_arguments(input, input_ids, return_type, labels)
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"LatentReasoner needs token ids as a tensor, got {type(input).__name__}")
        model = self.model
        tokens = (input[None] if input.ndim == 1 else input).to(model.embed.weight.device)
        B, T = tokens.shape
        if attention_mask is not None:
            attention_mask = attention_mask.to(tokens.device).bool()
            if attention_mask.shape != tokens.shape:
                raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input {tuple(tokens.shape)}")
        if self.layout is not None:
            plan = self.layout.plan(tokens, self.latent_token_id)
        else:
            plan = plan_latents(tokens, self.latent_token_id, attention_mask)
        resid = self._run_passes(tokens, attention_mask, plan)
        resid = _unalign(resid, plan, T)
        if labels is None:
            labels = tokens.masked_fill(tokens == self.latent_token_id, -100)
        if return_type == "loss":
            return model.loss_from_resid(resid, labels, attention_mask, loss_per_token)
        logits = model.unembed_resid(model.ln_final(resid))
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = model.loss_fn(logits, labels, attention_mask, per_token=loss_per_token)
        return loss if return_type == "loss" else Output(logits, loss)

    def _run_passes(self, tokens: torch.Tensor, attention_mask: Optional[torch.Tensor], plan: LatentPlan
                    ) -> Float[torch.Tensor, "batch width d_model"]:
        model = self.model
        B = tokens.shape[0]
        pad = model.cfg.pad_token_id if model.cfg.pad_token_id is not None else 0
        ids = tokens if plan.aligned else _align(tokens, plan, pad)
        if plan.aligned:
            mask = attention_mask
        else:
            real = attention_mask if attention_mask is not None else torch.ones_like(tokens, dtype=torch.bool)
            mask = _align(real, plan, False)
        embeds = model.embed(ids)
        n_slots = plan.n_slots.to(tokens.device)
        cache = KVCache(model.cfg.n_layers) if plan.n_passes > 1 else None
        resids, fed = [], []
        self.plan = plan
        try:
            for p, (c0, c1) in enumerate(plan.passes):
                self.pass_index = p
                x = embeds[:, c0:c1]
                if p > 0:  # slot p - 1 of the rows that have it takes the thought of column c0 - 1
                    thought = self.hook_thought(self._thought(resids[-1][:, -1:]))
                    has_slot = (n_slots >= p).view(B, 1, 1)
                    x = torch.cat([torch.where(has_slot, thought.to(x.dtype), x[:, :1]), x[:, 1:]], dim=1)
                    fed.append(thought)
                resids.append(trunk(model, x, mask[:, c0:c1] if mask is not None else None, cache, plan.max_position))
        finally:
            self.pass_index = None
        d = model.cfg.d_model
        if fed:  # zeros where a row has no slot j
            has = torch.arange(1, len(fed) + 1, device=tokens.device)[None, :] <= n_slots[:, None]
            self.thoughts = torch.cat(fed, dim=1).detach() * has[..., None]
        else:
            self.thoughts = embeds.new_zeros(B, 0, d)
        return torch.cat(resids, dim=1) if len(resids) > 1 else resids[0]

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(
        self,
        prompts: Union[torch.Tensor, Sequence[Sequence[int]]],
        n_latents: int,
        max_new_tokens: int = 16,
        eot_token_id: Optional[int] = None,
        stop_tokens: Optional[Sequence[int]] = None,
        greedy: bool = True,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        fast: Optional[bool] = None,
        compile: Optional[Union[bool, str]] = None,
    ) -> LatentGeneration:
        """Think `n_latents` thoughts after each prompt (which should end with `<bot>`), feed
        `eot_token_id` if given (Coconut's inference: the number of thoughts is fixed and the
        model is told when thinking ends), then decode with the KV cache.

        Prompts of different lengths are left-padded, so every row thinks in the same columns.
        Rows stop independently at `stop_tokens` (default: the model's `eos_token_id`).

        `fast` (as `models.generation.generate`'s): None takes the static cache on CUDA when
        nothing is hooked (model hooks or `hook_thought`), where every thought and every token
        is one call of the same step (compiled as a CUDA graph: `compile`, None = on CUDA);
        False always runs pass by pass with the dynamic cache (hooks see `pass_index`). Both
        give the same tokens and thoughts (`tests/test_thoughts.py`).
        """
        if n_latents < 0:
            raise ValueError(f"n_latents must be >= 0, got {n_latents}")
        model = self.model
        was_training = model.training
        model.eval()
        device = model.embed.weight.device
        rows = [row.tolist() for row in prompts] if isinstance(prompts, torch.Tensor) else [list(p) for p in prompts]
        for i, p in enumerate(rows):
            if self.latent_token_id in p:
                raise ValueError(f"prompt {i} holds a <latent> slot; pass the prompt up to <bot> and n_latents=")
        pad = model.cfg.pad_token_id if model.cfg.pad_token_id is not None else 0
        tokens, mask = left_pad(rows, pad, device)
        padded = not bool(mask.all())
        if stop_tokens is None:
            stop_tokens = [model.cfg.eos_token_id] if model.cfg.eos_token_id is not None else []
        stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)
        generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, generator=generator)
        B = tokens.shape[0]
        self.plan = None
        think = n_latents + (eot_token_id is not None)
        use_fast = fast if fast is not None else tokens.is_cuda
        if use_fast and max_new_tokens > 0 and not self.hook_thought.fwd_hooks and not decoding.hooks_attached(model) \
                and decoding.cache_length(model.cfg, tokens.shape[1] + think, max_new_tokens) is not None:
            compile = tokens.is_cuda if compile is None else compile
            if compile is not False and model in decoding._COMPILE_FAILED:
                compile = False
            try:
                try:
                    return self._generate_static(tokens, mask, n_latents, eot_token_id, max_new_tokens, stop, pad,
                                                 sampling, compile)
                except torch._dynamo.exc.TorchDynamoException as e:
                    if compile is False:
                        raise
                    decoding._COMPILE_FAILED.add(model)
                    warnings.warn(f"compiled latent decoding failed ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200]}); decoding eagerly with the static cache")
                    return self._generate_static(tokens, mask, n_latents, eot_token_id, max_new_tokens, stop, pad,
                                                 sampling, False)
            finally:
                model.train(was_training)
        cache = KVCache(model.cfg.n_layers)
        thoughts = []
        try:
            # pass 0: the prompt; passes 1 .. n-1: one latent column each; then the last slot
            # (and <eot>) in one pass whose last position gives the first token
            self.pass_index = 0
            resid = trunk(model, model.embed(tokens), mask if padded else None, cache)
            step_embeds = None
            ones = torch.ones(B, 1, dtype=torch.bool, device=device)
            for j in range(n_latents):
                self.pass_index = j + 1  # the pass that consumes thought j (as in forward)
                thought = self.hook_thought(self._thought(resid[:, -1:]))
                thoughts.append(thought)
                if j < n_latents - 1:
                    resid = trunk(model, thought, ones if padded else None, cache)
                else:
                    step_embeds = thought
            tail = []
            if eot_token_id is not None:
                tail = [int(eot_token_id)]
                eot = model.embed(torch.full((B, 1), int(eot_token_id), dtype=torch.long, device=device))
                step_embeds = eot if step_embeds is None else torch.cat([step_embeds, eot], dim=1)
            if step_embeds is not None:
                self.pass_index = max(n_latents, 1)
                step_mask = torch.ones(B, step_embeds.shape[1], dtype=torch.bool, device=device)
                resid = trunk(model, step_embeds, step_mask if padded else None, cache)
            tokens = torch.cat([tokens, torch.tensor([tail] * B, dtype=torch.long, device=device).view(B, -1)], dim=1)
            mask = torch.cat([mask, torch.ones(B, len(tail), dtype=torch.bool, device=device)], dim=1)
            done = torch.zeros(B, dtype=torch.bool, device=device)
            new_tokens: list[list[int]] = [[] for _ in range(B)]
            for _ in range(max_new_tokens):
                logits = model.unembed_resid(model.ln_final(resid[:, -1]))
                nxt = sample_logits(logits, **sampling)
                nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
                alive = ~done
                for i in alive.nonzero().flatten().tolist():
                    new_tokens[i].append(int(nxt[i]))
                tokens = torch.cat([tokens, nxt[:, None]], dim=1)
                mask = torch.cat([mask, alive[:, None]], dim=1)
                if stop.numel():
                    done = done | torch.isin(nxt, stop)
                if bool(done.all()):
                    break
                padded = padded or not bool(alive.all())
                self.pass_index += 1
                resid = trunk(model, model.embed(nxt[:, None]), alive[:, None] if padded else None, cache)
        finally:
            self.pass_index = None
            model.train(was_training)
        d = model.cfg.d_model
        stacked = torch.cat(thoughts, dim=1) if thoughts else torch.zeros(B, 0, d, device=device)
        self.thoughts = stacked
        return LatentGeneration(tokens, mask, new_tokens, stacked)


    def _generate_static(self, tokens, mask, n_latents, eot_token_id, max_new_tokens, stop, pad, sampling, compile
                         ) -> LatentGeneration:
        """`generate` on a static KV cache: the prompt is one prefill; then every thought, the
        `<eot>` and every token is one call of `_latent_step` (one column), so a compiled step
        is one CUDA-graph replay. The tokens are decoded by `models.decoding.decode_tokens`
        (as in `fast_generate`): the output is trimmed to what the pass-by-pass loop returns."""
        model = self.model
        B, T = tokens.shape
        device = tokens.device
        think = n_latents + (eot_token_id is not None)
        length = decoding.cache_length(model.cfg, T + think, max_new_tokens)
        cache = decoding.static_cache(model, B, length, decoding._cache_dtype(model, device))
        step = _latent_steps(compile)
        graphs = compile is not False and device.type == "cuda"
        ones = torch.ones(B, 1, dtype=torch.bool, device=device)

        def feed(embeds, alive):
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            resid, logits = step(model, cache, embeds, alive)
            return resid.clone(), logits.clone()  # a graph's outputs are overwritten by its next replay

        cache.phase = "prefill"
        resid = trunk(model, model.embed(tokens), mask if not bool(mask.all()) else None, cache)[:, -1:]
        logits = model.unembed_resid(model.ln_final(resid[:, -1]))
        cache.phase = "decode"
        thoughts = []
        for _ in range(n_latents):
            thought = self._thought(resid)
            thoughts.append(thought)
            resid, logits = feed(thought, ones)
        tail = [int(eot_token_id)] if eot_token_id is not None else []
        if tail:
            resid, logits = feed(model.embed(torch.full((B, 1), tail[0], dtype=torch.long, device=device)), ones)
        tokens = torch.cat([tokens, torch.tensor([tail] * B, dtype=torch.long, device=device).view(B, -1)], dim=1)
        mask = torch.cat([mask, torch.ones(B, len(tail), dtype=torch.bool, device=device)], dim=1)
        out, alive_out, new_tokens = decoding.decode_tokens(
            logits, lambda nxt, alive: feed(model.embed(nxt), alive)[1], max_new_tokens, stop, pad,
            lambda lg: sample_logits(lg, **sampling), compiled=compile is not False)
        d = model.cfg.d_model
        stacked = torch.cat(thoughts, dim=1) if thoughts else torch.zeros(B, 0, d, device=device)
        self.thoughts = stacked
        return LatentGeneration(torch.cat([tokens, out], dim=1), torch.cat([mask, alive_out], dim=1), new_tokens,
                                stacked)


def _latent_step(model: HookedTransformer, cache: StaticKVCache, embeds: torch.Tensor, alive: torch.Tensor):
    """One column per row on a static cache in its decode phase: (resid (b, 1, d), logits (b, vocab))."""
    resid = trunk(model, embeds, alive, cache)
    cache.step.add_(1)
    return resid, model.unembed_resid(model.ln_final(resid[:, -1]))


_STEPS: dict = {}


def _latent_steps(backend: Union[bool, str]):
    """`_latent_step`, eager (False), compiled with CUDA graphs (True) or under a named
    `torch.compile` backend (e.g. "eager", to check that it traces into one graph)."""
    if backend is False:
        return _latent_step
    backend = "inductor" if backend is True else backend
    if backend not in _STEPS:
        kw = dict(mode="reduce-overhead") if backend == "inductor" else {}
        _STEPS[backend] = torch.compile(_latent_step, backend=backend, fullgraph=True, **kw)
    return _STEPS[backend]


# ============================================================================ the reference
def latent_forward_naive(
    model: HookedTransformer,
    input_ids: Int[torch.Tensor, "batch pos"],
    latent_token_id: int,
    attention_mask: Optional[torch.Tensor] = None,
    thought: str = "resid",
) -> tuple[Float[torch.Tensor, "batch pos d_vocab"], Float[torch.Tensor, "batch slot d_model"]]:
    """(logits, thoughts) the slow, obvious way: for each slot index j, one full forward over
    the whole sequence (`HookedTransformer.forward` with `inputs_embeds`), whose `ln_final` input
    at the position before slot j becomes slot j's input; then one more full forward for the
    logits. max_slots + 1 full passes, no cache: the reference `LatentReasoner` must equal, and
    the baseline `benchmarks/bench_thoughts.py` times it against."""
    tokens = input_ids.to(model.embed.weight.device)
    is_slot = tokens == latent_token_id
    n_slots = is_slot.sum(1)
    embeds = model.embed(tokens)
    captured: list[torch.Tensor] = []
    handle = model.ln_final.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    fed = []
    try:
        order = torch.cumsum(is_slot.long(), dim=1) - 1  # slot index of each slot position
        for j in range(int(n_slots.max()) if n_slots.numel() else 0):
            captured.clear()
            model(inputs_embeds=embeds, attention_mask=attention_mask, return_type="logits")
            resid = captured[0]
            before = torch.cat([resid[:, :1], resid[:, :-1]], dim=1)  # the state at t - 1, at t
            if thought == "normed":
                before = model.ln_final(before)
            here = (is_slot & (order == j))[..., None]
            embeds = torch.where(here, before, embeds)
            fed.append((before * here).sum(1, keepdim=True))
        logits = model(inputs_embeds=embeds, attention_mask=attention_mask, return_type="logits")
    finally:
        handle.remove()
    d = model.cfg.d_model
    thoughts = torch.cat(fed, dim=1) if fed else embeds.new_zeros(tokens.shape[0], 0, d)
    return logits, thoughts
