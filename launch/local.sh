#!/usr/bin/env bash
# Starts N processes of the main job on this machine (127.0.0.1) with CPU devices and gloo
# collectives: multi-host code paths (jax.distributed, host-sharded input, cross-process
# checkpoints) without a cluster.
#
#   launch/local.sh N [DEVICES_PER_PROCESS] -- --config=configs/test.py --workdir=/tmp/run
#
#   N                    number of processes (each plays one host)
#   DEVICES_PER_PROCESS  forced CPU devices per process (default 2)
#   after --             arguments for `python -m ucsh_jax.main`, the same for every process
# Environment: UCSH_PORT (coordinator port, default 12355), PYTHON (default python),
# XLA_FLAGS (kept; the device count is appended).
# Process i gets UCSH_COORDINATOR_ADDRESS=127.0.0.1:UCSH_PORT, UCSH_NUM_PROCESSES=N,
# UCSH_PROCESS_ID=i, JAX_PLATFORMS=cpu. Output lines are prefixed "[process i]". As soon as one
# process fails (or on Ctrl-C) the others are stopped and the script exits non-zero.
set -euo pipefail
usage="usage: launch/local.sh N [DEVICES_PER_PROCESS] -- MAIN_ARGS..."
num_processes="${1:?$usage}"
shift
devices=2
if [[ $# -gt 0 && "$1" != "--" ]]; then devices="$1"; shift; fi
[[ $# -gt 0 && "$1" == "--" ]] && shift
if ! [[ "$num_processes" =~ ^[1-9][0-9]*$ && "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "$usage (N=$num_processes and DEVICES_PER_PROCESS=$devices must be positive)" >&2
  exit 2
fi
port="${UCSH_PORT:-12355}"
python="${PYTHON:-python}"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

for ((i = 0; i < num_processes; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}" \
  UCSH_COORDINATOR_ADDRESS="127.0.0.1:${port}" \
  UCSH_NUM_PROCESSES="${num_processes}" \
  UCSH_PROCESS_ID="${i}" \
    "$python" -m ucsh_jax.main "$@" > >(sed -u "s/^/[process ${i}] /") 2>&1 &
  pids+=($!)
done

# A process that fails leaves the others blocked in a collective: stop them at once.
remaining=("${pids[@]}")
while ((${#remaining[@]})); do
  status=0
  wait -n -p finished "${remaining[@]}" || status=$?
  if ((status)); then
    echo "launch/local.sh: a process exited with status ${status}; stopping the others" >&2
    exit "$status"
  fi
  left=()
  for pid in "${remaining[@]}"; do [[ "$pid" == "$finished" ]] || left+=("$pid"); done
  remaining=("${left[@]}")
done
