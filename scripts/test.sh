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

step "lint: systemd unit (systemd-analyze verify) and Dockerfile (hadolint)"
cargo build --locked --quiet
unit_dir=$(mktemp -d)
sed "s#/usr/local/bin/storefs#$PWD/target/debug/storefs#" systemd/storefs.service >"$unit_dir/storefs.service"
systemd-analyze verify "$unit_dir/storefs.service"
rm -rf "$unit_dir"
hadolint Dockerfile
echo "unit and Dockerfile clean"

step "Docker build context: the crate builds from exactly the files the Dockerfile copies"
scripts/docker-context-build.sh

step "fixture closure (real Nix)"
tests/fixtures/build.sh "${STOREFS_FIXTURES_DIR:-/var/tmp/storefs-fixtures}"

step "cargo test (unit, property, CLI and real-FUSE tests)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --features fuse_tests -- --test-threads "${STOREFS_TEST_THREADS:-2}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo's last line is the empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "\nstorefs: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
