#!/usr/bin/env bash
# One run on a machine with a CUDA GPU: the device-parametrised tests on CUDA, a short training
# and evaluation through the command line on CUDA (bf16 autocast), then the memory and model
# benchmarks with --device cuda. Writes logs under $OUT (or ./device_out). Used with the
# workplace's accelerator tool; runs anywhere with a GPU and the project's dependencies.
set -uo pipefail
out="${OUT:-device_out}"
mkdir -p "$out"
if [ -d .whl ]; then  # wheels carried for packages the machine lacks (beartype)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/gpu.txt"
timeout "${TEST_TIMEOUT:-200}" python3 -m pytest tests -q -k cuda -p no:cacheprovider 2>&1 | tee "$out/pytest_cuda.log" | tail -15
{
  for v in mac mag mal lmm; do
    timeout 60 python3 -m titans train --variant "$v" --task mqar --steps 20 --device cuda --out "/tmp/cuda_$v" -q \
        --batch-size 8 --seq-len 128 --eval-batches 1 --dim 64 --heads 2 --window 16 --segment-len 16 --chunk-size 8 \
        && timeout 60 python3 -m titans eval --checkpoint "/tmp/cuda_$v" --task mqar --lengths 128,1024 --device cuda \
        || echo "CUDA TRAIN/EVAL FAILED: $v"
  done
} 2>&1 | tee "$out/train_cuda.log" | tail -12
timeout 150 python3 benchmarks/bench_memory.py --device cuda --lengths 1024,4096,16384,65536 --repeats 3 2>&1 | tee "$out/bench_memory_cuda.txt"
[ -f benchmarks/bench_models.py ] && timeout 90 python3 benchmarks/bench_models.py --device cuda 2>&1 | tee "$out/bench_models_cuda.txt" | tail -25
echo "device run done"
