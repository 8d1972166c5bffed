"""Explorer responsiveness on CPU. Prints JSON.

    .venv/bin/python benchmarks/bench_app.py [--root DIR] [--repeats 10]

(a) startup: seconds from launching `streamlit run app/explorer.py` to the first attention
    heatmap drawn in headless chromium (cold process: imports, checkpoint load, forward
    pass, plotly render). Without chromium: a cold `AppTest` first run in a fresh process.
    Target < 10 s.
(b) re-render: `AppTest` time of `selectbox(...).set_value(...).run()` for the Head and the
    Layer pickers on the Attention page (forward passes cached; median of `--repeats`).
    Target < 300 ms.

Checkpoints: `--root`, else `data/checkpoints` when it holds any, else the tiny test
fixtures (`tests/app_fixtures.py`) written to a temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
APP = str(REPO / "app" / "explorer.py")


def checkpoint_root(arg: str | None) -> tuple[Path, str]:
    if arg:
        return Path(arg), "given"
    shipped = REPO / "data" / "checkpoints"
    if list(shipped.glob("*/config.json")):
        return shipped, "shipped"
    from app_fixtures import make_checkpoints

    root = Path(tempfile.mkdtemp(prefix="bench_app_"))
    make_checkpoints(root, broken=False)
    return root, "tiny fixtures"


def startup_browser(root: Path) -> float:
    import test_browser as tb  # reuses the browser test's server/driver helpers

    profile = tempfile.mkdtemp(prefix="bench-chromium-")
    driver = tb.make_driver(profile)  # browser start is not part of the app's startup
    log = open(os.devnull, "w")
    port = tb.free_port()
    t0 = time.perf_counter()
    proc = tb.start_server(root, port, log)
    try:
        tb.wait_http(port, proc)
        driver.get(f"http://127.0.0.1:{port}/")
        tb.WebDriverWait(driver, tb.WAIT, poll_frequency=0.05).until(lambda d: tb.heatmap_state(d) or tb.errors(d))
        elapsed = time.perf_counter() - t0
        if tb.errors(driver):
            raise RuntimeError(f"the app showed errors: {tb.errors(driver)}")
        return elapsed
    finally:
        driver.quit()
        tb.stop_server(proc)
        log.close()


def startup_apptest(root: Path) -> float:
    code = ("import time; t=time.perf_counter(); from streamlit.testing.v1 import AppTest; "
            f"at=AppTest.from_file({APP!r}, default_timeout=120).run(); "
            "assert not at.exception and at.get('plotly_chart'); print(time.perf_counter()-t)")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                   env=dict(os.environ, INTERP_CHECKPOINT_ROOT=str(root)))
    return time.perf_counter() - t0


def rerender(root: Path, repeats: int) -> dict:
    os.environ["INTERP_CHECKPOINT_ROOT"] = str(root)
    sys.argv = ["explorer.py"]
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    box = lambda label: next(w for w in at.selectbox if w.label == label)  # noqa: E731
    n_layers, n_heads = len(box("Layer").options), len(box("Head").options)
    # warm the forward-pass caches, then time pure re-renders
    out = {"checkpoint": at.sidebar.selectbox(key="ckpt_choice").value, "n_layers": n_layers, "n_heads": n_heads,
           "n_tokens": len(json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["x"])}
    for label, n in (("Head", n_heads), ("Layer", n_layers)):
        times = []
        for i in range(repeats + 1):
            t = time.perf_counter()
            box(label).set_value((i + 1) % n).run()
            times.append(time.perf_counter() - t)
            assert not at.exception and not at.error
        out[f"{label.lower()}_change_ms_median"] = round(1000 * statistics.median(times[1:]), 1)
        out[f"{label.lower()}_change_ms_max"] = round(1000 * max(times[1:]), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=None, help="checkpoint root (default: data/checkpoints or tiny fixtures)")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    root, source = checkpoint_root(args.root)
    import torch

    res = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "checkpoints": source,
           "root": str(root)}
    have_browser = os.path.exists("/usr/bin/chromium") and os.path.exists("/usr/bin/chromedriver")
    if have_browser:
        res["startup_s"] = round(startup_browser(root), 2)
        res["startup_measure"] = "streamlit run -> first heatmap in headless chromium"
    else:
        res["startup_s"] = round(startup_apptest(root), 2)
        res["startup_measure"] = "cold AppTest first run in a fresh process (no chromium)"
    res.update(rerender(root, args.repeats))
    res["targets"] = {"startup_s": 10, "change_ms": 300}
    res["ok"] = res["startup_s"] < 10 and max(res["head_change_ms_median"], res["layer_change_ms_median"]) < 300
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
