#!/usr/bin/env bash
# Fleet benchmark (docs/PERFORMANCE.md, "Fleets: origin cost against hosts"): 1, 4 and 16 storefs
# daemons, each in its own network namespace, read the fixture closure at once, directly from the
# origin and behind the shipped nginx and squid configurations (contrib/fleet/). Prints one
# Markdown table: origin requests and bytes, proxy requests, seconds.
#   sudo scripts/fleet-bench.sh
# It is the ignored test `fleet_bench` in tests/fleet.rs, so it shares the CI test's helpers.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $(id -u) -eq 0 ]] || { echo "fleet-bench: run as root (network namespaces and FUSE)" >&2; exit 1; }
scripts/install-deps.sh >&2
tests/fixtures/build.sh "${STOREFS_FIXTURES_DIR:-/var/tmp/storefs-fixtures}" >&2

out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! cargo test --locked --features fuse_tests --test fleet -- \
    --ignored --exact fleet_bench --nocapture --test-threads 1 >"$out"; then
    cat "$out" >&2
    echo "fleet-bench: the benchmark failed" >&2
    exit 1
fi
echo "fleet-bench: $(git rev-parse --short HEAD), $(nproc) cores, $(uname -r), debug build"
grep '^|' "$out"
