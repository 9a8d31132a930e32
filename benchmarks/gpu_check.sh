#!/usr/bin/env bash
# The trainer's CUDA path on a fresh GPU machine, in under 8 minutes from a fresh checkout:
#   1. install (as .ci/run does, keeping a CUDA torch the machine already has, else PyPI's
#      default Linux wheel, which is a CUDA build), and check that torch sees the GPU;
#   2. the attention equality and causality tests on CUDA (FlexAttention against the dense
#      reference, fp32 and bf16, with and without the title mask);
#   3. tokens/s and MFU of sweeps/base.yaml and sweeps/mainrun_best.yaml at their (the mainrun)
#      shape for a bounded number of steps, eager, then mainrun_best with torch.compile;
#   4. local and sparse attention against dense causal SDPA at T = 1024..8192.
# Every step's output goes to the terminal and, when $OUT is set, to a file under it. A step that
# fails or runs out of time is reported and the next one still runs; the exit code is 1 if any
# step failed.
#
#   bash benchmarks/gpu_check.sh [--cpu] [--no-install]
#     --cpu          a smoke check on a CPU: tiny shapes, few steps, no install, no compile run
#     --no-install   use $PYTHON (default python3) as it is
#   DATA=titles.csv  the titles file (default: ../shared/data or shared/data hacker_news.csv)
#   STEPS=60         training steps per MFU run (the first 15 are left out of the timing)
set -uo pipefail
cd "$(dirname "$0")/.."

smoke=0 install=1
for arg in "$@"; do
  case "$arg" in
    --cpu) smoke=1 install=0 ;;
    --no-install) install=0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (allowed: --cpu, --no-install)" >&2; exit 2 ;;
  esac
done
out=${OUT:-}
[ -n "$out" ] && mkdir -p "$out"
py=${PYTHON:-python3}
failed=()

# run NAME SECONDS CMD...: run one step under a time limit, its output also in $OUT/NAME.log.
run() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local log=/dev/null
  [ -n "$out" ] && log="$out/$name.log"
  local start=$SECONDS
  PYTHONUNBUFFERED=1 timeout "$limit" "$@" 2>&1 | tee "$log"
  local code=${PIPESTATUS[0]}
  echo "== $name: exit $code after $((SECONDS - start))s"
  [ "$code" -eq 0 ] || failed+=("$name (exit $code)")
}

if [ "$install" -eq 1 ]; then
  # --system-site-packages: a CUDA torch already in the image satisfies the pin and stays.
  run install 240 bash -c "python3 -m venv --system-site-packages .venv &&
    .venv/bin/pip install 'torch>=2.4,<2.15' -e '.[dev]'"
  py=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's trainer, installed or not

data=${DATA:-}
for candidate in ../shared/data/hacker_news.csv shared/data/hacker_news.csv; do
  [ -z "$data" ] && [ -f "$candidate" ] && data=$candidate
done
if [ -z "$data" ] || [ ! -f "$data" ]; then
  echo "gpu_check.sh: no titles file: set DATA to a CSV with a 'title' column" >&2
  exit 2
fi

if [ "$smoke" -eq 1 ]; then
  device=cpu tests="on_device and cpu" steps=6
  mfu_args=(--smoke) attention_args=(--T 256 --reps 1)
else
  device=cuda tests="on_device and cuda" steps=${STEPS:-60}
  mfu_args=(--warmup 15) attention_args=(--T 1024 2048 4096 8192 --reps 5 --no-memory)
  run device 60 "$py" -c "import torch; assert torch.cuda.is_available(), 'torch ' + \
torch.__version__ + ' sees no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
  [ ${#failed[@]} -eq 0 ] || { echo "gpu_check.sh: no usable CUDA torch: ${failed[*]}" >&2; exit 1; }
fi

run attention_tests 240 "$py" -m pytest tests/test_attention.py -q -p no:cacheprovider -k "$tests"
mfu_out=()
[ -n "$out" ] && mfu_out=(--out "$out/mfu_eager")
run mfu_eager 180 "$py" benchmarks/trainer_mfu.py --device "$device" --data "$data" \
  --steps "$steps" "${mfu_args[@]}" "${mfu_out[@]}"
if [ "$smoke" -eq 0 ]; then  # a CPU compiles C++ for minutes: the smoke check leaves this out
  [ -n "$out" ] && mfu_out=(--out "$out/mfu_compile")
  run mfu_compile 150 "$py" benchmarks/trainer_mfu.py --device "$device" --data "$data" \
    --steps "$steps" "${mfu_args[@]}" "${mfu_out[@]}" --config sweeps/mainrun_best.yaml \
    --set train.compile=true
fi
run attention_speed 180 "$py" benchmarks/attention.py --device "$device" "${attention_args[@]}"

if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_check.sh: failed: ${failed[*]}"
  exit 1
fi
echo "gpu_check.sh: every step passed"
