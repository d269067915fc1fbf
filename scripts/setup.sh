#!/usr/bin/env bash
# One-time (and idempotent) setup: Debian packages the build needs, the repo's .venv with the
# pinned PyTorch wheel (libtorch for tch) and the Python packages the tests use for reference
# fixtures. Fast when everything is already there.
#
#   scripts/setup.sh                 # setup for build, demo and tests
#   scripts/setup.sh --cuda 12.6     # the torch build for CUDA 12.6 (for older NVIDIA drivers)
#   scripts/setup.sh --bench         # also the Python peers the benchmarks compare against
#   scripts/setup.sh --print-plan    # print what would be installed, change nothing
#
# --cuda 12.6|12.8|13.0 picks the CUDA build of torch 2.11.0 (README, "GPUs"):
#   13.0  PyPI's torch==2.11.0 (2.11.0+cu130)           NVIDIA driver >= 580
#   12.8  torch==2.11.0+cu128, download.pytorch.org     >= 570.26 (>= 525.60.13 with CUDA
#   12.6  torch==2.11.0+cu126, download.pytorch.org     >= 560.28.03   minor-version compatibility)
# Without --cuda the build of the last setup is kept (the first setup takes 13.0), so that
# test.sh and demo.sh keep a CUDA 12 build. A different choice uninstalls torch and its nvidia
# packages and installs the other build, with the CUDA headers crates/sam-torch needs for NCCL.
# Every CUDA build also runs on CPU. After a change, rebuild: cargo build (sam-torch relinks).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0          # bump together with tch in Cargo.toml
TORCHVISION_VERSION=0.26.0
PYTHON=${PYTHON:-python3}
BENCH=0
PRINT_PLAN=0
CUDA=""

log() { printf '[setup] %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --bench) BENCH=1 ;;
        --print-plan) PRINT_PLAN=1 ;;
        --cuda) [ $# -ge 2 ] || die "--cuda needs a version: 12.6, 12.8 or 13.0"; CUDA=$2; shift ;;
        --cuda=*) CUDA=${1#--cuda=} ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (scripts/setup.sh --help)" ;;
    esac
    shift
done

# --- Which CUDA build -------------------------------------------------------------------------
stamp=.venv/.sam_trainer_setup
if [ -n "$CUDA" ]; then
    cuda_from="--cuda"
else
    # The stamp records torch=2.11.0+cu126: keep that build.
    [ -f "$stamp" ] && CUDA=$(sed -n 's/^torch=[^ ]*+cu\([0-9]*\)\([0-9]\) .*/\1.\2/p' "$stamp" | head -n 1)
    cuda_from="kept from the last setup; --cuda changes it"
    [ -n "$CUDA" ] || { CUDA=13.0; cuda_from="default: PyPI's wheel"; }
fi
case "$CUDA" in
    13.0) tag=cu130; index=""
          headers=("nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*")
          driver=">= 580" ;;
    12.8) tag=cu128; index=https://download.pytorch.org/whl/cu128
          headers=("nvidia-cuda-nvcc-cu12==12.8.*" "nvidia-cuda-cccl-cu12==12.8.*")
          driver=">= 570.26 (>= 525.60.13 with CUDA minor-version compatibility)" ;;
    12.6) tag=cu126; index=https://download.pytorch.org/whl/cu126
          headers=("nvidia-cuda-nvcc-cu12==12.6.*" "nvidia-cuda-cccl-cu12==12.6.*")
          driver=">= 560.28.03 (>= 525.60.13 with CUDA minor-version compatibility)" ;;
    *) die "--cuda '$CUDA': expected 12.6, 12.8 or 13.0 (the CUDA builds of torch $TORCH_VERSION)" ;;
esac
want_torch="$TORCH_VERSION+$tag"      # torch.__version__ of that build
if [ -z "$index" ]; then
    # PyPI's torch carries no local version in its metadata (2.11.0), only in torch.__version__.
    pins=("torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION")
    torch_index=()
    extra_index=()
else
    pins=("torch==$TORCH_VERSION+$tag" "torchvision==$TORCHVISION_VERSION+$tag")
    torch_index=(--index-url "$index")
    # pip's rule for the extra index (the best version of each package over both indexes), not
    # uv's default (every package from the first index that has it).
    extra_index=(--extra-index-url "$index" --index-strategy unsafe-best-match)
fi

PY=.venv/bin/python
# uv installs the wheels (in parallel, hard-linked from its cache at ~/.cache/uv or $UV_CACHE_DIR):
# the 3 GB torch install takes seconds instead of pip's minute and a half. It is pinned and
# lives in .venv, installed there by the venv's own pip.
UV_VERSION=0.13.9
PIP=(.venv/bin/uv pip)
want="torch=$want_torch tv=$TORCHVISION_VERSION $(cat scripts/requirements-test.txt scripts/requirements-test-nodeps.txt | sha256sum | cut -c1-16)"
[ $BENCH = 1 ] && want="$want bench=$(sha256sum scripts/requirements-bench.txt | cut -c1-16)"

