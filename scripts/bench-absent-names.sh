#!/usr/bin/env bash
# bench-absent-names.sh [STOREFS]: what a lookup of a name absent inside a store path costs, the
# first time and again (docs/PERFORMANCE.md, "Absent names"). Mounts STOREFS (default: the
# release build in this tree) over the quick bench fixture (`scripts/bench.sh --quick` builds it),
# served on loopback by Python's http.server, and stats 20,000 absent names in the stdlib path,
# three passes. As root.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$REPO/target/release/storefs}
FIXTURE=/var/tmp/storefs-bench-quick
die() { echo "bench-absent-names: $*" >&2; exit 1; }
[[ -x $BIN ]] || die "$BIN: not an executable (cargo build --release, or name a storefs binary)"
[[ -s $FIXTURE/fixture.env ]] || die "no fixture in $FIXTURE: run scripts/bench.sh --quick --reps 1 first"
# shellcheck disable=SC1091
source "$FIXTURE/fixture.env"
WORK=$(mktemp -d /var/tmp/storefs-absent.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    mountpoint -q "$WORK/mnt" && umount -l "$WORK/mnt"
    rm -rf "$WORK"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$FIXTURE/caches" && exec python3 -m http.server "$PORT" --bind 127.0.0.1 >"$WORK/http.log" 2>&1) &
PIDS+=($!)
mkdir -p "$WORK/mnt"
"$BIN" mount "$WORK/mnt" --cache-dir "$WORK/cache" --nix-conf /dev/null \
    --substituter "http://127.0.0.1:$PORT/zstd" --trusted-public-key "$PUBLIC_KEY" \
    --control-socket "$WORK/sock" >"$WORK/storefs.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 200); do mountpoint -q "$WORK/mnt" && break; sleep 0.05; done
mountpoint -q "$WORK/mnt" || { cat "$WORK/storefs.log" >&2; die "storefs did not mount"; }
python3 - "$WORK/mnt/$(basename "$STDLIB")" <<'PY'
import os, sys, time
d = sys.argv[1]
os.listdir(d)  # the path is fetched and looked up first
for p in range(3):
    t = time.perf_counter()
    for i in range(20000):
        try:
            os.stat(f"{d}/absent-{i}.cpython-311-x86_64-linux-gnu.so")
        except FileNotFoundError:
            pass
        else:
            sys.exit(f"absent-{i} exists?")
    print(f"pass {p + 1}: {(time.perf_counter() - t) * 1e6 / 20000:.2f} us per absent name")
PY
