#!/usr/bin/env bash
# Every CUDA path and GPU benchmark the issues name, in one call (under ~8 minutes on one H200), so that a
# lent GPU machine is used once. Run from the repository root on the GPU machine:
#   bash benchmarks/gpu_check.sh            # results under $OUT (or benchmarks/results/gpu/)
# It needs the project installed (`make install-dev`, or an existing .venv carried along).
# Steps (each with its own time limit; a failing step is reported and the next one runs):
#   1. the CUDA-only tests (spconv CUDA backward vs our sparse conv, CUDA memory probe) and the CUDA
#      branches of the energy meter (spconv kernels bypass the dispatcher: forced torch backend / refusal);
#   2. neurons.py on CUDA (bandwidth-bound neuron update, ours vs spikingjelly);
#   3. trevsnn_memory.py on CUDA (peak CUDA memory per sample, reversible vs BPTT, T = 1/2/4/8);
#   4. trevsnn_speed_energy.py on CUDA (step time reversible vs BPTT; CUDA RNG path of the recompute);
#   5. svl_energy.py --quick on CUDA (energy meter with the sparse conv on CUDA);
#   6. lvc_llm_cost.py on CUDA (LLM prefill cost: LVC vs sparse vs dense, bf16 capable);
#   7. a 2-step bf16 fit of the LVC synthetic config on the GPU and the FSDP strategy constructed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
status=0
step() {  # step <name> <seconds> <command...>
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  if timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then
    echo "   ok in $((SECONDS - t0)) s"
  else
    echo "   FAILED (exit $?) after $((SECONDS - t0)) s; tail of $OUT/$name.log:"; tail -n 15 "$OUT/$name.log"
    status=1
  fi
}
step cuda_tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_sparse_conv.py tests/test_memory.py \
  tests/test_energy.py -k "cuda or spconv or sparse_backend"
step neurons 60 "$PY" benchmarks/neurons.py --device cuda --out "$OUT/neurons_cuda.json"
step trevsnn_memory 90 "$PY" benchmarks/trevsnn_memory.py --device cuda --out "$OUT/trevsnn_memory_cuda.json" \
  --plot "$OUT/trevsnn_memory_cuda.png"
step trevsnn_speed_energy 90 "$PY" benchmarks/trevsnn_speed_energy.py --device cuda \
  --out "$OUT/trevsnn_speed_energy_cuda.json"
step svl_energy 60 "$PY" benchmarks/svl_energy.py --device cuda --quick --out "$OUT/svl_energy_cuda.json"
step lvc_llm_cost 60 "$PY" benchmarks/lvc_llm_cost.py --device cuda --out "$OUT/lvc_llm_cost_cuda.json"
step lvc_fit_bf16 60 "$PY" -m spikelight fit --config experiments/lvc/synthetic.yaml --trainer.accelerator gpu \
  --trainer.devices 1 --trainer.precision bf16-mixed --trainer.max_steps 2 --trainer.logger false \
  --run_root "$OUT/runs" --name lvc_gpu
echo "results: $OUT"
exit $status
