#!/usr/bin/env bash
# Training on a Cloud TPU VM pod slice: runs the same command on every worker (--worker=all),
# one process per worker (host), each using all its TPU chips.
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [MAIN_ARGS...]
#   e.g. launch/tpu_pod.sh my-v4-32 us-central2-b configs/cifar.py /mnt/shared/cifar16
#
#   TPU_NAME   the pod slice (created with `gcloud compute tpus tpu-vm create`)
#   ZONE       its zone
#   CONFIG     config file, e.g. configs/cifar.py
#   WORKDIR    a directory every worker sees (an NFS/Filestore or gcsfuse mount): all workers
#              write the checkpoints there, worker 0 the splits, logs and results.json
#   MAIN_ARGS  extra arguments for `python -m ucsh_jax.main`, e.g. --config.bits=32
# Environment: UCSH_REPO, the checkout on the workers (default ~/ucsh-jax). Every worker needs
# that checkout and `pip install -r requirements.txt "jax[tpu]"` (see the README), and the data
# where the config points. The remote command sets UCSH_DISTRIBUTED=auto, so jax.distributed
# finds the pod's workers from the TPU VM metadata. Output of all workers comes back here;
# only worker 0 logs progress.
set -euo pipefail
usage="usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [MAIN_ARGS...]"
tpu="${1:?$usage}"
zone="${2:?$usage}"
config="${3:?$usage}"
workdir="${4:?$usage}"
shift 4
# The workers run in their own checkout on other machines: a relative workdir would name a
# different local folder on each. Give a path every worker mounts.
case "$workdir" in
  /*|gs://*) ;;
  *) echo "error: WORKDIR must be absolute (a file system every worker mounts), got '$workdir'" >&2
     exit 2 ;;
esac
repo="${UCSH_REPO:-~/ucsh-jax}"
args=$(printf ' %q' "--config=$config" "--workdir=$workdir" "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command \
  "cd $repo && UCSH_DISTRIBUTED=auto python3 -m ucsh_jax.main$args"
