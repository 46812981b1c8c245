# Sourced by scripts/demo.sh and scripts/demo_lvc.sh: the virtualenv's tools, offline settings, one thread.
# Needs DEMO_NAME (the label in messages) and RUN_DIR (the demo's run folder) set by the caller.
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
SPIKELIGHT="$VENV/bin/spikelight"
export WANDB_MODE=${WANDB_MODE:-offline}
export WANDB_SILENT=true
export MPLBACKEND=Agg
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# One intra-op thread: the small per-step kernels gain little from a second thread on an idle machine,
# and on a busy one (CI runners, shared boxes) two spinning OpenMP threads are up to 10x slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}

for tool in "$PY" "$SPIKELIGHT"; do
    [ -x "$tool" ] || { echo "$DEMO_NAME: $tool not found; run 'make $DEMO_NAME' (it installs first)" >&2; exit 1; }
done
if [ -d "$RUN_DIR" ] && [ -z "${DEMO_KEEP_RUN:-}" ]; then
    echo "$DEMO_NAME: removing the previous run $RUN_DIR (set DEMO_KEEP_RUN=1 to keep it)"
    rm -rf "$RUN_DIR"
fi
