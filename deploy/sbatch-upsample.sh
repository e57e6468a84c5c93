#!/bin/bash
# A whole upsampling as ONE batch job: the scheduler and one GPU worker per GPU on the job's node
# (--cluster local-gpu). Submit with:  sbatch deploy/sbatch-upsample.sh RAW_URL OUT_URL MODEL_DIR [METHOD]
# MODEL_DIR is what `isovol train --method METHOD` made; METHOD defaults to d2r, as for isovol train (the block
# layout below is the GPU layout of the DGEAN family: d2r, dgean, sup-dgean, naive-lateral; `isovol methods`).
# Resubmitting after a timeout or node failure continues where it stopped (--resume skips finished blocks).
#
# For more GPUs than one node has, run isovol on a login node (or in a small CPU job) with
# --cluster slurm --cluster-config my-slurm.yaml instead: it submits one job per GPU worker (deploy/slurm.yaml).
#SBATCH --job-name=isovol
#SBATCH --nodes=1
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=32
#SBATCH --mem=256G
#SBATCH --time=12:00:00
#SBATCH --output=isovol-%j.log
set -euo pipefail

RAW=${1:?usage: sbatch sbatch-upsample.sh RAW_URL OUT_URL MODEL_DIR [METHOD]}
OUT=${2:?output URL}
MODEL=${3:?model directory (isovol train)}
METHOD=${4:-d2r}

# module load cuda/12.4               # site-specific
source "${ISOVOL_VENV:-$HOME/isovol/.venv}/bin/activate"

# workers' scratch on the node's local disk
cat > "$TMPDIR/isovol-gpu.yaml" <<YAML
local_directory: "$TMPDIR"
YAML

# GPU-sized blocks: 4 shards along Z per block, so each worker reads the next shard and writes the previous one
# while the GPU computes (deploy/README.md, "GPU workers")
isovol upsample "$RAW" "$OUT" --factor 8 --method "$METHOD" --model "$MODEL" \
    --cluster local-gpu --cluster-config "$TMPDIR/isovol-gpu.yaml" \
    --block-shape 256,1024,1024 --shard-shape 64,1024,1024 \
    --resume --no-progress
isovol status "$OUT"
