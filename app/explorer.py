"""interp explorer: attention, streams, logit lens, step-by-step generation, checkpoint
comparison and training curves for a trained checkpoint, in one URL-backed view.

    streamlit run app/explorer.py -- [--ckpt DIR_OR_NAME] [--allow-root DIR]   (or `make explore`)

Checkpoints and runs are found under `$INTERP_CHECKPOINT_ROOT` (default `data/checkpoints`
and `data/runs`) and each `--allow-root DIR`; only directories under those, the repository's
data/ and runs/ and the `--ckpt` given can be opened (app/data/discovery.py).
`shakespeare_factored_alibi` opens first when present. Served on 127.0.0.1 with usage
statistics off (.streamlit/config.toml; `interp explore --host` to share).
The whole view (checkpoint, step, page, prompt, layer, head, position, options) lives in the
URL (app/state.py); pages are modules in app/views/.
"""

from __future__ import annotations

import gc
import sys
import traceback
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

st.set_page_config(page_title="interp explorer", layout="wide")
st.html("<style>[data-testid='stMainBlockContainer']{padding-top:2.2rem}</style>")  # more room for figures
_cold = "app.data" not in sys.modules
if _cold:  # no garbage collections while torch, transformer_lens & co. import (about a fifth of
    gc.disable()  # their import time: ~470k objects scanned again and again); see settle_gc()
_boot = st.empty()
if _cold:  # first run in this server: say what is happening while torch imports (seconds), and
    # draw hidden stand-ins of the first page's elements so the browser fetches and compiles
    # their code (plotly.js included) on the other core meanwhile.
    with _boot.container():
        st.info("Loading torch and the checkpoint…")
        st.html("<style>.st-key-boot_preload{display:none}</style>")
        with st.container(key="boot_preload"):
            st.text_area("preload", disabled=True)
            st.selectbox("preload", ["-"], disabled=True)
            st.text_input("preload", disabled=True)
            st.radio("preload", ["-"], disabled=True)
            st.segmented_control("preload", ["-"], disabled=True)
            st.dataframe({"-": [0.0]})
            st.plotly_chart({"data": [{"type": "heatmap", "z": [[0]]}], "layout": {}})
            from app import components  # no torch behind it

            components.figure_export("-", "-")

try:
    from app import data, state, views  # noqa: E402
except BaseException:
    gc.enable()
    raise

_boot.empty()


def settle_gc() -> None:
    """After the first run's imports and checkpoint load: those objects live as long as the
    server, so freeze them out of every later collection, then collect again as usual.
    Streamlit runs gc.collect(2) after each script run; with torch and transformer_lens in
    the heap that took 0.3-1 s per rerun (on 2 cores), holding the GIL while the next click
    waited. Frozen, it takes milliseconds."""
    gc.freeze()
    gc.enable()

OTHER = "(a directory: type it below)"


def pick_checkpoint(view: state.View, sb) -> tuple:
    """Sidebar checkpoint picker (+ step slider for runs). Returns (Loaded, Run|None, step|None),
    or None after saying why nothing can be shown."""
    found = data.discover()
    names = list(found)
    ckpt = view.get("ckpt") or data.default_name(names, data.cli_ckpt())
    path, problem = None, None
    if ckpt:
        try:
            path = found[ckpt] if ckpt in found else data.check_dir(ckpt)
            r = data.run_of(path)
            if r is not None and r[1] is not None:  # a step directory: show it as its run at that step
                run_dir = r[0].dir.resolve()
                ckpt = next((n for n, p in found.items() if p.resolve() == run_dir), str(r[0].dir))
                path = r[0].dir
                view.set("ckpt", ckpt)
                view.set("step", r[1])
        except data.AppError as e:
            problem = e
    else:
        roots = ", ".join(f"`{r}`" for r in data.checkpoint_roots())
        st.info(f"No checkpoints found under {roots}. Type a checkpoint directory in the sidebar, or set "
                f"{data.ENV_ROOT}.")
    view.values["ckpt"] = ckpt
    view.widget("selectbox", "ckpt", "Checkpoint", value=ckpt if ckpt in found else OTHER, options=names + [OTHER],
                container=sb, to_url=lambda v: v if v != OTHER else str(found.get(ckpt, ckpt) or "") or None,
                after=_new_checkpoint,
                help=f"Checkpoints and runs found under {', '.join(str(r) for r in data.checkpoint_roots())}")
    view.widget("text_input", "ckpt", "Checkpoint or run directory", value="" if ckpt in found else (ckpt or ""),
                key="w.ckpt_path", container=sb, to_url=lambda t: t.strip() or None, after=_new_checkpoint,
                placeholder="runs/my_run/step_001000")
    if not ckpt:
        return None
    try:
        if problem is not None:
            raise problem
        run, step = None, None
        r = data.run_of(path)
        if r is not None:
            run = r[0]
            steps = list(run.steps)
            default = run.last if run.last in run.steps else steps[-1]
            step = view.choice("step", steps, default=default, what=f"run {run.dir.name}")
            view.set("step", step)  # always in the URL: a run keeps growing, "last" moves
            view.widget("select_slider", "step", "Training step", value=step, options=steps, container=sb,
                        help="Every page shows this step's checkpoint.")
            path = run.steps[step]
        ck = data.load(path)
    except data.AppError as e:
        sb.error("This checkpoint cannot be loaded.")
        st.error(str(e))
        return None
    return ck, run, step


