#!/usr/bin/env bash
# The CUDA paths of leap in one run (about 6 minutes on one H200 once the data is prepared):
#   model    bench_model.py on CUDA: b16 8x224 clips/s, forward and forward+backward under bf16 autocast, SDPA vs
#            plain attention, batches up to what fits, peak memory; and torch.compile against eager (fwd+bwd)
#   ddp      `leap train` under torchrun (NCCL, one process per GPU), bf16, on the synthetic kitchen's shards
#   compile  `leap train` with model.compile: true, bf16, one process
#   evaluate `leap evaluate --split val` on the GPU, bf16, compiled
#   official bench_model.py --official on CUDA: ours against the official UniFormerV2 module, forward+backward,
#            the same weights (outputs compared in float32, timed in bf16), when $WORK/official/uniformerv2_model.py
#            is there (copy slowfast/models/uniformerv2_model.py from github.com/OpenGVLab/UniFormerV2; or OFFICIAL=path)
# Every step runs even when one before it failed; on CUDA each is stopped after a limit (T_MODEL=180, T_DDP=60,
# T_COMPILE=120, T_EVALUATE=120, T_OFFICIAL=60 seconds, then killed 10 s later; 0 = none; session 39 measured
# 135 / 22 / 71 / 80 / 21 s on an H200), and all of them within T_TOTAL=560 s (a device call's 600), so that a
# hang leaves the later steps their time and the summary its place. The summary at the end lists each step's exit
# status and seconds (124: stopped at its limit; 137: killed after it), and the script exits non-zero when any
# failed. Ctrl-C stops the step that runs and skips the others.
#
#   bash benchmarks/gpu_check.sh                           # a GPU machine with leap installed: all of it
#   WORK=.gpu-work bash benchmarks/gpu_check.sh prepare    # only the data: the synthetic kitchen, extract,
#                                                          # programs, shards (needs the CPU-side packages: av, ...)
#   WORK=.gpu-work bash benchmarks/gpu_check.sh check      # only the checks, on prepared data (needs torch only)
#   PY=.venv/bin/python ...                                # another interpreter than python3 (leap's own venv)
#   DEVICE=cpu bash benchmarks/gpu_check.sh                # a dry run of the same steps on the CPU at tiny sizes
#
# The device machine lent to sessions has torch but not av, soundfile or jsonschema, so there the data is
# prepared here first (`prepare`, ~1 minute) and carried: device `run` with carry [".gpu-work"] and the
# command `OUT=$OUT WORK=.gpu-work bash benchmarks/gpu_check.sh check` (.gpu-work is git-ignored).
# Output: $OUT/gpu_check.log and $OUT/model.json ($OUT defaults to ./gpu-check); the figures go into
# benchmarks/RESULTS.md, section "GPU (CUDA paths)".
set -uo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-all}
OUT=${OUT:-gpu-check}
WORK=${WORK:-$OUT/work}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
case "$WHAT" in all|prepare|check) ;; *) echo "usage: gpu_check.sh [all|prepare|check]" >&2; exit 2;; esac

STEPS=()
step() {  # step NAME COMMAND...: run it, note its exit status and seconds, go on either way
  local name=$1 t0=$SECONDS rc
  shift
  echo "=== $name: $*"
  "$@"
  rc=$?
  STEPS+=("$name rc=$rc $((SECONDS - t0))s")
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
}

leap() { $PY -m leap_cli "$@"; }

# limit SECS NAME COMMAND...: a step of the checks, stopped after SECS seconds (a hang must not eat the device
# time of the steps after it; the lent machine has 15 minutes in all, 10 a call), and after what is left of
# T_TOTAL (default 560 s from the start of the checks; 0 = none). timeout signals the step's whole process group
# (torchrun's workers too); it runs in the background so that Ctrl-C (the INT trap) stops the step at once (with
# SIGTERM, which leap and torchrun stop on cleanly) and the steps after it are skipped.
INTERRUPTED=0
STEP_PID=
T0=$SECONDS
on_int() { INTERRUPTED=1; [ -n "$STEP_PID" ] && kill -TERM "$STEP_PID" 2>/dev/null; }  # (trapped in the pipeline below)
limit() {
  local secs=$1 name=$2 total=${T_TOTAL:-560} rc
  shift 2
  if [ "$INTERRUPTED" = 1 ]; then
    STEPS+=("$name skipped (interrupted) rc=130 0s")
    return
  fi
  if [ "$secs" != 0 ] && [ "$total" != 0 ]; then
    local left=$((total - (SECONDS - T0)))
    if [ "$left" -lt 15 ]; then
      echo "=== $name: skipped, T_TOTAL=$total s spent"
      STEPS+=("$name skipped (T_TOTAL spent) rc=124 0s")
      return
    fi
    [ "$left" -lt "$secs" ] && secs=$left
  fi
  step "$name" _timed "$secs" "$@"
}
_timed() {  # _timed SECS COMMAND...: COMMAND under timeout (0: no limit, its process group still signalled as
  local secs=$1 rc  # one), in the background, waited for
  shift
  timeout -k 10 "$secs" "$@" &
  STEP_PID=$!
  wait "$STEP_PID"
  rc=$?
  while kill -0 "$STEP_PID" 2>/dev/null; do  # (wait returned for the trap: the step is still stopping)
    wait "$STEP_PID"
    rc=$?
  done
  STEP_PID=
  return "$rc"
}