if [ $PRINT_PLAN = 1 ]; then
    # Shell-quoted, so each line can be pasted.
    q() { printf '%q ' "$@" | sed 's/ $//'; }
    echo "cuda: $CUDA ($cuda_from)"
    echo "torch: $want_torch"
    echo "nvidia driver: $driver"
    echo "install torch: $(q "${PIP[@]}" install ${torch_index[@]+"${torch_index[@]}"} "${pins[@]}")"
    echo "install headers: $(q "${PIP[@]}" install "${headers[@]}")"
    echo "install test packages: $(q "${PIP[@]}" install ${extra_index[@]+"${extra_index[@]}"} -r scripts/requirements-test.txt "${pins[@]}")"
    echo "install test packages without dependencies: $(q "${PIP[@]}" install --no-deps -r scripts/requirements-test-nodeps.txt)"
    [ $BENCH = 1 ] && echo "install bench packages: $(q "${PIP[@]}" install ${extra_index[@]+"${extra_index[@]}"} -r scripts/requirements-bench.txt "${pins[@]}")"
    echo "stamp: $want"
    exit 0
fi

# --- Debian packages --------------------------------------------------------------------------
need_apt=()
for pkg in libgloo-dev libfontconfig1-dev libfreetype-dev libjemalloc-dev chromium; do
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
pyver=$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
export VIRTUAL_ENV="$PWD/.venv"     # uv pip installs into the environment VIRTUAL_ENV names
# Byte-compile at install, as pip does (uv does not by default): otherwise every Python process
# of the tests compiles torch's modules again where PYTHONDONTWRITEBYTECODE is set, and the
# reference fixtures take twice as long.
export UV_COMPILE_BYTECODE=1
if [ "$(.venv/bin/uv --version 2>/dev/null | cut -d" " -f1,2)" != "uv $UV_VERSION" ]; then
    log "installing uv $UV_VERSION into .venv"
    "$PY" -m pip install -q "uv==$UV_VERSION"
fi
if [ "$pyver" != "3.11" ]; then
    # .cargo/config.toml points LIBTORCH at .venv/lib/python3.11/site-packages/torch.
    log "warning: .venv uses Python $pyver; .cargo/config.toml expects python3.11 (set LIBTORCH)"
fi

# jemalloc: the torch executables link Debian's static libjemalloc (tikv-jemalloc-sys reads
# JEMALLOC_OVERRIDE, set in .cargo/config.toml to this link) instead of building jemalloc from
# source in every clean build (its build script took 74 s of the suite's 2-core build).
jemalloc_a=$(dpkg -L libjemalloc-dev 2>/dev/null | grep '/libjemalloc_pic\.a$' | head -n 1 || true)
[ -n "$jemalloc_a" ] || die "libjemalloc-dev has no libjemalloc_pic.a (dpkg -L libjemalloc-dev)"
mkdir -p .venv/jemalloc
[ "$(readlink .venv/jemalloc/libjemalloc_pic.a 2>/dev/null)" = "$jemalloc_a" ] ||
    ln -sfn "$jemalloc_a" .venv/jemalloc/libjemalloc_pic.a

if [ -f "$stamp" ] && grep -qxF "$want" "$stamp" 2>/dev/null; then
    log "python environment up to date"
else
    have=$($PY -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
    if [ "$have" != "$want_torch" ]; then
        if [ -n "$have" ]; then
            # Another CUDA build: its nvidia packages would stay behind and shadow the new
            # ones' headers and libraries (both families install into site-packages/nvidia).
            log "replacing torch $have by $want_torch"
            mapfile -t old < <("${PIP[@]}" list --format=freeze 2>/dev/null |
                sed -n 's/^\(torch\|torchvision\|triton\|cuda-toolkit\|nvidia-[A-Za-z0-9_.-]*\)==.*/\1/p')
            [ ${#old[@]} -gt 0 ] && "${PIP[@]}" uninstall -q "${old[@]}"
        fi
        log "installing torch $want_torch (about 3 GB; NVIDIA driver $driver)"
        "${PIP[@]}" install -q ${torch_index[@]+"${torch_index[@]}"} "${pins[@]}"
    fi
    log "installing the CUDA headers sam-torch compiles NCCL against: ${headers[*]}"
    "${PIP[@]}" install -q "${headers[@]}"
    log "installing test fixture packages"
    "${PIP[@]}" install -q ${extra_index[@]+"${extra_index[@]}"} -r scripts/requirements-test.txt "${pins[@]}"
    "${PIP[@]}" install -q --no-deps -r scripts/requirements-test-nodeps.txt
    if [ $BENCH = 1 ]; then
        log "installing benchmark peers"
        "${PIP[@]}" install -q ${extra_index[@]+"${extra_index[@]}"} -r scripts/requirements-bench.txt "${pins[@]}"
    fi
    echo "$want" > "$stamp"
fi
log "ok: $(cat "$stamp") (CUDA $CUDA: NVIDIA driver $driver)"
