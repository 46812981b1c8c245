#!/usr/bin/env bash
# `make demo-lvc`: LVC end to end on the synthetic videos, on CPU.
#   1. spikelight fit --config experiments/lvc/synthetic.yaml: generates the videos (cached), trains the
#      tiny InternVL base model WHOLE on the short clips (cached in runs/lvc_synthetic_base/vlm; a second run
#      skips it), then LVCAlign freezes it and tunes only the alignment layer with query-attention
#      compression (w=4) and validates on the held-out long videos;
#   2. scripts/demo_lvc.py: the comparison at equal visual tokens on the held-out long videos (same data,
#      same base model): (a) sparse M/w frames, base model; (b) sparse M/w frames after the same alignment
#      tuning without compression; (c) dense M frames + LVC after alignment tuning; (d) dense M frames
#      uncompressed; plus chance. Table on stdout, runs/lvc_demo/lvc_comparison.json.
# Usage: scripts/demo_lvc.sh [extra options for step 1, e.g. --trainer.max_epochs 1]
# Environment: VENV (default .venv), WANDB_MODE (default offline), OMP_NUM_THREADS (default 1),
#              DEMO_KEEP_RUN=1 keeps an existing run folder, DEMO_LVC_ARGS: options of scripts/demo_lvc.py.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=experiments/lvc/synthetic.yaml
RUN_DIR=runs/lvc_synthetic
DEMO_NAME=demo-lvc
# the base model in runs/lvc_synthetic_base/ is kept and reused by a second run
# shellcheck source=scripts/demo_env.sh
source scripts/demo_env.sh

t0=$(date +%s)
echo "== [1/2] $SPIKELIGHT fit --config $CONFIG $*"
"$SPIKELIGHT" fit --config "$CONFIG" --trainer.enable_progress_bar false --overwrite true "$@"
t1=$(date +%s)
echo
echo "== [2/2] comparison at equal visual tokens (scripts/demo_lvc.py ${DEMO_LVC_ARGS:-})"
# shellcheck disable=SC2086
"$PY" scripts/demo_lvc.py --run runs/lvc_demo --fit_run "$RUN_DIR" ${DEMO_LVC_ARGS:-}
t2=$(date +%s)
echo "demo-lvc: fit $((t1 - t0)) s, comparison $((t2 - t1)) s, total $((t2 - t0)) s"
