"""The explorer in a real browser: Debian's chromium + chromedriver driven by Selenium against
`streamlit run app/explorer.py` on 127.0.0.1, at 1600 x 1000.

Covered: a URL shows the view it names (and reloading it shows it again); heads switch in the
browser before Python hears of it, and the URL follows; clicking a thumbnail, a score-map
cell, a logit-lens cell, a patching-map cell and an attribution-map cell selects; the token
view shades tokens by the real attention values; the Latent thoughts timeline draws; no error
element ever appears. Screenshots go to $BROWSER_SCREENSHOT_DIR (default:
the test's tmp dir). The helpers here are shared with benchmarks/bench_app.py.

Skipped only when chromium/chromedriver are missing *and* `CI` is unset (`make browser-deps`
installs them); in CI a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest

from app_fixtures import make_checkpoints, make_run  # tests/ is on sys.path (rootdir conftest)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 60  # seconds, every wait below is bounded by this
WINDOW = (1600, 1000)

_have_browser = os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)
if not _have_browser and not os.environ.get("CI"):
    pytest.skip(f"{CHROMIUM} / {CHROMEDRIVER} missing (run `make browser-deps`); required when CI is set",
                allow_module_level=True)

try:
    import selenium  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("selenium is not installed (dev extra)", allow_module_level=True)
from selenium import webdriver  # noqa: E402
from selenium.webdriver import ActionChains  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


# ------------------------------------------------------------------ server + browser
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, proc: subprocess.Popen, timeout: float = WAIT) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"streamlit did not answer on port {port} within {timeout}s")


def start_server(root, port: int, log) -> subprocess.Popen:
    env = dict(os.environ, INTERP_CHECKPOINT_ROOT=str(root), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "explorer.py"),
           "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def make_driver(profile: str, downloads: str | None = None) -> "webdriver.Chrome":
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        opts.add_argument(flag)
    if downloads:
        opts.add_experimental_option("prefs", {"download.default_directory": downloads,
                                               "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(WAIT)
    if downloads:
        driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
    return driver


# ------------------------------------------------------------------ page probes
# Event timestamps (capture phase, the browser's own clock) and the time of the last DOM change.
PROBES = """
if (!window.__probes) {
  window.__probes = true; window.__ev = {}; window.__lastMutation = performance.now();
  for (const t of ['pointerdown', 'click', 'keydown']) document.addEventListener(t, e => { window.__ev[t] = e.timeStamp; }, true);
  new MutationObserver(() => { window.__lastMutation = performance.now(); })
    .observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
}
"""


def install_probes(driver) -> None:
    driver.execute_script(PROBES)


def errors(driver) -> list[str]:
    """Texts of every exception box and error alert on the page (one script: nothing goes stale)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('[data-testid=\"stException\"], [data-testid=\"stAlertContentError\"]')]"
        ".map(e => e.innerText)")


def ix_state(driver):
    """What the attention component drew last (its data-ix-state), or None before it drew."""
    s = driver.execute_script("const e = document.querySelector('.ix-attn'); return e ? e.dataset.ixState : null")
    return json.loads(s) if s else None


def first_draw(driver, since: float, **want):
    """The first drawing logged after `since` (page clock, ms) matching `want`, or None."""
    return driver.execute_script(
        "return (window.__ixLog || []).find(r => r.painted > arguments[0] && "
        "Object.entries(arguments[1]).every(([k, v]) => r[k] === v)) || null", since, want)


def settled(driver, quiet_ms: float = 500) -> bool:
    """No script run in progress, nothing stale, and no DOM change for `quiet_ms`."""
    return bool(driver.execute_script(
        "return !document.querySelector('[data-testid=\"stStatusWidget\"]') && "
        "!document.querySelector('[data-stale=\"true\"]') && performance.now() - window.__lastMutation > arguments[0]",
        quiet_ms))


def wait_settled(driver, timeout: float = WAIT, quiet_ms: float = 500) -> float:
    """Wait until the page settles; returns the page-clock time of its last DOM change."""
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: settled(d, quiet_ms) or errors(d))
    return driver.execute_script("return window.__lastMutation")


