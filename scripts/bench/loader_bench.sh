#!/usr/bin/env bash
# Loader benchmark: training samples (512x512 patches with labels and AIS targets) per second on
# one loader worker, from 2048x2048 16-bit TIFFs, uncompressed and deflate, warm and cold page
# cache, and the image read alone as a patch (only the strips it crosses) against the whole
# image. Run by hand on an idle machine:
#
#   scripts/bench/loader_bench.sh [N_IMAGES] [READS]     # defaults 16 and 24
#
# The images are written once to target/bench-loader/ and reused. See
# crates/sam-data/examples/bench_loader.rs for what each column measures.
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "$(date -u +%F) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
cargo run --release -q -p sam-data --example bench_loader -- target/bench-loader "${1:-16}" "${2:-24}"
