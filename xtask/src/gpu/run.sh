#!/usr/bin/env bash
# The GPU run of mp-kernels' CUDA backend, built by `cargo xtask test-gpu --build-only`.
# One call on the GPU machine:  bash .gpu/run.sh   (logs under $OUT: 8 files, the most a device call returns)
#   1. the CUDA test binary: every op x dtype against the CPU oracle (a missing device FAILS),
#      and NCCL's collectives in a world of one
#   2. mp-train's CUDA tests: the GPT golden tests (HF GPT-2 logits, loss, every gradient,
#      autocast, AdamW losses), a 50-step bf16 training run tracking the CPU run, and one
#      rank with NCCL (DDP and ZeRO-1) bit for bit against the run without collectives
#   3. the CUDA benchmark (cast vs copy, cuBLASLt GEMMs, fused AdamW, gradient check)
#   4. PyTorch's anchors on the same GPU (torch_gpu_reference.py), then a side-by-side table
#   5. mp-dtype's tests on this machine's CPU
#   6. the trainer: 50 bf16 steps on CUDA vs the CPU; GPT-2-small step throughput
#   7. the CPU backend on this machine's CPU: the AVX-512 BF16 GEMM against its emulation
#      (mp-kernels' unit tests), and the gpt-cpu training step in bf16 vs fp32
#   8. the wgpu backend through Vulkan on this GPU (loaders from gl/): every op vs the CPU
# Ends with one line: "N passed, N failed" (every test, plus the benchmark and the training
# check as one check each).
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$HERE/out}"
mkdir -p "$OUT"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# NCCL for the one-rank NCCL checks: the system's, else the nvidia-nccl wheel PyTorch brings,
# linked as libnccl.so (the name cudarc loads; the wheel has only libnccl.so.2)
if ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so '; then
    NCCL_WHEEL=$(python3 -c 'import importlib.util as u, os; s = u.find_spec("nvidia.nccl"); print(os.path.join(list(s.submodule_search_locations)[0], "lib"))' 2>/dev/null || true)
    if [ -n "$NCCL_WHEEL" ] && [ -f "$NCCL_WHEEL/libnccl.so.2" ]; then
        mkdir -p "$HERE/nccl" && ln -sf "$NCCL_WHEEL/libnccl.so.2" "$HERE/nccl/libnccl.so"
        export LD_LIBRARY_PATH="$HERE/nccl:$NCCL_WHEEL:$LD_LIBRARY_PATH"
    fi
fi
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
say "== 1/8 CUDA tests (every op x dtype vs the CPU oracle; NaN-poisoned outputs)"
timeout 150 "$HERE/cuda-tests" --test-threads=1 > "$OUT/cuda_tests.log" 2>&1
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
say "== 2/8 mp-train on CUDA: GPT golden tests vs PyTorch, 50 bf16 training steps vs the CPU"
T0=$(date +%s)
# parsed on its own, then appended to cuda_tests.log (a device call returns at most 8 files)
TT_LOG=$(mktemp)
MP_GOLDEN_DIR="$HERE/golden" timeout 150 "$HERE/train-tests" cuda --test-threads=1 --show-output \
    > "$TT_LOG" 2>&1
TT_RC=$?
grep -E '^test .* (ok|FAILED|ignored)$' "$TT_LOG" | sed 's/^/   /'
grep -E '(rel L2|worst relative loss|SKIPPED)' "$TT_LOG" | sed 's/^/   /' | tee -a "$SUMMARY"
TT_PASSED=$(grep -cE '^test .* ok$' "$TT_LOG")
TT_FAILED=$(grep -cE '^test .* FAILED$' "$TT_LOG")
if [ "$TT_RC" -ne 0 ] && [ "$TT_FAILED" -eq 0 ]; then
    TT_FAILED=1
    say "   the mp-train test binary exited with status $TT_RC before reporting (124 = timeout)"
    tail -20 "$TT_LOG" | sed 's/^/   | /'
fi
if [ "$TT_PASSED" -eq 0 ] && [ "$TT_FAILED" -eq 0 ]; then
    TT_FAILED=1
    say "   no mp-train test named cuda ran (was the binary built with --features cuda?)"
fi
if [ "$TT_FAILED" -ne 0 ]; then
    say "   failures (full log: the end of cuda_tests.log):"
    sed -n '/^failures:$/,/^test result:/p' "$TT_LOG" | grep -vE '^\s*$' | head -40 \
        | sed 's/^/   | /' | tee -a "$SUMMARY"
fi
say "   mp-train tests: $TT_PASSED passed, $TT_FAILED failed ($(( $(date +%s) - T0 )) s)"
PASSED=$((PASSED + TT_PASSED)); FAILED=$((FAILED + TT_FAILED))
{ echo; echo "==== mp-train tests on CUDA (train-tests cuda)"; cat "$TT_LOG"; } >> "$OUT/cuda_tests.log"
rm -f "$TT_LOG"

