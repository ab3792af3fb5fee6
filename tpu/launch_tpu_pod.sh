#!/usr/bin/env bash
# Run `seisfuse train` on every worker of a Cloud TPU VM pod slice (e.g. v4-32, v5p-64).
# JAX discovers the pod topology itself; each worker feeds its own slice of the global batch.
#
#   TPU_NAME=my-pod ZONE=us-central2-b ./tpu/launch_tpu_pod.sh configs/mae_pretrain.py:large gs://bucket/runs/sfm-large \
#       --mesh.fsdp=-1 --mesh.data=1
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
CONFIG=${1:?config, e.g. configs/mae_pretrain.py:large}
WORKDIR=${2:?workdir (a gs:// path shared by all workers)}
shift 2
REPO=${REPO:-https://github.com/your-org/seisfuse.git}
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  [ -d seisfuse ] || git clone $REPO seisfuse
  cd seisfuse && git pull --ff-only
  pip install -q -e . 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
  seisfuse train --config $CONFIG --workdir $WORKDIR --resume $*
"