def _new_checkpoint() -> None:
    state.set_param("step", None)  # a step belongs to the previous run


def model_card(ck: data.Loaded, sb) -> None:
    s = data.summary(ck)
    sb.markdown(f"**{s['preset']}** · {s['params']:,} parameters  \n{s['shape']}  \n{s['parts']}  \nvocab {s['vocab']}")
    if s["task"]:
        task = ", ".join(f"{k}={v}" for k, v in s["task"].items() if k != "name" and v is not None)
        sb.markdown(f"**Task** `{s['task']['name']}`")
        sb.caption(task)
    if s["metrics"]:
        shown = {k: v for k, v in s["metrics"].items() if k != "step"}
        step = f" (step {s['metrics']['step']})" if "step" in s["metrics"] else ""
        headline = [k for k in ("loss", "ppl", "exact_match", "token_acc") if k in shown]
        if headline:
            sb.caption("final metrics" + step + ": " + ", ".join(f"{k} {shown[k]:.4g}" for k in headline))
        with sb.expander("All final metrics"):
            st.dataframe({"metric": list(shown), "value": [f"{v:.4g}" for v in shown.values()]}, hide_index=True)
    if ck.card:
        with sb.expander("Model card"):
            st.markdown(ck.card)


def main() -> None:
    view = state.View.from_url()
    sb = st.sidebar
    sb.title("interp explorer")
    address = st.get_option("server.address")
    if address and address not in ("127.0.0.1", "localhost", "::1"):  # --host / HOST= chose to share it
        sb.caption(f"Shared on `{address}`: whoever reaches this port can open the checkpoints under "
                   f"{', '.join(f'`{r}`' for r in data.allowed_roots())}.")
    nav = sb.container()
    notes = st.container()
    try:
        picked = pick_checkpoint(view, sb)
    finally:
        if _cold:
            settle_gc()
    if picked is None:
        view.sync()
        return
    ck, run, step = picked
    ctx = views.Ctx(view, ck, run, step)
    pages = views.available(ctx)
    slugs = [p.slug for p in pages]
    wanted = view.get("page")
    if wanted not in slugs:
        page = next((p for p in views.PAGES if p.slug == wanted), None)
        why = page.unavailable(ctx) if page is not None else None
        view.problems.append(f"The {page.title} page is not available: {why}." if why else
                             f"There is no page `{wanted}`; pages: {', '.join(slugs)}.")
        wanted = slugs[0]
        view.set("page", wanted)
    view.values["page"] = wanted
    by_slug = {p.slug: p for p in pages}
    view.widget("radio", "page", "Page", value=wanted, options=slugs, format_func=lambda s: by_slug[s].title,
                container=nav, horizontal=True)
    card = sb.container()  # filled after the page: its code block pulls a big highlighter into the browser
    page = by_slug[wanted]
    st.caption(f"{page.title} · `{ck.path}`" + (f" · step {step} of run `{run.dir.name}`" if run else ""))
    try:
        page.render(ctx)
    except data.AppError as e:
        st.error(str(e))
    except Exception as e:  # a bug or an unforeseen input: say what, keep the app alive
        traceback.print_exc(file=sys.stderr)
        st.error(f"{page.title} failed: {type(e).__name__}: {e}")
    finally:
        view.sync()
    for msg in view.problems:
        notes.warning(msg)
    model_card(ck, card)


main()
