#!/usr/bin/env bash
# The main job end to end on a small built-in dataset, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release
echo "[demo] validating configs/demo_cpu.yaml"
target/release/sam-train validate configs/demo_cpu.yaml
