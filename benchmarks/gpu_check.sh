#!/usr/bin/env bash
# The GPU paths, checked on a machine with one NVIDIA GPU: CUDA training with mixed
# precision and channels-last memory, a resume on the GPU, a 3D model, NCCL under torchrun,
# and the test suite with the GPU visible (device "auto" picks it). Not part of CI, which has
# no GPU. Writes its log to ${OUT:-.}/gpu_check.log.
#
#   bash benchmarks/gpu_check.sh        (medadapt installed, a GPU visible)
set -uo pipefail
OUT=${OUT:-.}
LOG="$OUT/gpu_check.log"
WORK=$(mktemp -d)
export MEDADAPT_CACHE_DIR="$WORK/cache" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0
step() { echo "== $*" | tee -a "$LOG"; }
run() { "$@" >>"$LOG" 2>&1 || { echo "FAILED: $*" | tee -a "$LOG"; status=1; }; }

step "versions"
run "$py" -c "import torch, monai, medadapt.engine as m; print(torch.__version__, torch.cuda.get_device_name(0), monai.__version__)"

profile() {  # name, patch mode, patch size, backbone, amp, epochs
  cat >"$WORK/$1.yaml" <<YAML
site: {name: GPU check $1}
intended_use: a check of the GPU paths on simulated patients
body_region: chest
seed: 5
task: {classes: [benign, malignant], positive_class: malignant, label_depends_on: [size, shape]}
data:
  source: phantom
  params: {scanner: siemens-smooth-standard-dose, patients: 40, seed: 3, slices: 16}
  split: {train: 0.6, validation: 0.2, test: 0.2}
preprocessing: {window: {level: -200, width: 1800}, spacing_mm: [2.0, 1.0, 1.0], patch_mode: "$2", patch_size: $3}
augmentations: [{name: random-flip}, {name: gaussian-noise, params: {max_sd_hu: 20}}]
backbone: {name: $4, weights: none}
training: {epochs: $6, batch_size: 16, amp: $5, device: cuda, workers: 2}
acceptance: {min_auroc: 0.5}
YAML
}

step "2D ResNet-18, CUDA, mixed precision, channels-last: train 2 epochs, resume to 3"
profile amp2d 2d "[48, 48]" resnet18 true 2
run "$py" -m medadapt.engine train -p "$WORK/amp2d.yaml" --out "$WORK/amp2d"
sed -i 's/epochs: 2/epochs: 3/' "$WORK/amp2d.yaml"
run "$py" -m medadapt.engine train -p "$WORK/amp2d.yaml" --out "$WORK/amp2d" --resume
run "$py" - "$WORK/amp2d" <<'PY'
import json, sys
run = json.load(open(sys.argv[1] + "/run.json"))
card = json.load(open(sys.argv[1] + "/model/card.json"))
print("epochs", len(run["history"]), "device", card.get("device"), "best", run["best"])
assert len(run["history"]) == 3, run["history"]
assert all(h["train_loss"] == h["train_loss"] for h in run["history"]), "NaN loss"
PY

step "3D DenseNet-121, CUDA, mixed precision"
profile amp3d 3d "[32, 32, 32]" densenet121 true 1
run "$py" -m medadapt.engine train -p "$WORK/amp3d.yaml" --out "$WORK/amp3d"

step "adapt on CUDA with mixed precision: every method, auto, DEV selection"
profile target 2d "[48, 48]" resnet18 true 2
sed -i 's/scanner: siemens-smooth-standard-dose/scanner: ge-sharp-low-dose/; s/seed: 3, slices/seed: 4, slices/' "$WORK/target.yaml"
printf 'selection: {score: dev}\n' >>"$WORK/target.yaml"
run "$py" -m medadapt.engine adapt -p "$WORK/target.yaml" --from "$WORK/amp2d/model" \
  --source-profile "$WORK/amp2d.yaml" --method auto --out "$WORK/adapt"
run "$py" -c "import json,sys; s=json.load(open('$WORK/adapt/adapt.json')); print(s['kept'], {m: round(f['score_mean'], 4) for m, f in s['methods'].items()})"

step "NCCL: torchrun, one process per GPU"
profile nccl 2d "[48, 48]" small-cnn true 1
run "$py" -m torch.distributed.run --standalone --nproc_per_node=1 -m medadapt.engine train \
  -p "$WORK/nccl.yaml" --out "$WORK/nccl"
run grep -h '"world_size"' "$WORK/nccl/run.json"

step "the test suite with the GPU visible"
run "$py" -m pytest -q -x -p no:cacheprovider tests/test_training.py tests/test_batchnorm.py \
  tests/test_augmentations.py tests/test_adaptation_methods.py tests/test_adapt_job.py
step "done: status $status"
exit $status
