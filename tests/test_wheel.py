"""The package as a user installs it: build a wheel from the source files (what git sees), install it into a clean virtual
environment, ask about a real photo with the installed `facellm` command, then serve and load the chat page.

Slow (a wheel build, a venv, a model load and a server start). Offline: the wheel installs with ``--no-index``
and ``--no-deps``; the new venv reuses this environment's installed packages through a path file, added after the
install so pip never sees (or touches) them, and imports facellm only from the wheel (checked). Everything the
installed facellm writes goes to a temporary ``FACELLM_HOME`` whose read-only assets link to the real ones.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from facellm.tools.assets import home
from facellm.tools.photos import photo

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], *, env: dict | None = None, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _source_copy(dest: Path) -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout: the wheel is built from the files git sees")
    # the working tree as git sees it: tracked files and new ones not ignored (not build/, .venv/, caches)
    files = [p for p in subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                       cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0") if p]
    for rel in files:
        src = ROOT / rel
        if src.is_file():  # a tracked file deleted in the working tree is not shipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return files


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """{"venv", "env", "wheel", "log"}: a clean venv with the freshly built wheel installed."""
    real_home = home()
    if not (real_home / "photos").is_dir() or not (real_home / "lm").is_dir():
        pytest.skip(f"the face models and default LM are not set up in {real_home}: run `facellm setup`")
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist, venv, fhome = tmp / "src", tmp / "dist", tmp / "venv", tmp / "home"
    _source_copy(src)
    # build as a user's `pip wheel .` does, with this environment's setuptools (no download)
    build = _run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index",
                  str(src), "-w", str(dist)], cwd=tmp)
    wheel = next(dist.glob("facellm-*.whl"))
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    vpy = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "--quiet", "--no-deps", "--no-index",
          str(wheel)], cwd=tmp)
    # the dependencies: this environment's site-packages, after the venv's own (so facellm comes from the wheel)
    purelib = _run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout
    Path(purelib.strip(), "zz_facellm_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (fhome / "models").mkdir(parents=True)
    for entry in [*real_home.iterdir(), *(real_home / "models").iterdir()]:
        # the face models, photos and LM are shared read-only; the default FaceLLM folder is rebuilt from the
        # wheel's shipped weights; no gallery
        rel = entry.relative_to(real_home)
        if rel.name not in ("models", "gallery.sqlite") and not rel.name.startswith("facellm-"):
            (fhome / rel).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HF_HUB_OFFLINE="1", FACELLM_HOME=str(fhome), PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    return {"venv": venv, "env": env, "wheel": wheel, "log": build.stdout + build.stderr, "tmp": tmp}


def test_wheel_builds_without_setuptools_warnings(installed):
    log = installed["log"]
    assert "absent from the `packages` configuration" not in log, log
    noisy = [ln for ln in log.splitlines() if re.search(r"Warning\b|deprecated", ln)
             and "byte-compiling is disabled" not in ln]
    assert not noisy, "\n".join(noisy)


def test_wheel_holds_the_data_the_code_reads(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for needed in ("facellm/serve/web/index.html", "facellm/serve/web/app.js",
                   "facellm/pretrained/default/model.safetensors",
                   "facellm/pretrained/default/lora/adapter_model.safetensors",
                   "facellm/train/recipes/default.toml", "facellm/tools/data/verify_calibration.json",
                   "facellm/tools/data/canonical_face.json", "facellm/data_gen/offline_notes.json"):
        assert needed in names, needed
    assert not any(n.startswith(("tools/", "serve/", "eval/", "data_gen/", "tests/")) for n in names)
    meta = zipfile.ZipFile(installed["wheel"]).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta


def test_installed_facellm_comes_from_the_wheel(installed):
    venv, env = installed["venv"], installed["env"]
    where = _run([str(venv / "bin" / "python"), "-c", "import facellm, facellm.serve.webpage as w; "
                  "print(facellm.__file__); print(w.WEB)"], env=env, cwd=installed["tmp"]).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where
    assert Path(where[1], "index.html").is_file()


def test_installed_ask_answers_about_a_real_photo(installed):
    venv, env = installed["venv"], installed["env"]
    facellm = str(venv / "bin" / "facellm")
    proc = _run([facellm, "ask", str(photo("group")), "How many faces are there?", "--agent", "--no-model"],
                env=env, cwd=installed["tmp"])
    assert "6 faces" in proc.stdout, proc.stdout
    proc = _run([facellm, "ask", str(photo("astronaut")), "Describe the person's face.", "--max-new-tokens", "24"],
                env=env, cwd=installed["tmp"])
    assert proc.stdout.strip(), proc.stderr
    assert "untrained initialisation" not in proc.stderr  # the wheel's shipped weights were used
    built = Path(env["FACELLM_HOME"], "models", "facellm-default", "model.safetensors")
    assert built.is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_installed_server_serves_the_chat_page(installed):
    venv, env = installed["venv"], installed["env"]
    port = _free_port()
    log = installed["tmp"] / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(venv / "bin" / "facellm"), "serve", "--engine", "transformers", "--port",
                                   str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=installed["tmp"])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready in 300 s:\n" + log.read_text()
            time.sleep(1)
        page = httpx.get(f"{base}/", timeout=30)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page.text)
        assert assets, page.text
        for asset in assets:
            r = httpx.get(f"{base}/{asset.lstrip('/')}", timeout=30)
            assert r.status_code == 200 and len(r.content) > 100, asset
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
