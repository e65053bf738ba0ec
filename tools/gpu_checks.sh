#!/usr/bin/env bash
# The CUDA checks, in one call on a GPU machine (under 10 minutes): the tests that skip on CPU (flex, blocked
# and the compiled fused Triton kernel against the 3DNA reference, the model's backends and bf16, cached
# sampling), then the benchmarks' CUDA tables (3DNA per backend; the training table with MFU per backend and
# the speed options: compile, activation checkpointing full / attention).
# Logs go to $OUT (or ./gpu_logs). It needs torch with CUDA (and the Triton it brings), numpy, safetensors, pyyaml, sentencepiece, pytest;
# --noconftest skips the trainer fixtures, which need the preprocessing packages.
#   bash tools/gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_logs}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
timeout 150 python3 -m pytest --noconftest -q -p no:cacheprovider tests/test_kernels.py tests/test_model.py \
    tests/test_sampling.py 2>&1 | tee "$out/tests.log" | tail -n 15
# The trainer's host waits under CUDA's sync debug mode (needs deepspeed and the preprocessing packages).
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_pretrain.py -k cuda_the_host 2>&1 \
    | tee "$out/tests_sync.log" | tail -n 5
timeout 90 python3 tools/bench_3dna.py --device cuda --heads 20 --dtype bf16 --frames 1 10 20 40 --repeats 10 \
    2>&1 | tee "$out/bench_3dna.log"
timeout 240 python3 tools/bench_train.py --device cuda --dtype bf16 --configs mid paper --steps 5 --options \
    2>&1 | tee "$out/bench_train.log"
timeout 30 python3 tools/bench_sampling.py --device cuda --frames 1 4 \
    2>&1 | tee "$out/bench_sampling.log"
