"""Explorer speed, measured in headless Chromium (1600 x 1000) against `streamlit run`. Prints JSON.

    .venv/bin/python benchmarks/bench_app.py [--root DIR] [--repeats 5] [--out result.json]

What is timed (medians of --repeats; every sample is in the JSON):

* cold_start_s: launching `streamlit run app/explorer.py` -> the first attention heatmap
  painted (imports, checkpoint load, forward pass, page render). Target <= 8 s.
* head_change_ms: click on a head button -> that head's heatmap painted, on a settled page
  (the browser's own clock: the click event's timestamp to the next frame after drawing).
  Drawn from the patterns already in the page. Target <= 100 ms.
* layer_change_ms: click on a layer of the segmented control -> the new layer's heatmap
  painted (a Python round trip: the layer's patterns come from the server). Target <= 200 ms.
* new_prompt_100_s: Ctrl+Enter in the prompt box with a new 100-token prompt -> heatmap
  painted (`heatmap`) and -> the whole Attention page settled, i.e. script done and no DOM
  change for 500 ms (`page`, the target). Target <= 1.5 s.
* compare_first_s: click on "Compare" in a fresh server that has loaded only the first
  checkpoint -> the Compare page settled (three checkpoints loaded, metrics on 32 test
  examples with greedy decoding, completions, attention panels). Target <= 2 s.

Also `*_settled_ms` for head/layer changes: click -> the page settled after the Python rerun
that follows (score map, table). Checkpoints: `--root`, else data/checkpoints (Attention on
shakespeare_factored_alibi with its 98-token default prompt; Compare on the add3 trio).

Every timing shares the machine with whatever else runs: the JSON has the load average
before and after and the CPU; compare runs only at similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

TARGETS = {"cold_start_s": 8.0, "head_change_ms": 100.0, "layer_change_ms": 200.0, "new_prompt_100_s": 1.5,
           "compare_first_s": 2.0}  # issue 22's targets, on 2 cores
PROMPTS = [  # 99 characters each: with <bos>, 100 tokens for the char-level checkpoints
    "Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds th",
    "O, pardon me, thou bleeding piece of earth, that I am meek and gentle with these butchers! Thou art ",
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him. The evil t",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings and ",
    "All the world's a stage, and all the men and women merely players; they have their exits and their ",
    "If music be the food of love, play on; give me excess of it, that, surfeiting, the appetite may sick",
    "Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace from day to day to the last syllable",
]


def load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def summary(xs: list[float], digits: int = 1) -> dict:
    return {"median": round(statistics.median(xs), digits), "min": round(min(xs), digits), "max": round(max(xs), digits),
            "samples": [round(x, digits) for x in xs]}


class Session:
    """A streamlit server + a Chromium window on it."""

    def __init__(self, tb, root: Path, driver):
        self.tb, self.driver = tb, driver
        self.port = tb.free_port()
        self.log = open(os.devnull, "w")
        self.t_launch = time.perf_counter()
        self.proc = tb.start_server(root, self.port, self.log)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used so far: what a timing
        costs the server whatever else shares the machine (Linux /proc; NaN elsewhere)."""
        try:
            fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def close(self) -> None:
        self.tb.stop_server(self.proc)
        self.log.close()


