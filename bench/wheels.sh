#!/usr/bin/env bash
# Download into .whl/ the wheels of bench/gpu-wheels.txt for each Python version given (x86-64 manylinux),
# --no-deps (the list names every dependency). Default: 3.12 (the GPU host) and 3.11 (the rehearsal,
# `bench/device.sh --tiny`, on this repo's CPU machines). Usage: bench/wheels.sh [3.12 3.11 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-python3 -m pip}
plats="--platform manylinux2014_x86_64 --platform manylinux1_x86_64"
for n in 39 38 35 34 31 28 27 24 17 5; do plats="$plats --platform manylinux_2_${n}_x86_64"; done
mkdir -p .whl
for py in "${@:-3.12 3.11}"; do
  for version in $py; do
    $PIP download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp $plats \
      -d .whl -r bench/gpu-wheels.txt
  done
done
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
