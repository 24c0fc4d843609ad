#!/usr/bin/env bash
# Every GPU check of the course in two runs on a CUDA machine that has PyTorch but no Jupyter and
# no diffusers (see CONTRIBUTING.md, "A GPU session").
#
#   here, once:  bash benchmarks/gpu_session.sh fetch     # wheels of benchmarks/gpu_wheels.txt -> .whl/
#   there:       bash benchmarks/gpu_session.sh bench     # benchmarks/sd15_gpu.py, ~8 min   (carry .whl)
#   there:       bash benchmarks/gpu_session.sh checks    # CUDA tests + lessons 08 and 10, ~4 min
#
# Results and logs go to $OUT (default benchmarks/results). BENCH_BUDGET_S (default 480) bounds
# the benchmark: what would not fit is skipped and named in its JSON.
set -u
cd "$(dirname "$0")/.."
part=${1:-}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"

case "$part" in
fetch)
    mkdir -p .whl .git/info
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl $(grep -v '^#' benchmarks/gpu_wheels.txt)
    ;;
bench | checks) ;;
*)
    echo "usage: bash benchmarks/gpu_session.sh fetch|bench|checks" >&2
    exit 2
    ;;
esac

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
log="$OUT/gpu_session-$part.log"
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| diffusers', diffusers.__version__)"
} 2>&1 | tee "$log"

if [ "$part" = bench ]; then
    python3 benchmarks/sd15_gpu.py --out "$OUT" --budget-s "${BENCH_BUDGET_S:-480}" 2>&1 | tee -a "$log"
    exit "${PIPESTATUS[0]}"
fi

status=0
# 1. the tests that need CUDA: fp16 on CUDA against fp32 on the CPU, diffusers' fp16 pipeline, the fast mode
timeout 240 python3 -m pytest -q -p no:cacheprovider -rs tests/test_pipeline.py tests/test_fast_mode.py \
    -k "cuda or optimize or fused" 2>&1 | tee -a "$log" | tail -15 || status=1
# 2. lessons 08 and 10, every code cell, on the GPU
timeout 400 python3 benchmarks/run_notebook_cells.py notebooks/08_stable_diffusion_pipeline.ipynb \
    notebooks/10_making_it_fast.ipynb 2>&1 | tee -a "$log" | grep -E "^===|FAILED|GPU|s per image|synchronising" || status=1
exit $status
