#!/usr/bin/env bash
# Set up compress on a Debian machine: the Fashion-MNIST data set from Debian, and a virtual
# environment (.venv) with the package. With --test, also what the test suite drives for real:
# Chromium (browser checks), QEMU + debootstrap (the emulated Raspberry Pi check) and the web
# page's npm packages. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")"

tests=0
case "${1:-}" in
  --test) tests=1 ;;
  "") ;;
  *) echo "usage: ./install.sh [--test]" >&2; exit 2 ;;
esac

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

packages="dataset-fashion-mnist python3-venv"
[ "$tests" -eq 1 ] && packages="$packages chromium qemu-user-static debootstrap"
command -v npm >/dev/null 2>&1 || { [ "$tests" -eq 1 ] && packages="$packages nodejs npm"; }
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "install.sh: installing Debian packages:$missing"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q $missing
fi

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

if [ "$tests" -eq 1 ]; then
  npm ci --prefix edge_demo/web --no-audit --no-fund --loglevel=error
fi
echo "install.sh: ready. Run: .venv/bin/compress run mobilenet_v3 --prune 0.5 --int8"
