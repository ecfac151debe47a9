#!/usr/bin/env bash
# Set-up for running and testing: a virtual environment with requirements.txt installed (and
# checked by `pip check`), then Debian's `chromium` package when no `chromium` is on PATH (the
# tests render the search page and the report in headless Chromium).
#
#   ./setup.sh [VENV]    # VENV defaults to .venv in the repository root
set -euo pipefail
root="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$root/.venv}"

python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r "$root/requirements.txt"
"$venv/bin/python" -m pip check

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "error: chromium is not installed and installing it needs root:" \
         "run 'apt-get install chromium' as root" >&2
    exit 2
  fi
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
chromium="$(command -v chromium)" || {
  echo "error: apt-get installed chromium but no chromium is on PATH" >&2
  exit 2
}
echo "set up: $venv (activate it: source $venv/bin/activate) and $chromium"