say ""
say "== 3/8 CUDA benchmark (events, warm-up, median; random data)"
timeout 90 "$HERE/cuda_bench" > "$OUT/cuda_bench.log" 2>&1
BENCH_RC=$?
cat "$OUT/cuda_bench.log" | sed 's/^/   /'
if [ "$BENCH_RC" -eq 0 ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); say "   benchmark FAILED with status $BENCH_RC"; fi

say ""
say "== 4/8 PyTorch reference on the same GPU"
timeout 110 python3 "$HERE/torch_gpu_reference.py" > "$OUT/torch_reference.log" 2>&1
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
say "== 5/8 mp-dtype on this machine's CPU (exhaustive + every SIMD path it has, AVX-512 included)"
grep -oE 'avx512[a-z0-9_]*' /proc/cpuinfo | sort -u | tr '\n' ' ' | sed 's/^/   cpu flags: /' | tee -a "$SUMMARY"; echo | tee -a "$SUMMARY"
timeout 60 "$HERE/dtype-tests" > "$OUT/cpu.log" 2>&1
DT_RC=$?
grep -iE 'exercised paths|not available' "$OUT/cpu.log" | sort -u | head -4 | sed 's/^/   /' | tee -a "$SUMMARY"
DT_PASSED=$(grep -cE '^test .* ok$' "$OUT/cpu.log")
DT_FAILED=$(grep -cE '^test .* FAILED$' "$OUT/cpu.log")
if [ "$DT_RC" -ne 0 ] && [ "$DT_FAILED" -eq 0 ]; then DT_FAILED=1; say "   dtype tests exited with $DT_RC"; tail -5 "$OUT/cpu.log" | sed 's/^/   | /'; fi
say "   dtype tests: $DT_PASSED passed, $DT_FAILED failed"
PASSED=$((PASSED + DT_PASSED)); FAILED=$((FAILED + DT_FAILED))

say ""
say "== 6/8 training: 50 bf16 steps on CUDA vs the CPU backend; GPT-2-small step throughput"
RUNS=/tmp/mp-runs; rm -rf "$RUNS"; mkdir -p "$RUNS"
COMMON="--max-steps 50 --precision bf16 --plain --set logging_steps=1 --set eval_steps=0 --set eval_problems=10 --set save_steps=0"
timeout 60 "$HERE/mp-train" train $COMMON --backend cuda --out "$RUNS/cuda" > "$OUT/train.log" 2>&1; TR_CUDA=$?
timeout 60 "$HERE/mp-train" train $COMMON --backend cpu --out "$RUNS/cpu" >> "$OUT/train.log" 2>&1; TR_CPU=$?
python3 - "$RUNS" <<'PY' 2>&1 | tee -a "$SUMMARY"
import json, sys
runs = sys.argv[1]
def losses(name):
    out = {}
    try:
        for line in open(f"{runs}/{name}/metrics.jsonl"):
            r = json.loads(line)
            if "loss" in r and "step" in r:
                out[r["step"]] = r["loss"]
    except Exception as e:
        print(f"   {name}: no metrics ({e})")
    return out
a, b = losses("cuda"), losses("cpu")
common = sorted(set(a) & set(b))
if not common:
    print("   training: FAILED (no common logged steps)"); sys.exit(1)
worst = max(abs(a[s] - b[s]) / abs(b[s]) for s in common)
for s in common[:: max(1, len(common) // 6)] + [common[-1]]:
    print(f"   step {s:4d}  loss cuda {a[s]:.5f}  cpu {b[s]:.5f}")
ok = worst < 0.02 and common[-1] >= 50 and a[common[-1]] < a[common[0]]
print(f"   worst relative loss difference {worst:.2e} over {len(common)} steps (limit 2e-2): {'ok' if ok else 'FAILED'}")
sys.exit(0 if ok else 1)
PY
TRACK_RC=${PIPESTATUS[0]}
if [ "$TR_CUDA" -eq 0 ] && [ "$TR_CPU" -eq 0 ] && [ "$TRACK_RC" -eq 0 ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); say "   training check FAILED (cuda rc $TR_CUDA, cpu rc $TR_CPU); see train.log"; tail -15 "$OUT/train.log" | sed 's/^/   | /' | tee -a "$SUMMARY"; fi
GPT2="--set model.n_layer=12 --set model.n_embd=768 --set model.n_head=12 --set model.n_positions=1024 --set model.vocab_size=50304 --set batch_size=16 --set logging_steps=1 --set eval_batches=1 --set eval_problems=1 --set data.problems=200000"
for P in bf16 fp16 fp32; do
  timeout 45 "$HERE/mp-train" train --max-steps 6 --precision $P --plain --set eval_steps=0 --set save_steps=0 $GPT2 --backend cuda --out "$RUNS/gpt2-$P" >> "$OUT/train.log" 2>&1
  python3 - "$RUNS/gpt2-$P/metrics.jsonl" "$P" <<'PY' 2>&1 | tee -a "$SUMMARY"
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])] if __import__("os").path.exists(sys.argv[1]) else []
tps = [r.get("tokens_per_s") for r in rs if r.get("step", 0) >= 3 and r.get("tokens_per_s")]
print(f"   gpt2-small {sys.argv[2]:5s} steps 3-6 tokens/s: {sorted(tps)[len(tps)//2]:.0f}" if tps else f"   gpt2-small {sys.argv[2]}: no throughput (see train.log)")
PY
done
nvidia-smi --query-gpu=memory.used --format=csv,noheader | sed 's/^/   gpu memory in use now: /'

