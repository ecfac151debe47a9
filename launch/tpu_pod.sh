#!/usr/bin/env bash
# Training on a Cloud TPU VM pod slice: runs the same command on every worker (--worker=all).
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [MAIN_ARGS...]
#
#   TPU_NAME  the pod slice (e.g. created with `gcloud compute tpus tpu-vm create`)
#   ZONE      its zone
#   CONFIG    config file, e.g. configs/cifar.py
#   WORKDIR   a gs:// bucket path or a shared file system every worker sees
#   rest:     extra arguments for `python -m ucsh_jax.main`
# Expects this repository checked out at ~/ucsh-jax on every worker with
# `pip install -r requirements.txt "jax[tpu]"` done (see the README). jax.distributed finds the
# pod's workers from the TPU VM environment.
set -euo pipefail
tpu="${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [MAIN_ARGS...]}"
zone="${2:?zone}"
config="${3:?config}"
workdir="${4:?workdir}"
shift 4
extra=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command \
  "cd ~/ucsh-jax && python3 -m ucsh_jax.main --config=$config --workdir=$workdir$extra"
