#!/usr/bin/env bash
# The whole GPU check in one command, on a machine with one NVIDIA GPU, torch, CuPy (NVRTC) and
# transformers; no network, no build step, nothing installed:
#     bash gpu/run_gpu_checks.sh OUT_DIR
# Runs the GPU tests (pytest tests/gpu, CUDA variants), the bit-exactness check (gpu.check) and
# the latency benchmark (gpu.bench), each under `timeout` inside one hard budget
# (GPU_CHECK_BUDGET_S, default 470 s), and writes 8 files into OUT_DIR: env.txt, summary.txt,
# pytest.log, check.log, check.json, bench.log, bench.json, bench.md.
set -u
OUT=${1:?usage: bash gpu/run_gpu_checks.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
BUDGET=${GPU_CHECK_BUDGET_S:-470}
START=$(date +%s)
STATUS=0
: > "$OUT/summary.txt"

step() {  # step NAME CAP_SECONDS COMMAND...: run within min(CAP, what is left of the budget)
  local name=$1 cap=$2 left t0 rc
  shift 2
  left=$((BUDGET - ($(date +%s) - START)))
  ((left < cap)) && cap=$left
  if ((cap < 30)); then
    echo "== $name: not run, the time budget is spent" | tee -a "$OUT/summary.txt"
    STATUS=1
    return
  fi
  echo "== $name (at most ${cap}s): $*"
  t0=$(date +%s)
  timeout --kill-after=10 "$cap" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  ((rc == 124 || rc == 137)) && echo "== $name: TIMED OUT" | tee -a "$OUT/$name.log"
  echo "== $name: exit $rc after $(($(date +%s) - t0))s" | tee -a "$OUT/summary.txt"
  ((rc != 0)) && STATUS=1
}

{
  date -u
  nvidia-smi || true
  python3 - <<'PY'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for m in ("cupy", "transformers", "numpy", "numba", "safetensors"):
    try:
        print(m, __import__(m).__version__)
    except Exception as exc:
        print(m, "MISSING", exc)
PY
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step pytest 150 python3 -m pytest -q -rs tests/gpu -k "not emu"
step check 150 python3 -m gpu.check --out "$OUT"
step bench 280 python3 -m gpu.bench --out "$OUT"

echo "== done in $(($(date +%s) - START))s; results in $OUT:"
cat "$OUT/summary.txt"
ls -l "$OUT"
exit $STATUS