say ""
say "== 7/8 CPU backend on this machine's CPU: AVX-512 BF16 GEMM, gpt-cpu step bf16 vs fp32"
{ echo; echo "==== kernels-units gemm"; } >> "$OUT/cpu.log"
timeout 120 "$HERE/kernels-units" gemm --nocapture --test-threads=1 > "$OUT/kernels_units.tmp" 2>&1
KU_RC=$?
cat "$OUT/kernels_units.tmp" >> "$OUT/cpu.log"
# (--nocapture output may split a test's line: count from the result line)
grep -E 'SKIPPED|FAILED|^test result' "$OUT/kernels_units.tmp" | sed 's/^/   /' | tee -a "$SUMMARY"
KU_PASSED=$(sed -nE 's/^test result: .* ([0-9]+) passed; ([0-9]+) failed.*/\1/p' "$OUT/kernels_units.tmp")
KU_FAILED=$(sed -nE 's/^test result: .* ([0-9]+) passed; ([0-9]+) failed.*/\2/p' "$OUT/kernels_units.tmp")
KU_PASSED=${KU_PASSED:-0}; KU_FAILED=${KU_FAILED:-0}
rm -f "$OUT/kernels_units.tmp"
if [ "$KU_RC" -ne 0 ] && [ "$KU_FAILED" -eq 0 ]; then KU_FAILED=1; say "   kernels-units exited with $KU_RC"; fi
PASSED=$((PASSED + KU_PASSED)); FAILED=$((FAILED + KU_FAILED))
for P in fp32 bf16; do
  timeout 60 "$HERE/mp-train" train --backend cpu --max-steps 12 --precision $P --plain --set model.n_layer=4 \
      --set model.n_embd=128 --set model.n_head=4 --set model.n_positions=64 --set batch_size=16 \
      --set logging_steps=1 --set eval_steps=0 --set save_steps=0 --out "$RUNS/cpu-$P" >> "$OUT/cpu.log" 2>&1
  python3 - "$RUNS/cpu-$P/metrics.jsonl" "$P" <<'PY' 2>&1 | tee -a "$SUMMARY"
import json, os, sys
rs = [json.loads(l) for l in open(sys.argv[1])] if os.path.exists(sys.argv[1]) else []
tps = [r.get("tokens_per_s") for r in rs if r.get("step", 0) >= 4 and r.get("tokens_per_s")]
print(f"   gpt-cpu on the CPU ({os.cpu_count()} threads) {sys.argv[2]:5s} tokens/s: {sorted(tps)[len(tps)//2]:.0f}" if tps else f"   gpt-cpu {sys.argv[2]}: no throughput (see cpu.log)")
PY
done

say ""
say "== 8/8 wgpu through Vulkan on this GPU: every op x dtype vs the CPU oracle"
if ls "$HERE"/gl/libvulkan1_*.deb > /dev/null 2>&1; then
  for f in "$HERE"/gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  WG_LOG="$OUT/wgpu.tmp"  # appended to cuda_tests.log below (a call returns at most 8 files)
  WGPU_BACKEND=vulkan MP_REQUIRE_WGPU=1 timeout 150 "$HERE/wgpu-tests" --test-threads=1 > "$WG_LOG" 2>&1
  WG_RC=$?
  grep -m1 -oE 'wgpu:[^)]*\)[^)]*\)' "$WG_LOG" | sed 's/^/   adapter: /' | tee -a "$SUMMARY"
  WG_PASSED=$(grep -cE '^test .* ok$' "$WG_LOG")
  WG_FAILED=$(grep -cE '^test .* FAILED$' "$WG_LOG")
  if [ "$WG_RC" -ne 0 ] && [ "$WG_FAILED" -eq 0 ]; then WG_FAILED=1; say "   wgpu-tests exited with $WG_RC"; tail -8 "$WG_LOG" | sed 's/^/   | /' | tee -a "$SUMMARY"; fi
  say "   wgpu tests: $WG_PASSED passed, $WG_FAILED failed"
  PASSED=$((PASSED + WG_PASSED)); FAILED=$((FAILED + WG_FAILED))
  { echo; echo "==== wgpu tests through Vulkan (wgpu-tests)"; cat "$WG_LOG"; } >> "$OUT/cuda_tests.log"
  rm -f "$WG_LOG"
else
  say "   SKIPPED: no Vulkan loader packages in gl/ (the bundle could not download them)"
fi

say ""
say "elapsed $(( $(date +%s) - START )) s; logs in $OUT: summary.txt cuda_tests.log (+ mp-train and wgpu tests) cuda_bench.log cuda_bench.json torch_reference.log anchors.json train.log cpu.log (mp-dtype, CPU GEMM and step)"
say "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