prepare() {
  step demo-data leap demo-data --out "$WORK/kitchen" --videos 4 --segments 24
  for s in train val; do
    step "extract $s" leap extract --split "$s" --workdir "$WORK" --cache-frames 8 --cache-short-side 80
    step "programs $s" leap generate-programs --split "$s" --workdir "$WORK"
    step "shards $s" leap build-shards --split "$s" --workdir "$WORK" --frames 8 --short-side 80
  done
  rm -rf "$WORK/frame-cache"  # build-shards has read it; training does not (less to carry to a device)
}

check() {
  if [ ! -f "$WORK/shards/val/manifest.json" ]; then
    echo "no shards in $WORK/shards: run 'WORK=$WORK bash benchmarks/gpu_check.sh prepare' first" >&2
    STEPS+=("shards missing rc=1 0s")
    return
  fi
  local precision=bf16 np model_args
  if [ "$DEVICE" = cuda ]; then
    limit 60 env bash -c "set -e; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; \
      $PY -c \"import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), \
'bf16', torch.cuda.is_bf16_supported())\""
    np=$(timeout 60 $PY -c "import torch; print(max(1, torch.cuda.device_count()))" || echo 1)
    model_args=(--device cuda --iters 5 --gpu-batches 8 16 32 64 --compile --compile-batch 32)
  else  # the dry run: tiny sizes, two gloo processes, fp32 (bf16 on a CPU is slow, not what is checked)
    precision=fp32
    np=2
    model_args=(--device cpu --backbone uniformerv2_tiny --frames 4 --img 64 --batches 2 --iters 1 --threads 1
                --compile --compile-batch 2)
    : "${T_MODEL:=0}" "${T_DDP:=0}" "${T_COMPILE:=0}" "${T_EVALUATE:=0}" "${T_OFFICIAL:=0}"  # no limits: compiling is slow here
  fi
  limit "${T_MODEL:-180}" model $PY benchmarks/bench_model.py "${model_args[@]}" --json "$OUT/model.json"
  local common=(--config tiny-synthetic --workdir "$WORK" --force --set train.epochs=3 --set train.eval_every_epochs=3
                --set "train.device=$DEVICE" --set "train.precision=$precision")
  limit "${T_DDP:-60}" ddp $PY -m torch.distributed.run --standalone --nproc_per_node "$np" -m leap_cli train \
    "${common[@]}" --name gpu-ddp
  limit "${T_COMPILE:-120}" compile $PY -m leap_cli train "${common[@]}" --name gpu-compile --set model.compile=true
  limit "${T_EVALUATE:-120}" evaluate $PY -m leap_cli evaluate --split val --run "$WORK/runs/gpu-ddp" --workdir "$WORK" \
    --device "$DEVICE" --precision "$precision" --compile --out "$OUT/eval"
  # ours against the official code, when its file is there (fetch OpenGVLab/UniFormerV2 and copy
  # slowfast/models/uniformerv2_model.py to $WORK/official/): the same weights, forward+backward, interleaved
  local official=${OFFICIAL:-$WORK/official/uniformerv2_model.py}
  if [ -f "$official" ]; then
    local official_args=(--device cuda --batches 32 --iters 10)
    [ "$DEVICE" = cuda ] || official_args=(--device cpu --backbone uniformerv2_b16 --frames 4 --img 64 --batches 1 \
                                           --iters 2 --threads 1)
    limit "${T_OFFICIAL:-60}" official $PY benchmarks/bench_model.py --official "$official" "${official_args[@]}"
  else
    echo "=== official: skipped, no $official (OFFICIAL=path, relative to the repository's root)"
    STEPS+=("official skipped (no file) rc=0 0s")
  fi
}

{
  trap on_int INT  # (here: a pipeline's subshell does not keep the shell's traps)
  echo "gpu_check.sh $WHAT: device $DEVICE, work $WORK, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  if [ "$WHAT" != check ]; then prepare; fi
  if [ "$WHAT" != prepare ]; then check; fi
  echo "=== summary"
  failed=0
  for s in "${STEPS[@]}"; do
    echo "  $s"
    case "$s" in *" rc=0 "*) ;; *) failed=1;; esac
  done
  exit $failed
} 2>&1 | tee -i "$OUT/gpu_check.log"  # (-i: Ctrl-C leaves the log and the summary to come)
exit "${PIPESTATUS[0]}"
