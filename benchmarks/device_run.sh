#!/usr/bin/env bash
# One run on a machine with a CUDA GPU: the device-parametrised tests on CUDA, then the
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
timeout 240 python3 -m pytest tests -q -x -k cuda -p no:cacheprovider 2>&1 | tee "$out/pytest_cuda.log" | tail -5
timeout 150 python3 benchmarks/bench_memory.py --device cuda --lengths 1024,4096,16384,65536 --repeats 3 2>&1 | tee "$out/bench_memory_cuda.txt"
for b in benchmarks/bench_attention.py benchmarks/bench_models.py; do
    [ -f "$b" ] && timeout 90 python3 "$b" --device cuda 2>&1 | tee "$out/$(basename "$b" .py)_cuda.txt" | tail -25
done
echo "device run done"
