#!/usr/bin/env bash
# Starts N processes of the main job on this machine (127.0.0.1), CPU collectives, for testing
# multi-host code paths without a cluster.
#
#   launch/local.sh N [DEVICES_PER_PROCESS] -- --config=configs/test.py --workdir=/tmp/run
#
#   N                    number of processes (each is one "host")
#   DEVICES_PER_PROCESS  forced CPU devices per process (default 2)
#   after --              arguments for `python -m ucsh_jax.main`
# Environment: UCSH_PORT (coordinator port, default 12355), PYTHON (default python).
# Each process logs to stdout with a "[process i]" prefix; the script exits with the first
# non-zero exit status, and stops the other processes if one fails or on Ctrl-C.
set -euo pipefail
num_processes="${1:?usage: launch/local.sh N [DEVICES_PER_PROCESS] -- MAIN_ARGS...}"
shift
devices=2
if [[ $# -gt 0 && "$1" != "--" ]]; then devices="$1"; shift; fi
[[ $# -gt 0 && "$1" == "--" ]] && shift
port="${UCSH_PORT:-12355}"
python="${PYTHON:-python}"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

for ((i = 0; i < num_processes; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" \
  UCSH_COORDINATOR_ADDRESS="127.0.0.1:${port}" \
  UCSH_NUM_PROCESSES="${num_processes}" \
  UCSH_PROCESS_ID="${i}" \
    "$python" -m ucsh_jax.main "$@" > >(sed -u "s/^/[process ${i}] /") 2>&1 &
  pids+=($!)
done

status=0
for pid in "${pids[@]}"; do
  if ! wait "$pid"; then status=1; cleanup; fi
done
exit "$status"
