#!/usr/bin/env bash
# One-time (and idempotent) setup: Debian packages the build needs, the repo's .venv with the
# pinned PyTorch wheel (libtorch for tch) and the Python packages the tests use for reference
# fixtures. Fast when everything is already there.
#
#   scripts/setup.sh            # setup for build, demo and tests
#   scripts/setup.sh --bench    # also the Python peers the benchmarks compare against
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0          # bump together with tch in Cargo.toml
TORCHVISION_VERSION=0.26.0
PYTHON=${PYTHON:-python3}
BENCH=0
[ "${1:-}" = "--bench" ] && BENCH=1

log() { printf '[setup] %s\n' "$*"; }

# --- Debian packages --------------------------------------------------------------------------
need_apt=()
for pkg in libgloo-dev libfontconfig1-dev libfreetype-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
        log "missing Debian packages: ${need_apt[*]} (run as root or install them)"; exit 1
    fi
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    log "installing Debian packages: ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# --- Python virtual environment ---------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
pyver=$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if [ "$pyver" != "3.11" ]; then
    # .cargo/config.toml points LIBTORCH at .venv/lib/python3.11/site-packages/torch.
    log "warning: .venv uses Python $pyver; .cargo/config.toml expects python3.11 (set LIBTORCH)"
fi

stamp=.venv/.sam_trainer_setup
want="torch=$TORCH_VERSION tv=$TORCHVISION_VERSION $(sha256sum scripts/requirements-test.txt | cut -c1-16)"
[ $BENCH = 1 ] && want="$want bench=$(sha256sum scripts/requirements-bench.txt | cut -c1-16)"
if [ -f "$stamp" ] && grep -qxF "$want" "$stamp" 2>/dev/null; then
    log "python environment up to date"
else
    have=$($PY -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
    if [ "$have" != "$TORCH_VERSION" ]; then
        log "installing torch==$TORCH_VERSION (about 3 GB, a minute or two)"
        $PY -m pip install -q --upgrade pip
        $PY -m pip install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    fi
    log "installing test fixture packages"
    $PY -m pip install -q -r scripts/requirements-test.txt "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    if [ $BENCH = 1 ]; then
        log "installing benchmark peers"
        $PY -m pip install -q -r scripts/requirements-bench.txt "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    fi
    echo "$want" > "$stamp"
fi
log "ok: $(cat "$stamp")"