def cold_start(tb, root: Path, driver) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) from launching the server to the first heatmap."""
    s = Session(tb, root, driver)
    try:
        tb.wait_http(s.port, s.proc)
        driver.get(s.base)
        tb.WebDriverWait(driver, tb.WAIT, poll_frequency=0.02).until(lambda d: tb.ix_state(d) or tb.errors(d))
        elapsed, cpu = time.perf_counter() - s.t_launch, s.cpu_s()
        if tb.errors(driver):
            raise RuntimeError(f"the app showed errors: {tb.errors(driver)}")
        return elapsed, cpu
    finally:
        s.close()


def interactions(tb, root: Path, driver, repeats: int) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    s = Session(tb, root, driver)
    out: dict = {}
    try:
        tb.wait_http(s.port, s.proc)
        state = tb.load(driver, s.base)
        out["n_tokens"], out["n_layers"] = state["T"], len(driver.find_elements(By.CSS_SELECTOR, ".st-key-w-layer button"))
        n_heads = len(driver.execute_script("return document.querySelectorAll('.ix-attn .ix-group')[0].querySelectorAll('button')"))
        out["n_heads"] = n_heads
        wait = tb.WebDriverWait(driver, tb.WAIT, poll_frequency=0.01)

        def timed(click, **want) -> tuple[float, float]:
            click()
            t0 = driver.execute_script("return window.__ev.pointerdown")
            wait.until(lambda d: tb.first_draw(d, t0, **want))
            drawn = tb.first_draw(driver, t0, **want)["painted"] - t0
            return drawn, tb.wait_settled(driver) - t0

        heads, heads_settled = [], []
        for i in range(repeats):
            h = (i + 1) % n_heads
            a, b = timed(lambda: tb.head_button(driver, h).click(), head=h)
            heads.append(a)
            heads_settled.append(b)
        layers, layers_settled = [], []
        for i in range(repeats):
            layer = (i + 1) % out["n_layers"]
            a, b = timed(lambda: tb.segmented(driver, "w.layer", f"L{layer}").click(), layer=layer, waiting=False)
            layers.append(a)
            layers_settled.append(b)
        out["head_change_ms"] = summary(heads)
        out["head_change_settled_ms"] = summary(heads_settled)
        out["layer_change_ms"] = summary(layers)
        out["layer_change_settled_ms"] = summary(layers_settled)

        heat, page = [], []
        for i in range(repeats):
            text = PROMPTS[i % len(PROMPTS)]
            box = driver.find_element(By.CSS_SELECTOR, ".st-key-w-prompt textarea")
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(text)
            tb.wait_settled(driver, quiet_ms=300)
            box.send_keys(Keys.CONTROL, Keys.ENTER)
            t0 = driver.execute_script("return window.__ev.keydown")
            wait.until(lambda d: tb.first_draw(d, t0, T=len(text) + 1))
            heat.append(tb.first_draw(driver, t0, T=len(text) + 1)["painted"] - t0)
            page.append(tb.wait_settled(driver) - t0)
            if tb.errors(driver):
                raise RuntimeError(f"the app showed errors: {tb.errors(driver)}")
        out["new_prompt_100_s"] = {"heatmap": summary([x / 1000 for x in heat], 2), "page": summary([x / 1000 for x in page], 2)}
    finally:
        s.close()
    return out


def compare_first(tb, root: Path, driver) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) from the click on Compare to the page settled."""
    from selenium.webdriver.common.by import By

    s = Session(tb, root, driver)
    try:
        tb.wait_http(s.port, s.proc)
        tb.load(driver, s.base + "?ckpt=add3_none&page=attention")
        radio = next(e for e in driver.find_elements(By.CSS_SELECTOR, ".st-key-w-page label") if e.text.strip() == "Compare")
        cpu0 = s.cpu_s()
        radio.click()
        t0 = driver.execute_script("return window.__ev.pointerdown")
        tb.WebDriverWait(driver, tb.WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".st-key-compare_attn_0"))
        end = tb.wait_settled(driver, quiet_ms=800)
        cpu = s.cpu_s() - cpu0  # includes the 0.8 s quiet wait, in which the server idles
        if tb.errors(driver):
            raise RuntimeError(f"the app showed errors: {tb.errors(driver)}")
        return (end - t0) / 1000, cpu
    finally:
        s.close()


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    import streamlit
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "streamlit": streamlit.__version__,
           "cpu": cpu_model()}
    try:
        out["chromium"] = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True,
                                         timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(REPO / "data" / "checkpoints"), help="checkpoint root (default: data/checkpoints)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    import test_browser as tb  # the browser test's server / driver / probe helpers

    if not tb._have_browser:
        sys.exit(f"needs {tb.CHROMIUM} and {tb.CHROMEDRIVER} (make browser-deps)")
    root = Path(args.root)
    res = {"machine": {"cpu_count": os.cpu_count(), "load_avg_before": load_avg(), **versions()},
           "window": list(tb.WINDOW), "root": str(root), "repeats": args.repeats}
    profile = tempfile.mkdtemp(prefix="bench-chromium-")
    driver = tb.make_driver(profile)  # the browser's own start is not part of the app's times
    try:
        cold = [cold_start(tb, root, driver) for _ in range(args.repeats)]
        res["cold_start_s"] = summary([w for w, _ in cold], 2)
        res["cold_start_server_cpu_s"] = summary([c for _, c in cold], 2)
        res.update(interactions(tb, root, driver, args.repeats))
        if all((root / n / "config.json").exists() for n in ("add3_none", "add3_mask_steps", "add3_mask_answer")):
            cmp = [compare_first(tb, root, driver) for _ in range(args.repeats)]
            res["compare_first_s"] = summary([w for w, _ in cmp], 2)
            res["compare_first_server_cpu_s"] = summary([c for _, c in cmp], 2)
    finally:
        driver.quit()
    res["machine"]["load_avg_after"] = load_avg()
    got = {"cold_start_s": res["cold_start_s"]["median"], "head_change_ms": res["head_change_ms"]["median"],
           "layer_change_ms": res["layer_change_ms"]["median"], "new_prompt_100_s": res["new_prompt_100_s"]["page"]["median"]}
    if "compare_first_s" in res:
        got["compare_first_s"] = res["compare_first_s"]["median"]
    res["targets"] = TARGETS
    res["meets_target"] = {k: v <= TARGETS[k] for k, v in got.items()}
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
