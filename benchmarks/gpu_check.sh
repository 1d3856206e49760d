#!/usr/bin/env bash
# GPU check of the kernels, run from the project root on a CUDA machine where the project is not
# installed (layerbudget.* is mapped through a temporary folder of links):
#   bash benchmarks/gpu_check.sh sweep OUT   # kernel tests on CUDA, then launch-config sweeps (data for kernels/configs.py)
#   bash benchmarks/gpu_check.sh quick OUT   # kernel tests, the kernel bench at 8192x8192 and 8192x28672 (every
#                                            # format), the Llama-block bench, the targets table
#                                            # (benchmarks/kernel_targets.py) and the dispatch votes of the
#                                            # headline rows (benchmarks/fit_dispatch.py), all within
#                                            # GPU_CHECK_SECONDS (default 230) from the start
#   bash benchmarks/gpu_check.sh check OUT   # quick, then the other Llama and the MiniLM shapes, more M at
#                                            # 4096x4096 and the dispatch thresholds fitted to the crossovers
#                                            # (benchmarks/fit_dispatch.py)
# Kernel tests that fail are rerun with LAYERBUDGET_INLINE_PTX=0; when that passes, the benchmarks use that build.
# Every step has its own time limit, so one that hangs cannot eat the others' time: up to the Llama block a step
# takes at most its share of GPU_CHECK_SECONDS and leaves the later steps theirs (a step left under 5 s is skipped,
# and says so); check and sweep add their own steps after that. The files land in OUT.
set -uo pipefail
mode=${1:?sweep, quick or check}
case "$mode" in sweep|quick|check) ;; *) echo "gpu_check: mode must be sweep, quick or check, not '$mode'" >&2; exit 2;; esac
out=${2:?output folder}
t0=${EPOCHREALTIME:-}  # microseconds from here (bash >= 5; else whole seconds of SECONDS)
t0=${t0/[.,]/}
# elapsed: whole seconds since the script started (SECONDS counts wall-clock second boundaries crossed instead,
# a second early when the start falls late in a second)
elapsed() {
  if [ -n "$t0" ]; then local t=${EPOCHREALTIME/[.,]/}; echo $(((t - t0) / 1000000)); else echo "$SECONDS"; fi
}
total=${GPU_CHECK_SECONDS:-230}
case "$total" in ''|*[!0-9]*) echo "gpu_check: GPU_CHECK_SECONDS must be a whole number of seconds, not '$total'" >&2; exit 2;; esac
# limit CAP RESERVE: seconds for the next step, at most CAP % of the total, leaving RESERVE % of it for later steps
limit() {
  local cap=$((total * $1 / 100)) left=$((total - $(elapsed) - total * $2 / 100))
  echo $((left < cap ? left : cap))
}
exec 3>&1  # the script's own output, for notes from steps whose output goes to files
# run NAME SECONDS COMMAND...: COMMAND under timeout, or a note that NAME had no time left
run() {
  local name=$1 secs=$2; shift 2
  if [ "$secs" -lt 5 ]; then echo "$name: skipped, no time left of GPU_CHECK_SECONDS=$total" >&3; return 124; fi
  timeout "$secs" "$@"
}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
shim=$(mktemp -d)
mkdir -p "$shim/layerbudget"
for d in kernels profiles evaluators search experiments; do ln -s "$root/$d" "$shim/layerbudget/$d"; done
for f in "$root"/layerbudget/*.py; do ln -s "$f" "$shim/layerbudget/"; done
export PYTHONPATH="$shim" PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
cd "$root"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
start=$(elapsed)
# one test at a time to each of 14 workers (pyproject's --dist loadfile would keep each file on one worker)
tests="python3 -m pytest -q -n 14 --dist load -o cache_dir=$shim/pytest-cache tests/kernels"
# the compile-only checks (every variant built for sm_90, the static instruction budgets) need no GPU and pass in CI:
# left out here (about 40 s and 20 s on one core of the CI machine, time the CUDA tests need)
run tests "$(limit 45 55)" $tests --maxfail=20 --deselect tests/kernels/test_kernels_aot.py::test_kernels_compile_for_sm90_without_a_gpu \
  --deselect tests/kernels/test_kernels_sass.py::test_kernels_stay_within_their_instruction_budget > "$out/tests.txt" 2>&1
rc=$?
tail -12 "$out/tests.txt" | cut -c1-300
if [ $rc -eq 1 ]; then
  # failures: rerun them with the kernels built from plain Triton (the interpreter's code, no inline PTX);
  # if that passes, the PTX is at fault and the benchmarks time the plain build (the CSVs' inline_ptx column says so)
  LAYERBUDGET_INLINE_PTX=0 run "tests without inline PTX" "$(limit 20 45)" $tests --last-failed \
    > "$out/tests-no-ptx.txt" 2>&1
  rc=$?
  tail -4 "$out/tests-no-ptx.txt" | cut -c1-300
  if [ $rc -eq 0 ]; then
    export LAYERBUDGET_INLINE_PTX=0
    echo "kernel tests fail with inline PTX and pass without: benchmarks run LAYERBUDGET_INLINE_PTX=0" | tee -a "$out/gpu.txt"
  fi
fi
echo "tests: $(($(elapsed) - start)) s"
bench="python3 -m layerbudget.kernels.bench --jobs 14"
if [ "$mode" = sweep ]; then
  timeout 160 $bench --sweep --shapes 8192x8192 --ms 1,16,256 --formats w4g128 --out "$out/sweep-w4.csv" 2>&1 | grep -v "^  " | tail -8
  timeout 80 $bench --sweep --quick --kernels gemv --shapes 8192x8192 --ms 1 \
    --formats w3g128,w2g64,w8g128,2:4,2:4+w4g64 --out "$out/sweep-gemv.csv" 2>&1 | grep -v "^  " | tail -8
  timeout 60 $bench --sweep --quick --kernels tc --shapes 8192x8192 --ms 16 \
    --formats w2g64,2:4,2:4+w4g64 --out "$out/sweep-tc.csv" 2>&1 | grep -v "^  " | tail -8
else
  # the headline shapes, the Llama block and the targets first (mode quick stops there);
  # each in its own step, so a time limit on the rest cannot cost them
  run bench "$(limit 50 20)" $bench --tune --shapes 8192x8192,8192x28672 \
    --out "$out/bench-headline.csv" > "$out/bench-headline.txt" 2>&1
  grep -E "M=1 |M=16 |M=256" "$out/bench-headline.txt" | cut -c1-150 | head -40
  run "Llama block" "$(limit 25 3)" python3 benchmarks/llama_block.py --out "$out/block.csv" 2>&1 | tail -5
  # the committed static counts for this Triton version (aot_check --sass), if any, add what each target asks of
  # instruction issue and of memory in flight, next to the measured speedups
  tv=$(python3 -c "import triton; print('.'.join(triton.__version__.split('.')[:2]))" 2>/dev/null)
  sass=$(ls benchmarks/results/sass-sm90-triton"$tv"-20[0-9][0-9]-*.csv 2>/dev/null | tail -1)  # the newest dated
  python3 benchmarks/kernel_targets.py "$out/bench-headline.csv" "$out/block.csv" ${sass:+--sass "$sass"} \
    | tee "$out/targets.md"
  # which kernel wins at each M of the headline shapes (check mode refits on every CSV below)
  python3 benchmarks/fit_dispatch.py "$out/bench-headline.csv" > "$out/fit-dispatch-headline.txt" 2>&1
  tail -2 "$out/fit-dispatch-headline.txt"
  if [ "$mode" = check ]; then
    timeout 70 $bench --tune --shapes 4096x4096,4096x14336,14336x4096 \
      --out "$out/bench-llama.csv" > "$out/bench-llama.txt" 2>&1
    tail -3 "$out/bench-llama.txt" | cut -c1-150
    timeout 40 $bench --shapes 384x384,1536x384,384x1536 --out "$out/bench-minilm.csv" > "$out/bench-minilm.txt" 2>&1
    tail -3 "$out/bench-minilm.txt"
    # more M between the headline rows, for the crossovers the dispatch thresholds are fitted to
    timeout 45 $bench --tune --shapes 4096x4096 --ms 2,4,8,32,128 --out "$out/bench-crossover.csv" \
      > "$out/bench-crossover.txt" 2>&1
    python3 benchmarks/fit_dispatch.py "$out"/bench-*.csv | tee "$out/fit-dispatch.txt" | tail -2
  fi
fi
echo "gpu_check $mode: $(($(elapsed) - start)) s"
