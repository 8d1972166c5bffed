"""interp explorer: attention patterns, streams, logit lens, step-by-step generation and
step-masking comparison on a trained checkpoint.

    streamlit run app/explorer.py -- [--ckpt DIR_OR_NAME]        (or `make explore`)

Checkpoints are discovered as `$INTERP_CHECKPOINT_ROOT/*/config.json` (default
`data/checkpoints/`); `shakespeare_factored_alibi` is opened first when present.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

st.set_page_config(page_title="interp explorer", layout="wide")
_cold = "app.state" not in sys.modules
_boot = st.empty()
if _cold:  # first run in this server: show something now and let the browser fetch plotly.js while torch imports
    _boot.plotly_chart({"data": [{"type": "scatter", "x": [], "y": []}],
                        "layout": {"title": {"text": "Loading torch and the checkpoint…"}, "height": 140,
                                   "xaxis": {"visible": False}, "yaxis": {"visible": False}}}, key="boot")

from app import state, views  # noqa: E402

_boot.empty()


OTHER = "Other directory…"


def sidebar():
    """Checkpoint picker + model card. Returns the loaded checkpoint, or None (after showing why)."""
    sb = st.sidebar
    found = state.discover()
    cli = state.cli_ckpt()
    names = list(found)
    if cli and cli in found:
        default, cli_path = cli, ""
    elif cli:
        default, cli_path = OTHER, cli
    else:
        default, cli_path = state.default_name(names), ""
    options = names + [OTHER]
    choice = sb.selectbox("Checkpoint", options, index=options.index(default) if default in options else len(names),
                          key="ckpt_choice", help=f"Checkpoints found under {state.checkpoint_root()}")
    if choice == OTHER:
        text = sb.text_input("Checkpoint directory", value=cli_path, key="ckpt_path",
                             placeholder="runs/my_run/step_001000")
        if not text.strip():
            if not names:
                st.info(f"No checkpoints found under `{state.checkpoint_root()}`. Type a checkpoint directory in "
                        f"the sidebar, or set {state.ENV_ROOT}.")
            else:
                st.info("Type a checkpoint directory in the sidebar.")
            return None
        try:
            path = state.check_dir(text)
        except state.AppError as e:
            sb.error(str(e))
            st.error(str(e))
            return None
    else:
        path = found[choice]
    try:
        ck = state.load(path)
    except state.AppError as e:
        sb.error("This checkpoint cannot be loaded.")
        st.error(str(e))
        return None

    s = state.summary(ck)
    sb.markdown(f"**{s['preset']}** · {s['params']:,} parameters  \n{s['shape']}  \n{s['parts']}  \nvocab {s['vocab']}")
    if s["task"]:
        task = ", ".join(f"{k}={v}" for k, v in s["task"].items() if k != "name")
        sb.markdown(f"**Task** `{s['task']['name']}`: {task}")
    if s["metrics"]:
        shown = {k: v for k, v in s["metrics"].items() if k != "step"}
        step = f" (step {s['metrics']['step']})" if "step" in s["metrics"] else ""
        headline = [k for k in ("loss", "ppl", "exact_match", "token_acc") if k in shown]
        sb.caption("final metrics" + step + ": " + ", ".join(f"{k} {shown[k]:.4g}" for k in headline))
        with sb.expander("All final metrics"):
            st.dataframe({"metric": list(shown), "value": [f"{v:.4g}" for v in shown.values()]}, hide_index=True)
    if ck.card:
        with sb.expander("Model card"):
            st.markdown(ck.card)
    return ck


def main():
    st.sidebar.title("interp explorer")
    page = st.sidebar.radio("Page", views.PAGES, key="page", horizontal=True)
    ck = sidebar()
    if ck is None:
        return
    st.caption(f"{page} · `{ck.path}`")
    draw = {"Attention": views.page_attention, "Streams": views.page_streams, "Logit lens": views.page_lens,
            "Step-by-step": views.page_steps, "Compare": views.page_compare}[page]
    try:
        draw(ck)
    except state.AppError as e:
        st.error(str(e))
    except Exception as e:  # a bug or an unforeseen input: say what, keep the app alive
        traceback.print_exc(file=sys.stderr)
        st.error(f"{page} failed: {type(e).__name__}: {e}")


main()
