#!/usr/bin/env bash
# One prepared run on a machine with a CUDA GPU, in under 8 minutes, each stage under its own
# time limit (a stage that runs out leaves the others their time):
#   1. the device-parametrised tests on CUDA (pytest -k cuda);                        <= 100 s
#   2. torch.compile (Triton kernels) of mag and mac on CUDA against eager, float32;  <=  70 s
#   3. the memory layer of the 170m model (dim 768, 16 heads, chunk 16), forward +
#      backward, bf16 autocast (inner loop float32), eager and with compiled blocks,
#      4K and 16K;                                                                   <= 100 s
#   4. the 170m model, every variant and the swa/transformer baselines, training
#      tokens/s and peak memory at 4K (bf16 autocast), and batch-1 generation at 4K;   <= 180 s
# then, if time is left, 16K training (stage 5). Logs under $OUT (or ./device_out). Used with
# the workplace's accelerator tool; runs anywhere with a GPU and the project's dependencies.
set -uo pipefail
out="${OUT:-device_out}"
mkdir -p "$out"
start=$SECONDS
if [ -d .whl ]; then  # wheels carried for packages the machine lacks (beartype)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/gpu.txt"

echo "== 1. CUDA tests"
timeout 100 python3 -m pytest tests -q -x -k cuda -p no:cacheprovider 2>&1 | tee "$out/pytest_cuda.log" | tail -5

echo "== 2. compiled vs eager on CUDA"
timeout 70 python3 -m tests.titans.compile_probe inductor cuda mag,mac 2>&1 | grep -v '^W' | tee "$out/compile_cuda.txt" | tail -3

echo "== 3. the 170m memory layer"
{
    for mode in none blocks; do
        timeout 50 python3 benchmarks/bench_memory.py --device cuda --dim 768 --heads 16 --batch 8 \
            --lengths 4096,16384 --repeats 3 --autocast bf16 --compile "$mode" --naive-length 0 \
            || echo "bench_memory --compile $mode: stopped (exit $?)"
    done
} 2>&1 | grep -v '^W' | tee "$out/bench_memory_cuda.txt"

echo "== 4. the 170m model at 4K (train batch 4, bf16), generation at 4K"
timeout 180 python3 benchmarks/bench_models.py --device cuda --preset 170m --train-seq 4096 --batch 4 \
    --autocast bf16 --contexts 4096 --repeats 2 --timeout 40 2>&1 | grep -v '^W' | tee "$out/bench_models_cuda.txt"

left=$(( 470 - (SECONDS - start) ))
if [ "$left" -gt 60 ]; then
    echo "== 5. the 170m model at 16K (train batch 1, bf16), ${left} s left"
    timeout "$left" python3 benchmarks/bench_models.py --device cuda --preset 170m --train-seq 16384 --batch 1 \
        --autocast bf16 --contexts "" --repeats 2 --timeout 45 2>&1 | grep -v '^W' | tee "$out/bench_models_cuda_16k.txt"
fi
echo "device run done in $(( SECONDS - start )) s"
