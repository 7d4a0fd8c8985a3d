#!/usr/bin/env bash
# Issue 16's GPU checks as one prepared command for a lent CUDA machine (`make device-check`, or the
# `device` tool: `bash tests/perf/device_check.sh`). Runs in a few minutes on one GPU:
#   1. the CIFAR-10 DDPM++ training step in bf16 (channels_last, TF32): images/s, achieved FLOP/s,
#      MFU against the device's bf16 peak, and the ratio against a bare PyTorch loop (target:
#      MFU >= 35 %, ratio >= 0.95) — tests/perf/test_gpu_efficiency.py;
#   2. the CUDA precision test (bf16 autocast keeps fp32 master weights) — tests/test_precision.py.
# Logs, the device description and pytest-benchmark's JSON go to $OUT (default /tmp/device-check).
# Needs python3 with CUDA torch, pytest, pytest-benchmark, numpy, scipy, pyyaml, tqdm (the H200 image
# has them all). Exit status: 0 when every check passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/device-check}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{ nvidia-smi || true; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA DEVICE')"; } > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
rc=0
"$PY" -m pytest -q -m perf tests/perf/test_gpu_efficiency.py --benchmark-only \
  --benchmark-json="$OUT/gpu_perf.json" -rs 2>&1 | tee "$OUT/gpu_perf.log" || rc=1
"$PY" -m pytest -q tests/test_precision.py -rs 2>&1 | tee "$OUT/precision.log" || rc=1
grep -q "NO CUDA DEVICE" "$OUT/device.txt" && { echo "device-check: no CUDA device, nothing was measured"; rc=1; }
echo "device-check: exit $rc (outputs in $OUT)"
exit $rc
