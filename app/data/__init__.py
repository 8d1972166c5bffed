"""Checkpoints, runs, prompts and cached analyses for the explorer, one module per job:

    errors.py     AppError (a message a person can act on; pages show it as is), Unsupported
    discovery.py  where checkpoints come from (the roots, `--ckpt`, `--allow-root`), which
                  directories may be opened at all, and a typed path checked (no torch)
    runs.py       training runs (step_* checkpoints, last/best) and their metrics.jsonl series
    loading.py    the cached checkpoint load (model + tokenizer + config) and the model card
    prompts.py    text <-> token ids, token labels, the checkpoint's task, default prompts,
                  where a task prompt ends and its answer starts
    analyses.py   cached calls into `interp` behind the Attention, Streams, Logit lens,
                  Step-by-step, Compare and Attribution pages
    patching.py   the Patching page: default corruptions, metric positions, cached sweeps
    thoughts.py   the Latent thoughts page (Coconut checkpoints)
    features.py   the Features page: dictionaries of a checkpoint, dashboard stores, steering

No model math here: every number comes from `interp` / `models` public functions; these
modules decide *what* to compute, cache it (`st.cache_resource` for models, keyed by path +
mtime; `st.cache_data` for forward passes, keyed by that and the token ids) and turn bad input
into `AppError`s. Pages use the names below as `data.NAME` (`from app import data`).
"""

from __future__ import annotations

import sys

from .discovery import REPO_ROOT

if str(REPO_ROOT) not in sys.path:  # `streamlit run app/explorer.py` from anywhere: interp, models importable
    sys.path.insert(0, str(REPO_ROOT))

from .errors import AppError, Unsupported  # noqa: E402
from .discovery import (  # noqa: E402
    DEFAULT_ROOTS, ENV_ROOT, PREFERRED, STEP_DIR, STEP_MASKING_TRIO, allowed, allowed_roots, check_dir,
    checkpoint_roots, cli_ckpt, default_name, discover, run_steps,
)
from .runs import Run, metric_series, run_of  # noqa: E402
from .loading import Loaded, get, load, stamp, summary, tokenizer_digest  # noqa: E402
from .prompts import (  # noqa: E402
    MAX_TOKENS, SHAKESPEARE, answer_start, decode_list, default_prompt, encode, fits, is_task, labels, pieces,
    prompt_end, show_token, special_ids, task_for, uses_bos,
)
from .analyses import (  # noqa: E402
    THUMB, answer_step_attention, attention, auto_scale, b64, compare_examples, compare_one, completion, head_rows,
    layer_patterns, lens, logit_attribution, neurons, norms, steps_trace, thumbnails, token_losses, top1,
)
from .patching import (  # noqa: E402
    PATCH_CACHE, PATCH_METRICS, SEARCH_WINDOW, answers, default_corruption, metric_positions, patch_metric, patch_sweep,
)
from .features import (  # noqa: E402
    PAGE_TOKENS, Found, active_latents, compute_feature_store, dict_stamp, dictionaries, dictionary, feature_store,
    intervene, latent_dashboard, latent_table, prompt_latents, store_dir, store_stamp,
)
from .thoughts import (  # noqa: E402
    coconut_mode, reasoner, thought_answer, thought_attention, thought_batch, thought_frontier, thought_lens,
    thought_patch, thought_split_size, thought_timeline,
)
