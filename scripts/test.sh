#!/usr/bin/env bash
# The whole test suite, from a fresh machine: setup, format and lint checks, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TERM_COLOR=never
echo "[test] cargo fmt --check"
cargo fmt --all -- --check

# Clippy runs as the compiler of our own crates while the tests are built, instead of as a
# separate `cargo clippy` pass: the same lints on the same targets (--all-targets) with
# warnings denied, but every dependency is compiled once instead of twice (a separate check
# pass cost about four minutes on 2 cores). This is what `cargo clippy` itself does, with
# `cargo check` in place of the build. Plain `cargo test` afterwards recompiles our crates
# (not the dependencies) without the lints.
clippy_driver="$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver)"
export RUSTC_WORKSPACE_WRAPPER="$clippy_driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
echo "[test] cargo build --workspace --all-targets (with clippy, -D warnings)"
cargo test --workspace --all-targets --no-run 2>&1
echo "[test] cargo test"
cargo test --workspace 2>&1
