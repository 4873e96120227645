#!/usr/bin/env bash
# Runs the GPU benchmarks (and the CUDA-only tests) one after another, each under its own time limit, and keeps
# every output. Usage, from the repository root, on a machine with a CUDA GPU and the project's packages
# (on a GPU machine without internet access: bench/gpu_run.sh, after scripts/gpu-wheels.sh elsewhere):
#
#   bash bench/gpu_suite.sh [OUTDIR] [STEP...]
#
# Steps (default: env tests burst profile fusions firsttoken throughput16 throughput4, about 5-6 minutes on an
# H200, each under a time limit, the eight together at most 575 s: a ten-minute run); also on request:
# kernel engine looplag looplagcpu followup.
# Each step writes OUTDIR/<step>.json (the benchmark's JSON line) and OUTDIR/<step>.log (its progress).
# A step that fails or runs out of time is reported and the next one still runs.
set -u

out=${1:-bench-results}
shift || true
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(env tests burst profile fusions firsttoken throughput16 throughput4)
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}.

run_step() {  # name, time limit in seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*" >&2
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.json" 2> >(tee "$out/$name.log" | tail -n 3 >&2)
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s" >&2
    [ -s "$out/$name.json" ] && tail -c 600 "$out/$name.json" >&2 && echo >&2
}

for step in "${steps[@]}"; do
    case $step in
        env) run_step env 20 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; \
            $py -c 'import torch, transformers, sys; print(torch.__version__, transformers.__version__, sys.version)'" ;;
        # --noconftest: the inference tests need none of the bot's fixtures (nor its Discord packages).
        tests) run_step tests 70 "$py" -m pytest -q -p no:cacheprovider --noconftest tests/inference/test_gpu.py \
            tests/inference/kernels/test_attention_backends.py tests/inference/kernels/test_fused_rope.py ;;
        burst) run_step burst 60 "$py" bench/burst.py --real-size ;;
        # Decoding steps against the memory-bandwidth limit, three ways, and graphs against eager steps; the
        # top operators of a few steps of each (by host and by GPU time) go to profile.log.
        profile) run_step profile 100 "$py" bench/step_profile.py --real-size --steps 16 --profile ;;
        # Decoding from CUDA graphs and eagerly; the model card's way at 1 and 8 users
        # (it answers one person after another, so its rate does not change with more waiting; the speed-up
        # above 8 uses it).
        throughput16) run_step throughput16 120 "$py" bench/throughput.py --real-size --num-crops 16 \
            --ways graphs,eager --card-levels 1,8 ;;
        throughput4) run_step throughput4 45 "$py" bench/throughput.py --real-size --num-crops 4 --ways graphs \
            --card-levels 1 ;;
        # Where one request's first token goes (prepare, vision tower, prefill, through the engine), with the
        # top kernels of one prefill.
        firsttoken) run_step firsttoken 60 "$py" bench/first_token.py --real-size --ways graphs,eager --profile ;;
        # Decoding steps with the fused parts (graphs), and with each replaced by transformers' own, side by side.
        fusions) run_step fusions 100 "$py" bench/step_profile.py --real-size --steps 16 \
            --ways graphs,plain-norms,plain-rope,unfused ;;
        # The paged-decode kernel alone: every schedule at 1, 8 and 32 rows, checked and timed.
        kernel) run_step kernel 240 "$py" bench/paged_kernel.py ;;
        engine) run_step engine 300 "$py" bench/engine.py ;;
        # A picture asked about again (a follow-up, a second task), with kept KV-cache blocks and without.
        followup) run_step followup 240 "$py" bench/follow_up.py ;;
        looplag) run_step looplag 300 "$py" bench/loop_lag.py --real-size ;;
        looplagcpu) run_step looplagcpu 120 "$py" bench/loop_lag.py --device cpu ;;
        *) echo "unknown step: $step" >&2 ;;
    esac
done
