#!/usr/bin/env bash
# The benchmarks' peers that the GPU machine's image lacks, as wheels for its Python (3.12, x86_64),
# into wheels/ (git-ignored): carry wheels/ with the scripts/gpu_check.sh call, which installs them
# there without a network. timm and torchvision are in the image already (the device tool's KINDS.md).
#   scripts/fetch_peer_wheels.sh            run here, where pip reaches PyPI
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
# kornia needs kornia_rs (compiled); the others are pure Python. No dependencies are fetched: the
# image has their torch, triton and numpy.
PEERS=(liger-kernel kornia kornia_rs triton-augment)
platforms=()
for platform in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$platform")
done
python -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
  "${platforms[@]}" -d wheels "${PEERS[@]}"
ls -l wheels
