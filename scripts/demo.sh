#!/usr/bin/env bash
# `make demo`: SVL end to end on the embedded synthetic triplets, on CPU, in a few minutes.
#   1. pretrain a small spiking 3D encoder (Spike PointNet, I-LIF) against frozen towers (MTA loss),
#      with zero-shot validation on held-out objects and held-out categories every epoch;
#   2. export the Rep-VLI deploy model (encoder + one K x C layer, no text tower);
#   3. print the spike energy report of the encoder;
#   4. print a summary (zero-shot top-1, deploy vs full parameters, W&B offline run, plots).
# Usage: scripts/demo.sh [extra config options for fit/export/energy, e.g. --trainer.max_epochs 2]
# Environment: VENV (default .venv), DEMO_CONFIG (default experiments/svl/synthetic.yaml),
#              WANDB_MODE (default offline), OMP_NUM_THREADS (default 1),
#              DEMO_KEEP_RUN=1 keeps an existing run folder.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${DEMO_CONFIG:-experiments/svl/synthetic.yaml}
NAME=$(basename "$(dirname "$CONFIG")")_$(basename "$CONFIG" .yaml)
RUN_DIR="runs/$NAME"
DEMO_NAME=demo
# shellcheck source=scripts/demo_env.sh
source scripts/demo_env.sh

t0=$(date +%s)
echo "== [1/3] pretraining: $SPIKELIGHT fit --config $CONFIG $*"
"$SPIKELIGHT" fit --config "$CONFIG" --trainer.enable_progress_bar false --overwrite true "$@"
t1=$(date +%s)
echo
echo "== [2/3] Rep-VLI export"
"$SPIKELIGHT" export --config "$CONFIG" --ckpt_path last --out "$RUN_DIR/deploy" "$@"
echo
echo "== [3/3] spike energy of the encoder"
"$SPIKELIGHT" energy --config "$CONFIG" --ckpt_path last "$@"
t2=$(date +%s)

echo
"$PY" - "$RUN_DIR" "$((t1 - t0))" "$((t2 - t0))" <<'PYEOF'
import json, sys, time
from pathlib import Path

import torch
import yaml

run, fit_s, total_s = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
zs = json.loads((run / "zero_shot.json").read_text())
deploy_cfg = json.loads((run / "deploy" / "config.json").read_text())
energy = json.loads((run / "energy.json").read_text()) if (run / "energy.json").is_file() else {}

# the deploy model on the held-out objects, loaded without any text tower
from spikelight.deploy import load_deploy
from spikelight.datamodules.pointcloud import Synthetic3DDataModule

cfg = yaml.safe_load((run / "config.yaml").read_text())
dm = Synthetic3DDataModule(**{**cfg["data"]["init_args"], "progress": False})
dm.setup("validate")
model = load_deploy(run / "deploy")
correct = total = 0
t = time.perf_counter()
for batch in dm.val_dataloader()[0]:
    idx, _ = model.predict(batch["points"])
    correct += int((idx == batch["label"]).sum())
    total += len(idx)
dt = time.perf_counter() - t

line = "=" * 78
print(line)
print(f"SVL demo summary  (run folder: {run})")
print(line)
print(f"zero-shot (epoch {zs['epoch']}, {zs['global_step']} steps; fit took {fit_s} s, whole demo {total_s} s):")
for name, s in zs["sets"].items():
    extra = "".join(f"  top{k} {100 * s[f'top{k}']:.1f}%" for k in (3, 5) if f"top{k}" in s)
    what = "held-out objects, seen categories" if name == "val_objects" else "held-out (unseen) categories"
    print(f"  {name:<15} ({what}, {s['num_classes']} classes): top1 {100 * s['top1']:.1f}% "
          f"(chance {100 * s['chance']:.1f}%){extra}  class-mean {100 * s['mean_class_acc']:.1f}%")
full = deploy_cfg.get("full_model_parameters", {})
n_dep = deploy_cfg["num_parameters"]
print(f"Rep-VLI deploy model ({run / 'deploy'}): {n_dep:,} parameters "
      f"(encoder + {deploy_cfg['num_classes']} x {deploy_cfg['embed_dim']} head)")
if full:
    print(f"  full zero-shot model (encoder + text tower + projections): {full['zero_shot_inference']:,} "
          f"parameters ({full['zero_shot_inference'] / n_dep:.0f}x); training model with image tower: "
          f"{full['training']:,}")
print(f"  deploy model on held-out objects: top1 {100 * correct / max(total, 1):.1f}% "
      f"({total} samples, {1e3 * dt / max(total, 1):.2f} ms/sample, no open_clip/transformers needed)")
if energy:
    mj = energy.get("energy_mj_per_sample")
    ann = energy.get("ann_energy_mj_per_sample")
    rate = energy.get("mean_firing_rate")
    if mj is not None:
        msg = f"encoder energy: {mj:.4g} mJ/sample"
        if ann:
            msg += f" vs {ann:.4g} mJ for its ANN twin ({ann / max(mj, 1e-12):.1f}x)"
        if rate is not None:
            msg += f", mean firing rate {rate:.3f}"
        print(msg)
wandb_runs = sorted((run / "wandb").glob("offline-run-*")) if (run / "wandb").is_dir() else []
print(f"W&B offline run: {wandb_runs[-1] if wandb_runs else '(none: WANDB_MODE disabled?)'}")
if wandb_runs:
    print(f"  upload later with: wandb sync {wandb_runs[-1]}")
for p in sorted(run.glob("*.png")) + [run / "energy.json", run / "zero_shot.json"]:
    if p.is_file():
        print(f"written: {p}")
print(line)
PYEOF