def query(driver) -> dict:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(driver.current_url).query))


def head_button(driver, head: int):
    """The attention component's button for `head`, scrolled to the middle of the view (the
    sticky toolbar would take a click at the top)."""
    return driver.execute_script("const b = document.querySelectorAll('.ix-attn .ix-group')[0]"
                                 ".querySelectorAll('button')[arguments[0]]; b.scrollIntoView({block: 'center'}); "
                                 "return b;", head)


def segmented(driver, key: str, text: str):
    """A button of the segmented control with widget key `key` (class st-key-<key, dots as ->)."""
    css = f".st-key-{key.replace('.', '-')} button"
    return next(b for b in driver.find_elements(By.CSS_SELECTOR, css) if b.text.strip() == text)


def click_plotly_cell(driver, chart_key: str, x_index: int, y_index: int) -> None:
    """A real mouse click on the centre of heatmap cell (x_index, y_index) of a plotly chart."""
    sel = f".st-key-{chart_key} .js-plotly-plot"
    el = driver.find_element(By.CSS_SELECTOR, f".st-key-{chart_key}")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    WebDriverWait(driver, WAIT).until(lambda d: d.execute_script(
        f"const g = document.querySelector('{sel}'); return !!(g && g._fullLayout && g._fullLayout.xaxis)"))
    dx, dy = driver.execute_script(
        f"""const gd = document.querySelector('{sel}'), fl = gd._fullLayout, r = gd.getBoundingClientRect();
        const x = fl._size.l + fl.xaxis.l2p(arguments[0]), y = fl._size.t + fl.yaxis.l2p(arguments[1]);
        return [x - r.width / 2, y - r.height / 2];""", x_index, y_index)
    ActionChains(driver).move_to_element_with_offset(driver.find_element(By.CSS_SELECTOR, sel), dx, dy).click().perform()


def canvas_digest(driver) -> str:
    return driver.execute_script("return document.querySelector('.ix-attn .ix-heat').toDataURL().slice(-4000)")


