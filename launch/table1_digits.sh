#!/usr/bin/env bash
# Every row of the paper's Table 1 (and TBH, GreedyHash, Bi-half) on the built-in digits, no
# download: the shallow baselines, then each method's `configs/<method>.py:digits`
# (configs/digits.py for UCSH), one workdir each under ROOT, collected by `ucsh_jax.tables`
# into ROOT/results.md.
#
#   launch/table1_digits.sh ROOT
#
# Environment (optional): BITS (default 16), METHODS (default every method, in the order of
# `ucsh_jax.methods.NAMES`), PYTHON (default python). A run whose workdir already holds its
# results is skipped, so the script can simply be started again.
set -euo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: launch/table1_digits.sh ROOT" >&2
  exit 2
fi
root="$1"
python="${PYTHON:-python}"
read -r -a bits_list <<< "${BITS:-16}"
methods="${METHODS:-$("$python" -c 'from ucsh_jax import methods; print(*methods.NAMES)')}"

bits_csv="$(IFS=,; echo "${bits_list[*]}")"
if [[ ! -f "$root/baselines/baselines.json" ]]; then
  "$python" -m ucsh_jax.baselines --config=configs/digits.py --workdir="$root/baselines" \
    --bits="$bits_csv"
fi
for method in $methods; do
  config="configs/${method}.py:digits"
  if [[ "$method" == ucsh ]]; then
    config=configs/digits.py
  fi
  for bits in "${bits_list[@]}"; do
    workdir="$root/${method}_$bits"
    if [[ ! -f "$workdir/results.json" ]]; then
      "$python" -m ucsh_jax.main --config="$config" --workdir="$workdir" --config.bits="$bits"
    fi
  done
done
"$python" -m ucsh_jax.tables "$root"
