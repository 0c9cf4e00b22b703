#!/usr/bin/env bash
# Multi-node DDP with torchrun. Run the same command on every node, e.g. two nodes of 4 GPUs:
#
#   node 0:  NNODES=2 NODE_RANK=0 MASTER_ADDR=gpu-node-0 JOB_ID=mnist-42 scripts/torchrun_multinode.sh experiment=fast
#   node 1:  NNODES=2 NODE_RANK=1 MASTER_ADDR=gpu-node-0 JOB_ID=mnist-42 scripts/torchrun_multinode.sh experiment=fast
#
# Every node needs the repository with `make install` done, the MNIST files (CONVLENS_DATA_DIR)
# and the same MLFLOW_TRACKING_URI, a tracking server (`make up` or `make server`): global rank 0
# alone logs, so the job is one MLflow run. JOB_ID names the Hydra output folder, the same on every
# node; keep it on a shared file system to resume with ckpt_path=<folder>/checkpoints/last.ckpt.
# PIPELINE=release runs the whole release pipeline instead of pipelines.train (on rank 0).
# GPUS_PER_NODE defaults to the GPUs nvidia-smi lists; on CPUs: GPUS_PER_NODE=2 and the extra
# override trainer.accelerator=cpu (the way the tests exercise this script's DDP path).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${NNODES:?set NNODES, the number of nodes}"
: "${NODE_RANK:?set NODE_RANK, the rank of this node, from 0 to NNODES-1}"
: "${MASTER_ADDR:?set MASTER_ADDR, the host name of node 0}"
: "${JOB_ID:?set JOB_ID, the same on every node (it names the output folder)}"
GPUS_PER_NODE="${GPUS_PER_NODE:-$(nvidia-smi --list-gpus | wc -l)}"
uri="${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}"
if [[ "$uri" == sqlite:* ]]; then
  # A local store (one node only): create it before several processes open it at once.
  uv run --frozen python -c "import sys, mlflow; mlflow.MlflowClient(sys.argv[1]).search_experiments()" "$uri"
fi
exec uv run --frozen torchrun \
  --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$GPUS_PER_NODE" \
  --master-addr "$MASTER_ADDR" --master-port "${MASTER_PORT:-29500}" \
  -m "pipelines.${PIPELINE:-train}" trainer=ddp_multinode "hydra.run.dir=outputs/torchrun/$JOB_ID" "$@"