def load(driver, url: str, attention: bool = True):
    """Open `url`, wait for the attention component (or, with attention=False, any plotly
    chart) and for the page to settle; returns the component's state (or None)."""
    driver.get(url)
    ready = ix_state if attention else (lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"))
    WebDriverWait(driver, WAIT, poll_frequency=0.05).until(lambda d: ready(d) or errors(d))
    assert not errors(driver), errors(driver)
    install_probes(driver)
    wait_settled(driver)
    return ix_state(driver)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    assert _have_browser, f"CI is set but {CHROMIUM} / {CHROMEDRIVER} are missing: run `make browser-deps`"
    root = tmp_path_factory.mktemp("browser_ckpts")
    ckpts = make_checkpoints(root, names=("shakespeare_factored_alibi",), broken=False)
    ckpts["add3_run"] = make_run(root, "add3_run")
    coconut = REPO / "data" / "checkpoints" / "coconut_add3_coconut"  # the Latent thoughts page needs a real one
    if coconut.is_dir():
        (root / coconut.name).symlink_to(coconut)
        ckpts[coconut.name] = root / coconut.name
    port = free_port()
    log_path = root / "streamlit.log"
    log = open(log_path, "w")
    proc = start_server(root, port, log)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    downloads = root / "downloads"
    downloads.mkdir()
    driver = None
    try:
        wait_http(port, proc)
        driver = make_driver(profile, str(downloads))
        yield dict(driver=driver, base=f"http://127.0.0.1:{port}/", ckpts=ckpts, log=log_path, downloads=downloads)
    finally:
        if driver is not None:
            driver.quit()
        stop_server(proc)
        log.close()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def shots(tmp_path) -> Path:
    d = Path(os.environ.get("BROWSER_SCREENSHOT_DIR") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def reference_pattern(ckpt, text: str, layer: int):
    import interp

    model, _ = interp.load(ckpt)
    _, cache = model.run_with_cache(model.to_tokens(text))
    return cache["blocks.%d.attn.hook_pattern" % layer][0].numpy()


# ------------------------------------------------------------------ tests
def test_a_url_shows_the_view_it_names(served, shots):
    d, base = served["driver"], served["base"]
    params = dict(ckpt="shakespeare_factored_alibi", page="attention", layer="1", head="2", mode="all", dir="to",
                  scale="shared", pos="4", prompt="To be, or not to be")
    url = base + "?" + urllib.parse.urlencode(params)
    s = load(d, url)
    assert (s["layer"], s["head"], s["mode"], s["dir"], s["scale"], s["pos"], s["T"]) == (1, 2, "all", "to", "shared", 4, 20)
    assert d.find_element(By.CSS_SELECTOR, '.st-key-w-prompt textarea').get_attribute("value") == params["prompt"]
    assert "L1H2" in d.find_element(By.CSS_SELECTOR, ".ix-title").text
    assert len(d.find_elements(By.CSS_SELECTOR, ".ix-tokens .ix-line")) == 4  # all heads: one line per head
    assert d.find_element(By.CSS_SELECTOR, '.ix-thumb[data-layer="1"][data-head="2"]').get_attribute("class").count("ix-sel")
    assert {k: v for k, v in query(d).items() if k in params} == params
    d.save_screenshot(str(shots / "explorer_url_view.png"))
    digest = canvas_digest(d)
    again = load(d, d.current_url)  # reload: the same view
    assert {k: again[k] for k in ("layer", "head", "mode", "dir", "scale", "pos", "T")} == \
        {k: s[k] for k in ("layer", "head", "mode", "dir", "scale", "pos", "T")}
    assert canvas_digest(d) == digest


def test_heads_switch_in_the_browser_and_the_url_follows(served, shots):
    d, base = served["driver"], served["base"]
    s = load(d, base + "?page=attention&prompt=" + urllib.parse.quote("ROMEO:\nBut, soft! what light"))
    assert (s["layer"], s["head"]) == (0, 0)
    before = canvas_digest(d)
    head_button(d, 3).click()
    t0 = d.execute_script("return window.__ev.pointerdown")
    WebDriverWait(d, WAIT, poll_frequency=0.02).until(lambda dr: first_draw(dr, t0, head=3))
    drawn = first_draw(d, t0, head=3)
    assert drawn["pending"] is True  # drawn from the patterns already in the page, before Python replied
    assert drawn["painted"] - t0 < 1000  # generous on a loaded CI machine; bench_app.py measures it
    assert canvas_digest(d) != before and "L0H3" in d.find_element(By.CSS_SELECTOR, ".ix-title").text
    WebDriverWait(d, WAIT).until(lambda dr: query(dr).get("head") == "3")
    wait_settled(d)
    assert not errors(d)
    d.save_screenshot(str(shots / "explorer_attention_L0H3.png"))
    # the mean of the heads, and back
    d.execute_script("document.querySelectorAll('.ix-attn .ix-group')[1].querySelectorAll('button')[2].click()")
    WebDriverWait(d, WAIT).until(lambda dr: query(dr).get("mode") == "mean")
    assert "mean of 4 heads" in d.find_element(By.CSS_SELECTOR, ".ix-title").text


def test_click_to_select(served, shots):
    d, base = served["driver"], served["base"]
    load(d, base + "?page=attention")
    # a thumbnail of another layer: the server sends that layer's patterns
    d.find_element(By.CSS_SELECTOR, '.ix-thumb[data-layer="1"][data-head="2"]').click()
    WebDriverWait(d, WAIT).until(lambda dr: (ix_state(dr) or {}).get("layer") == 1 and not ix_state(dr)["waiting"])
    assert ix_state(d)["head"] == 2
    WebDriverWait(d, WAIT).until(lambda dr: query(dr).get("layer") == "1" and query(dr).get("head") == "2")
    wait_settled(d)
    assert "ix-sel" in d.find_element(By.CSS_SELECTOR, '.ix-thumb[data-layer="1"][data-head="2"]').get_attribute("class")
    assert segmented(d, "w.layer", "L1").get_attribute("aria-checked") == "true"
    # a score-map cell: head 3 of layer 0
    click_plotly_cell(d, "attn_scoremap", 3, 0)
    WebDriverWait(d, WAIT).until(lambda dr: query(dr).get("head") == "3" and "layer" not in query(dr))
    WebDriverWait(d, WAIT).until(lambda dr: (ix_state(dr) or {}).get("layer") == 0 and ix_state(dr)["head"] == 3)
    wait_settled(d)
    shapes = d.execute_script("return document.querySelector('.st-key-attn_scoremap .js-plotly-plot').layout.shapes")
    assert (shapes[0]["x0"], shapes[0]["y0"]) == (2.5, -0.5)  # the selected head is outlined in the map too
    assert not errors(d)
    d.save_screenshot(str(shots / "explorer_scoremap_click.png"))
    # a logit-lens cell selects that position
    load(d, base + "?page=lens&prompt=" + urllib.parse.quote("To be, or not"), attention=False)
    click_plotly_cell(d, "lens_heatmap", 5, 1)
    WebDriverWait(d, WAIT).until(lambda dr: query(dr).get("pos") == "5")
    wait_settled(d)
    assert "position 5" in d.find_element(By.CSS_SELECTOR, '[data-testid="stCaptionContainer"]').text or \
        any("position 5" in c.text for c in d.find_elements(By.CSS_SELECTOR, '[data-testid="stCaptionContainer"]'))
    assert not errors(d)


def test_token_view_shades_by_attention(served, shots):
    d, base, ckpts = served["driver"], served["base"], served["ckpts"]
    text = "To be, or not to be"
    load(d, base + "?" + urllib.parse.urlencode(dict(page="attention", layer="1", head="1", prompt=text)))
    want = reference_pattern(ckpts["shakespeare_factored_alibi"], text, 1)[1]  # head 1: (q, k)
    spans = d.find_elements(By.CSS_SELECTOR, ".ix-tokens .ix-tok")
    assert len(spans) == want.shape[0] and spans[1].text == "T"
    q = 12
    ActionChains(d).move_to_element(spans[q]).perform()
    WebDriverWait(d, WAIT).until(lambda dr: "ix-focus" in spans[q].get_attribute("class"))
    shown = [float(s.get_attribute("title").rsplit(": ", 1)[1]) for s in spans]
    assert max(abs(a - b) for a, b in zip(shown, want[q])) < 2e-3  # float16 on the wire
    shaded = [bool(s.value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "transparent")) for s in spans]
    assert shaded[: q + 1] == [bool(v > 0) for v in want[q, : q + 1]] and not any(shaded[q + 1:])
    d.save_screenshot(str(shots / "explorer_token_view.png"))
    # "to" direction: the hovered token as the key
    d.execute_script("document.querySelectorAll('.ix-attn .ix-group')[2].querySelectorAll('button')[1].click()")
    WebDriverWait(d, WAIT).until(lambda dr: query(dr).get("dir") == "to")
    wait_settled(d)
    spans = d.find_elements(By.CSS_SELECTOR, ".ix-tokens .ix-tok")
    ActionChains(d).move_to_element(spans[3]).perform()
    WebDriverWait(d, WAIT).until(lambda dr: "ix-focus" in spans[3].get_attribute("class"))
    shown = [float(s.get_attribute("title").rsplit(": ", 1)[1]) for s in spans]
    assert max(abs(a - b) for a, b in zip(shown, want[:, 3])) < 2e-3
    # a click pins the token: it is the URL's position
    spans[3].click()
    WebDriverWait(d, WAIT).until(lambda dr: query(dr).get("pos") == "3")
    assert not errors(d)


def _downloaded(folder: Path, suffix: str, before: set) -> Path:
    def done(_):
        new = [p for p in folder.glob(f"*{suffix}") if p not in before]
        return new[0] if new else None
    return WebDriverWait(None, WAIT, poll_frequency=0.1).until(done)


def test_exports_download_data_and_figures(served):
    d, base, folder = served["driver"], served["base"], served["downloads"]
    load(d, base + "?" + urllib.parse.urlencode(dict(page="attention", prompt="To be, or not")))
    for label, suffix, head in (("CSV", ".csv", b'query\\key,"0:<bos>"'), ("SVG", ".svg", b"<svg"), ("PNG", ".png", b"\x89PNG")):
        before = set(folder.iterdir())
        d.execute_script("[...document.querySelectorAll('.ix-export button')].find(b => b.textContent === arguments[0]).click()",
                         label)
        f = _downloaded(folder, suffix, before)
        assert f.read_bytes().startswith(head), (label, f.read_bytes()[:40])
    # the Export menu under the head scores: the table as CSV, the score map as SVG (plotly's own export)
    menus = [b for b in d.find_elements(By.CSS_SELECTOR, '[data-testid="stPopoverButton"]')
             if b.is_displayed() and b.text.startswith("Export")]
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", menus[1])
    menus[1].click()
    WebDriverWait(d, WAIT).until(lambda dr: dr.find_elements(By.CSS_SELECTOR, '[data-testid="stPopoverBody"] button'))
    before = set(folder.iterdir())
    csv = next(b for b in d.find_elements(By.CSS_SELECTOR, '[data-testid="stPopoverBody"] button') if b.text.strip() == "CSV")
    csv.click()
    f = _downloaded(folder, ".csv", before)
    assert "prev_token" in f.read_text().splitlines()[0] and len(f.read_text().splitlines()) == 1 + 2 * 4
    before = set(folder.iterdir())
    d.find_element(By.CSS_SELECTOR, '.ix-figexport button[data-format="svg"]').click()
    f = _downloaded(folder, ".svg", before)
    assert f.read_text().startswith("<svg") and "prev_token" in f.read_text()
    assert not errors(d)


def test_training_curves_pick_a_checkpoint(served, shots):
    d, base = served["driver"], served["base"]
    load(d, base + "?ckpt=add3_run&page=training", attention=False)
    assert query(d)["step"] == "300"
    chart = d.find_element(By.CSS_SELECTOR, ".st-key-train_0")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", chart)
    # the open circles mark the run's checkpoints; click the one at step 100
    WebDriverWait(d, WAIT).until(lambda dr: dr.find_elements(By.CSS_SELECTOR, ".st-key-train_0 .scatterlayer .trace .point"))
    marker = d.execute_script("""const gd = document.querySelector('.st-key-train_0 .js-plotly-plot');
        const i = gd.data.findIndex(t => t.mode === 'markers');
        return gd.querySelectorAll('.scatterlayer .trace')[i].querySelectorAll('.point')[0];""")
    ActionChains(d).move_to_element(marker).click().perform()
    WebDriverWait(d, WAIT).until(lambda dr: query(dr).get("step") == "100")
    wait_settled(d)
    assert any("step 100" in c.text for c in d.find_elements(By.CSS_SELECTOR, '[data-testid="stCaptionContainer"]'))
    assert not errors(d)
    d.save_screenshot(str(shots / "explorer_training.png"))


def _plot(driver, chart_key: str):
    """The plotly div of the chart drawn with `key=chart_key`, once plotly has laid it out."""
    sel = f".st-key-{chart_key} .js-plotly-plot"
    WebDriverWait(driver, WAIT).until(lambda d: d.execute_script(
        f"const g = document.querySelector('{sel}'); return !!(g && g._fullLayout && g._fullLayout.xaxis)"))
    return driver.find_element(By.CSS_SELECTOR, sel)


def _outline(driver, chart_key: str):
    """(x0, y0) of the selection outline drawn on a chart, or None."""
    shapes = driver.execute_script(f"return document.querySelector('.st-key-{chart_key} .js-plotly-plot').layout.shapes")
    return (shapes[0]["x0"], shapes[0]["y0"]) if shapes else None


def test_patching_runs_and_a_cell_click_selects(served, shots):
    d, base = served["driver"], served["base"]
    t0 = time.monotonic()
    load(d, base + "?" + urllib.parse.urlencode(dict(page="patching", prompt="To be, or not to be")), attention=False)
    for key in ("patch_resid_pre", "patch_attn_out", "patch_mlp_out", "patch_z", "patch_xt_pre", "patch_xe_pre"):
        _plot(d, key)
    first_draw = time.monotonic() - t0
    assert not errors(d)
    corrupted = d.find_element(By.CSS_SELECTOR, ".st-key-w-corrupt textarea").get_attribute("value")
    assert len(corrupted) == len("To be, or not to be") and corrupted != "To be, or not to be"  # one character changed
    # a layer x position cell: layer 1, position 3
    click_plotly_cell(d, "patch_resid_pre", 3, 1)
    WebDriverWait(d, WAIT).until(lambda dr: query(dr).get("pos") == "3" and query(dr).get("layer") == "1")
    wait_settled(d)
    WebDriverWait(d, WAIT).until(lambda dr: _outline(dr, "patch_resid_pre") == (2.5, 0.5))
    # a layer x head cell: layer 0, head 2
    click_plotly_cell(d, "patch_z", 2, 0)
    WebDriverWait(d, WAIT).until(lambda dr: query(dr).get("head") == "2" and "layer" not in query(dr))
    wait_settled(d)
    WebDriverWait(d, WAIT).until(lambda dr: _outline(dr, "patch_z") == (1.5, -0.5))
    assert query(d)["pos"] == "3" and not errors(d)
    d.save_screenshot(str(shots / "explorer_patching_click.png"))
    print(json.dumps({"patching_first_draw_s": round(first_draw, 2)}))


def test_attribution_draws_and_a_column_click_selects(served, shots):
    d, base = served["driver"], served["base"]
    load(d, base + "?" + urllib.parse.urlencode(dict(page="attribution", prompt="To be, or not to be")), attention=False)
    for key in ("attr_stacked", "attr_top", "attr_streams", "attr_map"):
        _plot(d, key)
    bars = d.execute_script("return document.querySelectorAll('.st-key-attr_stacked .bars .point').length")
    assert bars > 0
    assert any("logit(" in e.text for e in d.find_elements(By.CSS_SELECTOR, '[data-testid="stMarkdownContainer"]'))
    click_plotly_cell(d, "attr_map", 7, 0)  # row 0 is the embedding: a position only
    WebDriverWait(d, WAIT).until(lambda dr: query(dr).get("pos") == "7")
    wait_settled(d)
    WebDriverWait(d, WAIT).until(lambda dr: _outline(dr, "attr_map") == (6.5, -0.5))
    assert any("position 7" in e.text for e in d.find_elements(By.CSS_SELECTOR, '[data-testid="stMarkdownContainer"]'))
    assert not errors(d)
    d.save_screenshot(str(shots / "explorer_attribution.png"))


def test_latent_thoughts_timeline(served, shots):
    d, base = served["driver"], served["base"]
    if "coconut_add3_coconut" not in served["ckpts"]:
        pytest.skip("data/checkpoints/coconut_add3_coconut is not in this checkout")
    load(d, base + "?ckpt=coconut_add3_coconut&page=thoughts", attention=False)
    gd = _plot(d, "thought_timeline")
    kinds = d.execute_script("return arguments[0].data.map(t => t.type)", gd)
    assert kinds == ["heatmap", "heatmap", "scatter"]
    cells = d.execute_script("return arguments[0].querySelectorAll('.heatmaplayer image, .heatmaplayer .hm').length", gd)
    assert cells >= 2  # both heatmaps painted
    text = d.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text
    assert "1017" in text and ("correct" in text or "wrong" in text)
    assert not errors(d)
    d.save_screenshot(str(shots / "explorer_thoughts.png"))


def test_colour_scale_and_legend(served, shots):
    """"Each panel's max" leaves out the first token's row and column (query 0 -> itself is
    always 1): the scale and the legend differ from "shared 0-1", and the legend says the top."""
    d, base, ckpts = served["driver"], served["base"], served["ckpts"]
    text = "To be, or not to be, that is the question"
    pats = {(l, h): reference_pattern(ckpts["shakespeare_factored_alibi"], text, l)[h] for l in (0, 1) for h in range(4)}
    layer, head = min(pats, key=lambda lh: pats[lh][1:, 1:].max())  # a head whose scale differs most from 0-1
    want = pats[layer, head]
    s = load(d, base + "?" + urllib.parse.urlencode(dict(page="attention", layer=layer, head=head, prompt=text)))
    assert (s["layer"], s["head"]) == (layer, head)
    assert s["scale"] == "auto" and abs(s["zmax"] - want[1:, 1:].max()) < 2e-3 and s["zmax"] < 0.99
    legend = d.find_element(By.CSS_SELECTOR, ".ix-legend").text
    assert f"{s['zmax']:.3f}" in legend and "1.000" not in legend
    auto = canvas_digest(d)
    d.execute_script("document.querySelectorAll('.ix-attn .ix-group')[3].querySelectorAll('button')[1].click()")
    WebDriverWait(d, WAIT).until(lambda dr: (ix_state(dr) or {}).get("scale") == "shared")
    assert ix_state(d)["zmax"] == 1 and "1.000" in d.find_element(By.CSS_SELECTOR, ".ix-legend").text
    assert canvas_digest(d) != auto  # the option changes what is drawn
    WebDriverWait(d, WAIT).until(lambda dr: query(dr).get("scale") == "shared")
    d.save_screenshot(str(shots / "explorer_colour_shared.png"))
    assert not errors(d)


def test_position_ticks_are_readable_on_a_100_token_map(served, shots):
    d, base = served["driver"], served["base"]
    text = "Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds th"
    s = load(d, base + "?" + urllib.parse.urlencode(dict(page="attention", prompt=text)))
    assert s["T"] == 100 and s["font"] >= 10 and s["cell"] * s["tickStep"] >= 12, s
    if s["tickStep"] > 1:  # thinned labels say which position they are, and the note says so
        nth = {2: "2nd", 3: "3rd"}.get(s["tickStep"], f"{s['tickStep']}th")
        assert f"every {nth} token, with its position" in d.find_element(By.CSS_SELECTOR, ".ix-note").text
    d.save_screenshot(str(shots / "explorer_attention_100_tokens.png"))
    assert not errors(d)


def test_compare_titles_clear_of_the_mode_bar(served, shots):
    d, base, ckpts = served["driver"], served["base"], served["ckpts"]
    steps = [str(p) for p in sorted(Path(ckpts["add3_run"]).glob("step_*"))]
    url = base + "?" + urllib.parse.urlencode([("ckpt", "add3_run"), ("page", "compare"), ("nex", "4")]
                                              + [("cmp", s) for s in steps])
    load(d, url, attention=False)
    WebDriverWait(d, WAIT).until(lambda dr: dr.find_elements(By.CSS_SELECTOR, ".st-key-compare_attn_2 .gtitle"))
    wait_settled(d)
    overlaps = d.execute_script("""
        const out = [];
        for (const plot of document.querySelectorAll('[class*="st-key-compare_"] .js-plotly-plot')) {
          const t = plot.querySelector('.gtitle'), m = plot.querySelector('.modebar');
          if (!t || !m) continue;
          const a = t.getBoundingClientRect(), b = m.getBoundingClientRect();
          out.push([t.textContent, a.right > b.left && b.right > a.left && a.bottom > b.top && b.bottom > a.top]);
        }
        return out;""")
    assert len(overlaps) >= 6 and not [t for t, hit in overlaps if hit], overlaps
    d.save_screenshot(str(shots / "explorer_compare_titles.png"))
    assert not errors(d)
