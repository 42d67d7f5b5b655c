#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and property tests, and the real-kernel FUSE tests
# against caches made by real Nix and served by real nginx. Installs what it needs first.
#   scripts/test.sh            # as root (FUSE mounts and nix need it)
# Under CI=true a test that cannot run (no /dev/fuse, no nix) fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "dependencies"
scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --locked --all-targets --features fuse_tests -- -D warnings

step "fixture closure (real Nix)"
tests/fixtures/build.sh "${STOREFS_FIXTURES_DIR:-/var/tmp/storefs-fixtures}"

step "cargo test (unit, property, CLI and real-FUSE tests)"
cargo test --locked --features fuse_tests -- --test-threads "${STOREFS_TEST_THREADS:-2}"
