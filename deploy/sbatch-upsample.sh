#!/bin/bash
# A whole upsampling as ONE batch job: the scheduler and one GPU worker per GPU on the job's node
# (--cluster local-gpu). Submit with:  sbatch deploy/sbatch-upsample.sh RAW_URL OUT_URL MODEL_DIR
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

RAW=${1:?usage: sbatch sbatch-upsample.sh RAW_URL OUT_URL MODEL_DIR}
OUT=${2:?output URL}
MODEL=${3:?model directory (isovol train)}

# module load cuda/12.4               # site-specific
source "${ISOVOL_VENV:-$HOME/isovol/.venv}/bin/activate"

# workers' scratch on the node's local disk
cat > "$TMPDIR/isovol-gpu.yaml" <<YAML
local_directory: "$TMPDIR"
YAML

# GPU-sized blocks: 4 shards along Z per block, so each worker reads the next shard and writes the previous one
# while the GPU computes (deploy/README.md, "GPU workers")
isovol upsample "$RAW" "$OUT" --factor 8 --method dgean --model "$MODEL" \
    --cluster local-gpu --cluster-config "$TMPDIR/isovol-gpu.yaml" \
    --block-shape 256,1024,1024 --shard-shape 64,1024,1024 \
    --resume --no-progress
isovol status "$OUT"
