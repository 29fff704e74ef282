#!/usr/bin/env bash
# The GPU run of mp-kernels' CUDA backend, built by `cargo xtask test-gpu --build-only`.
# One call on the GPU machine:  bash .gpu/run.sh   (logs under $OUT, at most 7 files)
#   1. the CUDA test binary: every op x dtype against the CPU oracle (a missing device FAILS)
#   2. the CUDA benchmark (cast vs copy, cuBLASLt GEMMs, fused AdamW, gradient check)
#   3. PyTorch's anchors on the same GPU (torch_gpu_reference.py), then a side-by-side table
# Ends with one line: "N passed, N failed" (the tests, plus the benchmark as one check).
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$HERE/out}"
mkdir -p "$OUT"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export MP_REQUIRE_CUDA=1
export RUST_BACKTRACE=0
export OUT
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

say "== mp-kernels CUDA run, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), built from commit @COMMIT@"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 \
    | sed 's/^/   gpu: /' | tee -a "$SUMMARY"

say ""
say "== 1/3 CUDA tests (every op x dtype vs the CPU oracle; NaN-poisoned outputs)"
timeout 200 "$HERE/cuda-tests" --test-threads=1 > "$OUT/cuda_tests.log" 2>&1
TEST_RC=$?
grep -E '^test .* (ok|FAILED|ignored)$' "$OUT/cuda_tests.log" | sed 's/^/   /'
PASSED=$(grep -cE '^test .* ok$' "$OUT/cuda_tests.log")
FAILED=$(grep -cE '^test .* FAILED$' "$OUT/cuda_tests.log")
if [ "$TEST_RC" -ne 0 ] && [ "$FAILED" -eq 0 ]; then
    # crashed or timed out before reporting: count the binary as one failure
    FAILED=1
    say "   the test binary exited with status $TEST_RC before reporting (124 = timeout)"
    tail -20 "$OUT/cuda_tests.log" | sed 's/^/   | /'
fi
if [ "$FAILED" -ne 0 ]; then
    say "   failures (full log: cuda_tests.log):"
    sed -n '/^failures:$/,/^test result:/p' "$OUT/cuda_tests.log" | grep -vE '^\s*$' | head -60 \
        | sed 's/^/   | /' | tee -a "$SUMMARY"
fi
say "   tests: $PASSED passed, $FAILED failed ($(( $(date +%s) - START )) s)"

say ""
say "== 2/3 CUDA benchmark (events, warm-up, median; random data)"
timeout 150 "$HERE/cuda_bench" > "$OUT/cuda_bench.log" 2>&1
BENCH_RC=$?
cat "$OUT/cuda_bench.log" | sed 's/^/   /'
if [ "$BENCH_RC" -eq 0 ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); say "   benchmark FAILED with status $BENCH_RC"; fi

say ""
say "== 3/3 PyTorch reference on the same GPU"
timeout 120 python3 "$HERE/torch_gpu_reference.py" > "$OUT/torch_reference.log" 2>&1
TORCH_RC=$?
[ "$TORCH_RC" -eq 0 ] || say "   torch_gpu_reference.py exited with status $TORCH_RC (see torch_reference.log)"

python3 - "$OUT" <<'PY' 2>&1 | tee -a "$SUMMARY"
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except Exception as e:
        print(f"   ({name} unavailable: {e})")
        return {}
ours, torch = load("cuda_bench.json"), load("anchors.json")
def o(k):
    v = ours.get(k)
    return v["value"] if isinstance(v, dict) else None
def t(k):
    v = torch.get(k)
    return v if isinstance(v, (int, float)) else None
rows = [
    ("copy GB/s (read+write)", o("copy_GBps(read+write)"), t("copy_GBps(read+write)"), True),
    ("cast f32->bf16 GB/s", o("cast_f32_to_bf16_GBps(read+write)"), t("cast_f32_to_bf16_GBps(read+write)"), True),
    ("cast f32->f16 GB/s", o("cast_f32_to_f16_GBps(read+write)"), t("cast_f32_to_f16_GBps(read+write)"), True),
]
for n in (4096, 8192):
    for d in ("bf16", "fp16", "tf32", "fp32"):
        rows.append((f"gemm {n}^3 {d} TFLOP/s", o(f"gemm_{n}_{d}_TFLOPs"), t(f"gemm_{n}_{d}_TFLOPs"), True))
ta, tc = t("adamw_fused_ms"), t("master_to_bf16_copy_ms")
rows.append(("AdamW 124.5M + bf16 copy, ms", o("adamw_fused_f32_grads_bf16_copy_ms"),
             ta + tc if ta is not None and tc is not None else None, False))
rows.append(("grad check ms (ours bf16 incl. host read; torch fp16)", o("grad_stats_bf16_ms"),
             t("unscale_check_fp16_grads_ms"), False))
print(f"\n   {'metric':<54} {'ours':>10} {'torch':>10} {'ours/torch':>10}")
for name, a, b, higher in rows:
    fa = f"{a:10.3f}" if a is not None else f"{'-':>10}"
    fb = f"{b:10.3f}" if b is not None else f"{'-':>10}"
    r = ""
    if a and b:
        r = f"{(a / b if higher else b / a):10.3f}"
    print(f"   {name:<54} {fa} {fb} {r}")
print("   (ours/torch > 1 means ours is better: higher rate, or lower time)")
copy, cast = o("copy_GBps(read+write)"), o("cast_f32_to_bf16_GBps(read+write)")
if copy and cast:
    print(f"   target cast >= 95% of copy: {100 * cast / copy:.1f}%")
ad, gs = o("adamw_fused_f32_grads_bf16_copy_ms"), o("grad_stats_bf16_ms")
if ad: print(f"   target fused AdamW + bf16 copy <= 1.0 ms: {ad:.3f} ms")
if gs: print(f"   target gradient check <= 0.08 ms: {gs:.3f} ms (host-timed, includes launch and the read)")
PY

say ""
say "elapsed $(( $(date +%s) - START )) s; logs in $OUT: summary.txt cuda_tests.log cuda_bench.log cuda_bench.json torch_reference.log anchors.json"
say "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
