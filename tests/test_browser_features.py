"""The Features page in real Chromium (the server, browser and probes of tests/test_browser.py):
the page shows the latent the URL names, equal to the dashboard store on disk; a click on a table row, on a decoder neighbour and on
an active feature opens that latent's dashboard and the URL follows; a click on a prompt token
selects the position whose active features are listed; steering / ablation redraw. No error
element ever appears. `benchmarks/bench_features_page.py` times the click -> dashboard.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.parse
from pathlib import Path

import pytest

import interp
from app_fixtures import make_checkpoints  # tests/ is on sys.path (rootdir conftest)
from interp import features
from test_browser import (WAIT, errors, install_probes, make_driver, query, shots, start_server,  # noqa: F401
                          stop_server, wait_http, wait_settled, free_port, _have_browser, CHROMIUM, CHROMEDRIVER)
from selenium.webdriver import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

PROMPT = "To be, or not to be, that is the question"


def features_root(root: Path, d_sae: int = 64) -> Path:
    """Fixture checkpoints with a (random, TopK) dictionary next to shakespeare_vanilla."""
    import torch

    ck = make_checkpoints(root, names=("shakespeare_vanilla",), broken=False)["shakespeare_vanilla"]
    model, _ = interp.load(ck)
    torch.manual_seed(0)
    sae = features.make(dict(arch="topk", k=6, d_in=model.cfg.d_model, d_sae=d_sae, hook_name="blocks.0.hook_resid_post",
                             model=features.model_identity(model, str(ck))))
    path = sae.save(ck / "dictionaries" / "resid0")
    features.dashboard(path, ck, tokens=8000, progress=False)  # the page opens it from disk (AppTest covers computing)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    assert _have_browser, f"CI is set but {CHROMIUM} / {CHROMEDRIVER} are missing: run `make browser-deps`"
    root = tmp_path_factory.mktemp("browser_features")
    sae_dir = features_root(root)
    port = free_port()
    log = open(root / "streamlit.log", "w")
    proc = start_server(root, port, log)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    driver = None
    try:
        wait_http(port, proc)
        driver = make_driver(profile)
        yield dict(driver=driver, base=f"http://127.0.0.1:{port}/", sae=sae_dir, log=root / "streamlit.log")
    finally:
        if driver is not None:
            driver.quit()
        stop_server(proc)
        log.close()
        shutil.rmtree(profile, ignore_errors=True)


def url(base: str, **params) -> str:
    return base + "?" + urllib.parse.urlencode(dict(dict(ckpt="shakespeare_vanilla", page="features", prompt=PROMPT),
                                                    **params))


def header(driver) -> str:
    """The shown latent's heading ("Latent 7"), or ""."""
    return driver.execute_script(
        "const h = [...document.querySelectorAll('h4')].find(e => e.innerText.startsWith('Latent ')); "
        "return h ? h.innerText.trim() : ''")


def open_page(driver, address: str, latent: int, timeout: float = WAIT * 3) -> None:
    driver.get(address)
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: header(d) == f"Latent {latent}" and d.find_elements(By.CSS_SELECTOR, ".ix-strip-tok") or errors(d))
    assert not errors(driver), errors(driver)
    install_probes(driver)
    wait_settled(driver)


def click(driver, css: str) -> None:
    el = driver.find_element(By.CSS_SELECTOR, css)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    el.click()


def wait_latent(driver, latent: int) -> None:
    WebDriverWait(driver, WAIT, poll_frequency=0.02).until(
        lambda d: (query(d).get("latent") == str(latent) or latent == 0) and header(d) == f"Latent {latent}" or errors(d))
    wait_settled(driver)
    assert not errors(driver), errors(driver)


def table_row(driver, row: int) -> None:
    """A real click on the selection box of row `row` of the latent table (a canvas grid)."""
    grid = driver.find_element(By.CSS_SELECTOR, ".st-key-feat_table [data-testid='stDataFrameResizable']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", grid)
    h = grid.size["height"]
    ActionChains(driver).move_to_element_with_offset(grid, 14 - grid.size["width"] / 2,
                                                     35 + 35 * row + 17 - h / 2).click().perform()


def test_the_page_shows_the_latent_the_url_names(served, shots):
    d, base = served["driver"], served["base"]
    open_page(d, url(base, latent="5"), 5)
    store = features.open_dashboards(served["sae"] / "dashboard")
    dash = store.latent(5)
    lines = d.execute_script("return [...document.querySelectorAll('.fx-top .fx-ctx')].map(e => e.innerText)")
    assert dash.top and len(lines) == len(dash.top)
    for line, c in zip(lines, dash.top):  # the value, then the context's text (newlines shown as ⏎)
        assert line.replace("\u00a0", " ").endswith("".join(c.pieces).replace("\n", "⏎")), (line, c.pieces)
    shaded = d.execute_script("return document.querySelector('.fx-top .fx-ctx span.at').style.background")
    assert "rgba(255, 127, 14" in shaded or "rgb(255, 127, 14)" in shaded  # the top token at full shade
    d.save_screenshot(str(shots / "features_page.png"))


def test_clicks_open_a_latent_and_the_url_follows(served, shots):
    d, base = served["driver"], served["base"]
    open_page(d, url(base, latent="5"), 5)
    store = features.open_dashboards(served["sae"] / "dashboard")
    nb = store.latent(5).neighbours[0][0]
    click(d, ".st-key-feat_nb_0 button")
    wait_latent(d, nb)
    table_row(d, 3)
    wait_latent(d, 3)
    d.save_screenshot(str(shots / "features_table_click.png"))
    # a prompt token: its position's active features, then one of them
    d.execute_script("const t = document.querySelectorAll('.ix-strip-tok')[4]; t.scrollIntoView({block: 'center'}); t.click()")
    WebDriverWait(d, WAIT).until(lambda dr: query(dr).get("pos") == "4")
    wait_settled(d)
    assert "Active at position 4" in d.find_element(By.TAG_NAME, "body").text
    first = d.find_element(By.CSS_SELECTOR, ".st-key-feat_active_0 button").text.split(" · ")[0]
    click(d, ".st-key-feat_active_0 button")
    wait_latent(d, int(first))


def test_steering_and_ablation_redraw(served, shots):
    d, base = served["driver"], served["base"]
    open_page(d, url(base, latent="5", n="8"), 5)
    body = d.find_element(By.TAG_NAME, "body").text
    assert "α = " in body and "KL(before ‖ after)" in body
    d.execute_script("[...document.querySelectorAll('.st-key-w-fmode label')].find(l => l.innerText.startsWith('ablate')).click()")
    WebDriverWait(d, WAIT).until(lambda dr: query(dr).get("fmode") == "ablate")
    WebDriverWait(d, WAIT).until(lambda dr: "latent 5 zeroed" in dr.find_element(By.TAG_NAME, "body").text or errors(dr))
    wait_settled(d)
    assert not errors(d)
    d.save_screenshot(str(shots / "features_ablation.png"))
