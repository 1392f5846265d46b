#!/usr/bin/env bash
# Create or update the LiteRT converter environment (.venv-litert, or $COMPRESS_LITERT_VENV) from the pinned
# requirements.txt beside this script. compress's --litert runs tools/litert/convert.py in it. Safe to run again:
# it does nothing when the environment already matches requirements.txt (the stamp requirements.sha256 says so).
#
# Why a separate environment: litert-torch pins torch<2.15 and pulls jax and transformers (about 75 packages,
# 2 GB); compress's own environment needs none of them. Its torch is the CPU-only build (no CUDA libraries).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${COMPRESS_LITERT_VENV:-$(cd "$here/../.." && pwd)/.venv-litert}"
requirements="$here/requirements.txt"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/requirements.sha256" 2>/dev/null)" = "$want" ]; then
  echo "setup.sh: $venv is up to date"
  exit 0
fi
python="${PYTHON:-python3}"
rm -f "$venv/requirements.sha256"  # stays absent unless this run completes
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
echo "setup.sh: installing the LiteRT converter into $venv (a few minutes the first time)"
# Every package is pinned, dependencies included, so --no-deps installs exactly the list; pip check proves
# the list is complete and consistent.
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$requirements"
"$venv/bin/python" -m pip check --disable-pip-version-check
echo "$want" > "$venv/requirements.sha256"
echo "setup.sh: ready: $venv"
