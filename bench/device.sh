#!/usr/bin/env bash
# diffbus's GPU measurement, one command, on a GPU host with no network (bench/README.md):
#   bench/device.sh            on the GPU host, .whl/ (make bench-gpu-wheels) beside the checkout
#   bench/device.sh --tiny     the same steps on this CPU, the tiny models: the rehearsal
# Installs .whl/ into a temp target (--no-index --no-deps), prints the GPU, driver, torch and diffusers
# versions, runs bench/gpu.py (every family, each in its own process with its time budget) and writes
# gpu-<gpu>.json, its output (device-<gpu>.log) and the stacks' logs (stacks-<gpu>.log) to $OUT, or
# bench/results/ when $OUT is unset. PYTHON: the host's Python with torch (default python3).
# BUDGET_S: seconds for all the families together (default 360: with the install and
# a step begun in time overrunning, the whole run ends within 8 minutes; --tiny 1800: only a cap,
# as a rehearsal runs every step).
# FAMILIES: which (default all: sd15 sdxl sd3 flux).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TINY=()
[ "${1:-}" = --tiny ] && TINY=(--tiny)
RESULTS=${OUT:-$ROOT/bench/results}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/diffbus-device-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$RESULTS"
ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/: run 'make bench-gpu-wheels' where the package index is reachable"; exit 2; }

if [ ${#TINY[@]} -gt 0 ]; then
  # The rehearsal: a Python with only what the GPU host's image holds (linked from .venv), so a wheel
  # missing from .whl/ fails here as it would there.
  test -x .venv/bin/python || { echo "--tiny needs this checkout's .venv (make install)"; exit 2; }
  { read -r PY; read -r HOST_SITE; } < <(.venv/bin/python bench/hostlike.py "$WORK/host")
  PIP=(.venv/bin/python -m pip)
  BUDGET_S=${BUDGET_S:-1800}
else
  PY=${PYTHON:-python3}
  HOST_SITE=
  PIP=("$PY" -m pip)
  BUDGET_S=${BUDGET_S:-360}
fi
"${PIP[@]}" install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
  --target "$WORK/site" --find-links .whl -r bench/gpu-wheels.txt || { echo "installing .whl/ failed"; exit 3; }
export PYTHONPATH="$WORK/site${HOST_SITE:+:$HOST_SITE}" PATH="$WORK/site/bin:$PATH" PYTHONNOUSERSITE=1 \
  PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
"$PY" - <<'EOF' || exit 4
import platform, torch, diffusers, transformers
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"diffusers {diffusers.__version__}, transformers {transformers.__version__}")
print("device:", torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA)")
# Every service's modules, so a missing wheel shows now, not in a stack's log.
import importlib
for m in ("services.cli.up", "services.api.app", "services.gpu_worker.service", "services.upscaler.service",
          "services.notifier.service", "services.projector.service", "services.storage.s3"):
    importlib.import_module(m)
EOF

GPU=$("$PY" -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', (torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu').lower()).strip('-'))")
NAME=gpu-$GPU
[ ${#TINY[@]} -gt 0 ] && NAME=gpu-tiny-$GPU
: > "$RESULTS/stacks-$GPU.log"
read -ra FAMILY_ARGS <<< "${FAMILIES:-}"
BENCH_RESULTS_DIR=$RESULTS "$PY" bench/gpu.py "${TINY[@]}" ${FAMILY_ARGS:+--families "${FAMILY_ARGS[@]}"} \
  --budget-s "$BUDGET_S" --name "$NAME" \
  --stack-logs "$RESULTS/stacks-$GPU.log" 2>&1 | tee "$RESULTS/device-$GPU.log"
