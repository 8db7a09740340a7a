#!/usr/bin/env bash
# One prepared run for a lent GPU machine (the `device` tool): the CUDA paths of leap in about 6 minutes.
#   1. bench_model.py --device cuda: b16 8x224 clips/s forward and forward+backward with bf16 autocast,
#      SDPA vs plain attention, peak memory, batches up to what fits;
#   2. DDP under torchrun (NCCL) with bf16 on the synthetic kitchen: a tiny training run end to end;
#   3. evaluate on the GPU with bf16.
# Output goes to $OUT (the device tool brings it back) or ./gpu-check; copy the figures into RESULTS.md.
set -euo pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  $PY benchmarks/bench_model.py --device cuda --iters 3 --gpu-batches 8 16 32 64
  W=$(mktemp -d)
  $PY -m leap_cli demo-data --out "$W/kitchen" --videos 4 --segments 24
  for s in train val; do
    $PY -m leap_cli generate-programs --split $s --workdir "$W"
    $PY -m leap_cli build-shards --split $s --workdir "$W" --frames 8 --short-side 80 --workers 8
  done
  NP=$($PY -c "import torch; print(max(1, torch.cuda.device_count()))")
  torchrun --standalone --nproc_per_node "$NP" -m leap_cli train --config tiny-synthetic --workdir "$W" \
    --set train.epochs=5 --set train.threads=4 --set train.precision=bf16
  $PY -m leap_cli evaluate --split val --run "$W/runs/tiny-synthetic" --workdir "$W" --device cuda --precision bf16
} 2>&1 | tee "$OUT/gpu_check.log"
