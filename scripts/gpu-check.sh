#!/usr/bin/env bash
# One call on a lent GPU machine (run from the repository root there, .whl carried; see
# scripts/gpu-wheels.sh): the CUDA tests, then `python -m benchmarks.e2e` with the arguments
# given. Everything it reports lands in $OUT. RUN_TESTS=0 skips the tests (GPU_TESTS picks
# them); RUN_ATTENTION=1 runs `python -m benchmarks.attention`, PROLOGUE_BENCH=1
# `python -m benchmarks.prologue_quant` and READY_BENCH=1 `python -m benchmarks.ready_time`
# (READY_ARGS: its flags; READY_TIMEOUT_S, default 300) before the end-to-end benchmark.
set -uo pipefail
OUT=${OUT:-/tmp/qvgen-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# Inductor's generated code in the ignored runs/: a later call on the same (still warm) machine
# compiles from it (the Wan 14B W4A4 warm-up went from 93 s to 16 s, BENCHMARKS.md). Timings
# are unaffected: every step is timed after its warm-up.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/runs/inductor}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    python3 -c "import torchao; print('torchao', torchao.__version__)" 2>&1 | tail -1
    git rev-parse --short HEAD 2>/dev/null || true
} | tee "$OUT/machine.txt"
if [ "${RUN_TESTS:-1}" = 1 ]; then
    # GPU_TESTS: other test paths (pytest arguments) instead of the CUDA ones.
    timeout "${TEST_TIMEOUT_S:-240}" python3 -m pytest -q -p no:cacheprovider \
        ${GPU_TESTS:-tests/service/kernels tests/service/engine/test_cuda_generation.py \
        tests/training/quant/test_fused_fake_quant.py tests/recipes/tiny_model/test_compare.py} 2>&1 | tee "$OUT/gpu-tests.log" | tail -25
fi
if [ "${RUN_ATTENTION:-0}" = 1 ]; then
    timeout "${ATTENTION_TIMEOUT_S:-150}" python3 -m benchmarks.attention \
        --benchmarks "$OUT/BENCHMARKS-attention.md" 2>&1 | tee "$OUT/attention.log" | tail -30
fi
if [ "${PROLOGUE_BENCH:-0}" = 1 ]; then
    # The quantization fused into norm / GELU against produced-then-quantized, at Wan shapes.
    timeout "${PROLOGUE_TIMEOUT_S:-240}" python3 -m benchmarks.prologue_quant \
        --benchmarks "$OUT/BENCHMARKS-prologue.md" 2>&1 | tee "$OUT/prologue.log" | tail -15
fi
if [ "${READY_BENCH:-0}" = 1 ]; then
    # A worker's time to ready, each start a fresh process: eager, compiled with an empty
    # compile cache, compiled again with that cache.
    timeout "${READY_TIMEOUT_S:-300}" python3 -m benchmarks.ready_time ${READY_ARGS:-} \
        --benchmarks "$OUT/BENCHMARKS-ready.md" --json "$OUT/ready.json" 2>&1 \
        | tee "$OUT/ready.log" | tail -20
fi
if [ "$#" -gt 0 ]; then
    timeout "${BENCH_TIMEOUT_S:-420}" python3 -m benchmarks.e2e "$@" \
        --benchmarks "$OUT/BENCHMARKS-e2e.md" --json "$OUT/e2e.json" 2>&1 | tee "$OUT/e2e.log" | tail -70
fi
