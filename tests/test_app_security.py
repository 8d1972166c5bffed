"""The explorer is safe by default: it listens on 127.0.0.1 with Streamlit's usage statistics
off however it is started (`streamlit run` from the repository, `make explore`, `interp
explore`), and opens checkpoints only inside the allowed roots (data/, runs/, the listed roots,
`--allow-root`, the `--ckpt` it was started on), refusing any other path, typed or in the URL,
with one message whether or not it exists (symlinks and `..` resolved first)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_fixtures import make_checkpoint  # tests/ is on sys.path (rootdir conftest)

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app" / "explorer.py")


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """root/ (the listed root) with a checkpoint, outside/ with a copy of it, a symlink from
    root/ to outside/, and a path that does not exist."""
    base = tmp_path_factory.mktemp("security")
    root, outside = base / "root", base / "outside"
    ck = make_checkpoint(root, "induction_attn_only")
    shutil.copytree(ck, outside / "secret_ckpt")
    (root / "link").symlink_to(outside / "secret_ckpt")
    return dict(root=root, inside=ck, outside=outside / "secret_ckpt", missing=outside / "no_such_dir",
                link=root / "link", dotdot=root / ".." / "outside" / "secret_ckpt")


@pytest.fixture
def env(layout, monkeypatch):
    monkeypatch.setenv("INTERP_CHECKPOINT_ROOT", str(layout["root"]))
    monkeypatch.setattr(sys, "argv", ["explorer.py"])
    return layout


def _message(text: str, argv=()) -> str:
    from app import data

    with pytest.raises(data.AppError) as e:
        data.check_dir(text, list(argv))
    return str(e.value)


def test_paths_outside_the_roots_are_refused_alike(env):
    from app import data

    assert data.check_dir(str(env["inside"]), []) == env["inside"].resolve()
    said = {k: _message(str(env[k])) for k in ("outside", "missing", "link", "dotdot")}
    # one message, the typed text aside: nothing tells an existing directory from a missing one
    assert len({m.replace(str(env[k]), "PATH") for k, m in said.items()}) == 1, said
    assert "among those this explorer may open" in said["outside"] and "--allow-root" in said["outside"]
    assert str(env["outside"].parent) not in said["link"]  # the symlink's target is never shown
    # a relative path climbing out of the repository is refused the same way
    rel = os.path.relpath(env["outside"], REPO)
    assert _message(rel).replace(rel, "PATH") == said["missing"].replace(str(env["missing"]), "PATH")


def test_allow_root_and_the_environment_open_more(env, monkeypatch):
    from app import data

    argv = ["--allow-root", str(env["outside"].parent)]
    assert data.check_dir(str(env["outside"]), argv) == env["outside"].resolve()
    assert data.check_dir(str(env["link"]), argv) == env["outside"].resolve()
    inside_missing = _message(str(env["missing"]), argv)  # inside an allowed root, a missing path may say so
    assert inside_missing.startswith("No such checkpoint directory: ") and "may open" not in inside_missing
    assert "secret_ckpt" in data.discover(data.checkpoint_roots(argv))  # an allowed root is listed too
    monkeypatch.setenv("INTERP_CHECKPOINT_ROOT", os.pathsep.join([str(env["root"]), str(env["outside"].parent)]))
    assert data.check_dir(str(env["outside"]), []) == env["outside"].resolve()
    # the --ckpt the server was started on is the operator's choice: it opens
    assert data.check_dir(str(env["outside"]), ["--ckpt", str(env["outside"])]) == env["outside"].resolve()
    monkeypatch.delenv("INTERP_CHECKPOINT_ROOT")
    assert data.check_dir("data/checkpoints/add3_none", []) == (REPO / "data/checkpoints/add3_none").resolve()


def test_a_listed_symlink_opens_by_name_not_as_a_path(env):
    from app import data

    assert data.discover()["link"] == env["link"]  # what the operator put in the root is listed
    assert not _errors(_run({"ckpt": "link"}))
    assert "among those this explorer may open" in _message(str(env["link"]))


def _run(url: dict) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    at.query_params.update(url)
    return at.run()


def _errors(at) -> list[str]:
    assert not at.exception, [e.value for e in at.exception]
    return [e.value for e in at.error]


def test_the_ckpt_url_parameter_is_checked(env):
    seen = {}
    for k in ("outside", "missing", "link", "dotdot"):
        errs = _errors(_run({"ckpt": str(env[k])}))
        assert any("among those this explorer may open" in e for e in errs), errs
        seen[k] = tuple(e.replace(str(env[k]), "PATH") for e in errs)
    assert len(set(seen.values())) == 1, seen
    assert not _errors(_run({"ckpt": str(env["inside"])}))  # a typed path inside the root opens


def test_the_typed_path_and_compare_are_checked(env):
    at = _run({"ckpt": "induction_attn_only"})
    assert not _errors(at)
    at.text_input(key="w.ckpt_path").set_value(str(env["outside"])).run()
    errs = _errors(at)
    assert any("among those this explorer may open" in e for e in errs), errs
    at = _run({"ckpt": "induction_attn_only", "page": "compare", "cmp": ["induction_attn_only", str(env["outside"])]})
    errs = _errors(at)
    assert any("among those this explorer may open" in e for e in errs), errs


# ------------------------------------------------------------------ how it is served
def test_interp_explore_binds_localhost_unless_told(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from interp import cli

    calls = []
    monkeypatch.setattr(cli.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    runner = CliRunner()
    assert runner.invoke(cli.app, ["explore"]).exit_code == 0
    cmd = calls[-1]
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"
    assert runner.invoke(cli.app, ["explore", "runs/x", "--host", "0.0.0.0", "--allow-root", str(tmp_path)]).exit_code == 0
    cmd = calls[-1]
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--") + 1:] == ["--ckpt", "runs/x", "--allow-root", str(tmp_path)]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_explore_binds_localhost_unless_told():
    def dry(*extra) -> str:
        return subprocess.run(["make", "-n", "explore", *extra], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout

    out = dry()
    assert "--server.address 127.0.0.1" in out and "--browser.gatherUsageStats false" in out
    out = dry("HOST=0.0.0.0", "ALLOW_ROOT=/srv/ckpts")
    assert "--server.address 0.0.0.0" in out and "--allow-root /srv/ckpts" in out


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) listening on `port`."""
    out = set()
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(f):
            continue
        for line in open(f).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:
                out.add(addr)
    return out


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc/net/tcp")
def test_plain_streamlit_run_from_the_repo_is_local_with_no_usage_stats():
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/explorer.py", "--server.port", str(port),
                             "--server.headless", "true"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"streamlit exited with {proc.returncode}"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
        assert _listening(port) == {"0100007F"}, _listening(port)  # 127.0.0.1 only, no 0.0.0.0 / ::
    finally:
        proc.terminate()
        proc.wait(20)
    shown = subprocess.run([sys.executable, "-c", "from streamlit import config; config.get_config_options(); "
                            "print(config.get_option('server.address'), config.get_option('browser.gatherUsageStats'))"],
                           cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert shown == ["127.0.0.1", "False"]
