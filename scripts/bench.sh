#!/usr/bin/env bash
# storefs side-by-side benchmark: storefs against Nix's own substitution and the local disk.
# Run as root on a host where scripts/install-deps.sh ran. `scripts/bench.sh --help` for options;
# docs/PERFORMANCE.md explains the method and records results.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench.sh [OPTIONS]   (as root)

Builds storefs (cargo build --release), builds a realistic fixture closure with real Nix, serves
its binary cache with nginx in a network namespace behind a 100 Mbit/s tc-tbf veth link plus a
delaying TCP proxy (~20 ms round trip), and measures, side by side, with medians over repetitions:
  a. cold job    (import modules from two Python trees) storefs vs nix-store -r + the same job
  b. cold full read of the whole closure                storefs vs nix-store -r
  c. warm reads: read every file (page cache dropped, then again with it hot), and find + stat,
     through storefs vs the same tree in /nix/store
  d. upstream requests and bytes (nginx access log)     e. storefs peak RSS (VmHWM)
Prints one table with medians and ratios.

Options:
  --reps N            repetitions of every measurement (default 3)
  --quick             small fixture (a few site-packages, 20-path chain) for a fast trial run
  --dir DIR           fixture directory, cached between runs with a stamp
                      (default /var/tmp/storefs-bench, or /var/tmp/storefs-bench-quick)
  --compression C     which cache to serve: zstd (default) or none (both are built)
  --rate RATE         tc tbf rate of the link (default 100mbit)
  --delay-ms MS       one-way delay added by the proxy in each direction (default 10 = 20 ms RTT)
  --only LETTERS      run only these measurements, e.g. --only ab (cold runs only, no page-cache
                      drops) or --only c (the storefs full read still fills the cache first)
                      (default abc; d and e come with them)
  --storefs-args ARGS extra flags for `storefs mount`, e.g. "--prefetch-jobs 0" (word-split)
  --no-drop-caches    do not drop the page cache before warm measurements
  --same-fs           keep every run's store (Nix's) and cache (storefs's) in the work directory
                      on /var/tmp, instead of a fresh ext4 filesystem (a loop-mounted sparse
                      image) per run; see "fresh filesystems" in docs/PERFORMANCE.md
  --write-doc FILE    also write the results section of docs/PERFORMANCE.md to FILE
  --site-layout L     per-package (default: one store path per site-packages entry) or one-path
                      (the whole tree as ONE store path, issue 14's worst case); its own fixture
                      directory (default DIR gets the suffix -one-path)
  --indexed           serve a copy of the cache prepared by `storefs index` (signed with the
                      fixture's key): Nix and path-level storefs read it as before, and row a
                      adds a cold job through storefs with --trusted-index-key (file-level), its
                      bytes against the job's, and a NarHash check of every path read through
                      that mount after the job (nix-hash); and the same with a warm list
                      learned first from one cold run of the job (--record-reads, then
                      storefs index --warm-list on a hard-linked copy of the indexed cache)
  --storefs PATH      measure this storefs binary instead of building one (e.g. an older
                      release, to compare before and after a change on the same fixture)
  -h, --help          this help

Environment: BENCH_PYTHON_HOME (default /root/.pyenv/versions/3.11.*, else /usr) picks the Python
whose lib/python3.11 is the stdlib tree and whose bin/python3.11 runs the job;
BENCH_SITE_PACKAGES overrides the site-packages tree.
EOF
}

REPS=3 QUICK=0 DIR="" COMPRESSION=zstd RATE=100mbit DELAY_MS=10 DROP=1 WRITE_DOC="" ONLY=abc SF_ARGS=""
STOREFS_GIVEN="" SITE_LAYOUT=per-package INDEXED=0 FRESH_FS=1
while (($#)); do
    case $1 in
        --reps) REPS=${2:?--reps needs N}; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --dir) DIR=${2:?--dir needs DIR}; shift 2 ;;
        --compression) COMPRESSION=${2:?}; shift 2 ;;
        --rate) RATE=${2:?}; shift 2 ;;
        --delay-ms) DELAY_MS=${2:?}; shift 2 ;;
        --only) ONLY=${2:?--only needs letters from abc}; shift 2 ;;
        --storefs-args) SF_ARGS=${2?--storefs-args needs a value}; shift 2 ;;
        --no-drop-caches) DROP=0; shift ;;
        --same-fs) FRESH_FS=0; shift ;;
        --write-doc) WRITE_DOC=${2:?}; shift 2 ;;
        --site-layout) SITE_LAYOUT=${2:?--site-layout needs per-package or one-path}; shift 2 ;;
        --storefs) STOREFS_GIVEN=${2:?}; shift 2 ;;
        --indexed) INDEXED=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench: unknown option $1 (see --help)" >&2; exit 1 ;;
    esac
done
[[ $ONLY =~ ^[abc]+$ ]] || { echo "bench: --only takes letters from abc, not '$ONLY'" >&2; exit 1; }
want() { [[ $ONLY == *$1* ]]; }
[[ $REPS =~ ^[1-9][0-9]*$ ]] || { echo "bench: --reps must be a positive integer" >&2; exit 1; }
[[ $COMPRESSION == zstd || $COMPRESSION == none ]] || { echo "bench: --compression is zstd or none" >&2; exit 1; }
[[ $SITE_LAYOUT == per-package || $SITE_LAYOUT == one-path ]] || { echo "bench: --site-layout is per-package or one-path" >&2; exit 1; }
if [[ -z $DIR ]]; then
    if ((QUICK)); then DIR=/var/tmp/storefs-bench-quick; else DIR=/var/tmp/storefs-bench; fi
    [[ $SITE_LAYOUT == per-package ]] || DIR=$DIR-$SITE_LAYOUT
fi

T0=$(date +%s)
log() { printf '[bench %4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() { printf 'bench: ERROR: %s\n' "$*" >&2; exit 1; }
now_ns() { date +%s%N; }

[[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces, mounts, Nix's store)"
REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd -P)
for t in nix-store nix-build nix nginx ip tc unshare findmnt flock python3 cargo mountpoint; do
    command -v "$t" >/dev/null || [[ $t == nginx && -x /usr/sbin/nginx ]] ||
        die "$t not found (run scripts/install-deps.sh)"
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[[ -c /dev/fuse ]] || die "/dev/fuse is missing"

# ---------------------------------------------------------------------------------------------
# 0. storefs, release build
if [[ -n $STOREFS_GIVEN ]]; then
    STOREFS=$(readlink -f "$STOREFS_GIVEN")
    [[ -x $STOREFS ]] || die "--storefs $STOREFS_GIVEN: not an executable file"
    log "measuring $STOREFS (--storefs; not building)"
else
    log "building storefs (cargo build --release --locked in $REPO)"
    (cd "$REPO" && cargo build --release --locked --quiet) || die "cargo build --release failed"
    STOREFS=$REPO/target/release/storefs
    [[ -x $STOREFS ]] || die "no $STOREFS after the build"
fi

# ---------------------------------------------------------------------------------------------
# 1. The fixture, built by real Nix (single-user, no substituters, no sandbox).
unset NIX_REMOTE NIX_CONFIG NIX_PATH
NIXOPTS=(--option substituters '' --option build-users-group '' --option sandbox false)

PYHOME=${BENCH_PYTHON_HOME:-}
if [[ -z $PYHOME ]]; then
    for c in /root/.pyenv/versions/3.11.*; do [[ -x $c/bin/python3.11 ]] && PYHOME=$c; done
fi
[[ -n $PYHOME ]] || PYHOME=/usr
PYTHON=$PYHOME/bin/python3.11
STDLIB_SRC=$PYHOME/lib/python3.11
[[ -x $PYTHON && -f $STDLIB_SRC/os.py ]] || die "no Python 3.11 with its stdlib at $PYHOME (set BENCH_PYTHON_HOME)"
SITE_SRC=${BENCH_SITE_PACKAGES:-$STDLIB_SRC/site-packages}
[[ -d $SITE_SRC ]] || SITE_SRC=""

# The job's imports: stdlib modules and site-packages modules (each must be importable).
JOB_STDLIB="json email.parser email.mime.multipart http.client urllib.request asyncio decimal xml.etree.ElementTree argparse logging.handlers csv sqlite3 ssl unittest.mock concurrent.futures dataclasses typing zipfile tarfile"
JOB_SITE="click attr yaml dateutil certifi charset_normalizer idna urllib3 markupsafe jinja2 requests six"
JOB_SITE_ENTRIES="click attr yaml _yaml dateutil certifi charset_normalizer idna urllib3 markupsafe jinja2 requests six.py"

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd -P)
BB=$(readlink -f "${STOREFS_BUSYBOX:-/bin/busybox}")
[[ -x $BB ]] && ! ldd "$BB" >/dev/null 2>&1 || die "a static busybox is needed at $BB (apt-get install busybox-static)"

# Large tree: one store path per top-level site-packages entry (as nixpkgs has one path per
# Python package) and an environment path of symlinks to them. Full run: the whole
# site-packages minus the biggest entries until ~300 MB; quick run: the job's entries only.
SYNTH=${BENCH_SYNTHETIC:-0}
if ((!SYNTH)) && [[ -n $SITE_SRC ]] && (($(du -sm "$SITE_SRC" | cut -f1) >= 250)); then
    if ((QUICK)); then
        # The job's entries and the top-level extension modules (charset_normalizer needs mypyc's).
        SITE_INCLUDE="$JOB_SITE_ENTRIES $(cd "$SITE_SRC" && ls -d -- *.so 2>/dev/null | tr '\n' ' ')"
    else
        # Drop the biggest entries until about 400 MB (du) remain: about 300 MiB of NAR.
        total=$(du -sm "$SITE_SRC" | cut -f1)
        SITE_EXCLUDE=""
        while read -r mb name; do
            ((total <= 400)) && break
            case " $JOB_SITE_ENTRIES " in *" $name "*) continue ;; esac
            SITE_EXCLUDE+=" $name"; total=$((total - mb))
        done < <(cd "$SITE_SRC" && du -sm -- * | sort -rn)
        SITE_INCLUDE=""
        for e in "$SITE_SRC"/*; do
            n=$(basename "$e")
            case " $SITE_EXCLUDE " in *" $n "*) continue ;; esac
            SITE_INCLUDE+=" $n"
        done
    fi
else
    # No big site-packages here (or BENCH_SYNTHETIC=1): a deterministic synthetic tree of the same
    # shape, 120 packages of 333 files (~300 MB, ~40,000 files); the job imports some of them.
    SYNTH=1 SITE_SRC=""
    npk=120; ((QUICK)) && npk=6
    SITE_INCLUDE=$(for ((i = 0; i < npk; i++)); do printf 'synthpkg%03d ' "$i"; done)
    JOB_SITE=$(for i in 000 001 002 003; do printf 'synthpkg%s ' "$i"; for m in 000 010 020 030 040 050; do printf 'synthpkg%s.mod_%s ' "$i" "$m"; done; done)
    log "no site-packages of >= 250 MB at ${BENCH_SITE_PACKAGES:-$STDLIB_SRC/site-packages}${BENCH_SYNTHETIC:+ (or BENCH_SYNTHETIC set)}: using a synthetic package tree"
fi
NAMES_NIX="[ $(for n in $SITE_INCLUDE; do [[ $n == .* || $n == __pycache__ ]] || printf '"%s" ' "$n"; done)]"
CHAIN_LEN=80
((QUICK)) && CHAIN_LEN=20

# The fixture is rebuilt when its expression, its inputs or FIXTURE_VERSION (bump it when
# build_fixture changes) change.
FIXTURE_VERSION=2
FIXTURE_KEY=$(printf '%s\n' "$FIXTURE_VERSION" "$(sha256sum "$REPO/scripts/bench-fixture.nix" | cut -d' ' -f1)" \
    "$PYHOME" "$SITE_SRC" "$NAMES_NIX" "$CHAIN_LEN" "$SITE_LAYOUT" | sha256sum | cut -d' ' -f1)

fixture_fresh() {
    [[ -f $DIR/stamp && $(head -n1 "$DIR/stamp") == "$FIXTURE_KEY" && -f $DIR/fixture.env ]] || return 1
    mapfile -t _p <"$DIR/closure.txt"
    nix-store --check-validity "${_p[@]}" >/dev/null 2>&1
}

build_fixture() {
    log "fixture: building with $(nix-store --version) into $DIR (stdlib $STDLIB_SRC, site-packages ${SITE_SRC:-synthetic}, chain $CHAIN_LEN)"
    rm -f "$DIR/stamp"
    cp "$REPO/scripts/bench-fixture.nix" "$DIR/fixture.nix"
    printf '%s\n' "$NAMES_NIX" >"$DIR/names.nix"
    local top
    top=$(nix-build -Q --quiet --option max-jobs 2 "$DIR/fixture.nix" -o "$DIR/gcroot-top" \
        --argstr busyboxSrc "$BB" --argstr stdlibSrc "$STDLIB_SRC" --argstr siteSrc "$SITE_SRC" \
        --argstr namesFile "$DIR/names.nix" --argstr chainLen "$CHAIN_LEN" \
        --argstr siteLayout "$SITE_LAYOUT" "${NIXOPTS[@]}") || die "nix-build of the fixture failed"
    log "fixture: built $top"
    nix-store -qR "$top" | LC_ALL=C sort >"$DIR/closure.txt"
    mkdir -p "$DIR/keys"
    [[ -s $DIR/keys/secret ]] ||
        nix-store --generate-binary-cache-key storefs-bench-1 "$DIR/keys/secret" "$DIR/keys/public"
    rm -rf "$DIR/caches"; mkdir -p "$DIR/caches"
    local c pids=()
    for c in zstd none; do
        log "fixture: nix copy to the $c cache"
        nix --extra-experimental-features nix-command copy "${NIXOPTS[@]}" \
            --to "file://$DIR/caches/$c?compression=$c&secret-key=$DIR/keys/secret" "$top" \
            >"$DIR/copy-$c.log" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || { cat "$DIR"/copy-*.log >&2; die "nix copy failed"; }; done
    local n_ni n_cl
    n_cl=$(wc -l <"$DIR/closure.txt")
    for c in zstd none; do
        n_ni=$(find "$DIR/caches/$c" -maxdepth 1 -name '*.narinfo' | wc -l)
        ((n_ni == n_cl)) || die "cache $c has $n_ni narinfos for $n_cl closure paths"
    done
    {
        printf "TOP='%s'\n" "$top"
        sed "s/=\(.*\)/='\1'/" "$top/paths"
        printf "PUBLIC_KEY='%s'\n" "$(cat "$DIR/keys/public")"
    } >"$DIR/fixture.env"
    printf '%s\nbuilt %s\n' "$FIXTURE_KEY" "$(date -u +%FT%TZ)" >"$DIR/stamp"
}

if fixture_fresh; then
    log "fixture: up to date in $DIR"
else
    exec 9>"$DIR/.lock"; flock 9
    fixture_fresh || build_fixture
fi
# shellcheck disable=SC1091
source "$DIR/fixture.env"
mapfile -t CLOSURE <"$DIR/closure.txt"
NPATHS=${#CLOSURE[@]}
CLOSURE_BYTES=$(nix-store -q --size "${CLOSURE[@]}" | awk '{s += $1} END {print s}')
CLOSURE_FILES=$(find "${CLOSURE[@]}" -type f | wc -l)
STDLIB_FILES=$(find "$STDLIB" -type f | wc -l); STDLIB_MB=$(du -sm "$STDLIB" | cut -f1)
SITE_FILES=$(find -L "$SITE" -type f | wc -l); SITE_MB=$(du -smL "$SITE" | cut -f1)
# The indexed copy of the served cache, made again when the fixture or storefs changed.
CACHE_SUB=$COMPRESSION
if ((INDEXED)); then
    CACHE_SUB=$COMPRESSION-indexed
    IX_KEY=$(printf '%s\n' "$FIXTURE_KEY" "$(sha256sum "$STOREFS" | cut -d' ' -f1)" | sha256sum | cut -d' ' -f1)
    if [[ $(cat "$DIR/caches/$CACHE_SUB/.indexed" 2>/dev/null) != "$IX_KEY" ]]; then
        log "fixture: storefs index of a copy of the $COMPRESSION cache"
        rm -rf "$DIR/caches/$CACHE_SUB"
        cp -a "$DIR/caches/$COMPRESSION" "$DIR/caches/$CACHE_SUB"
        t_ix=$(date +%s%N)
        "$STOREFS" index "$DIR/caches/$CACHE_SUB" --secret-key-file "$DIR/keys/secret" >"$DIR/index.log" 2>&1 ||
            { cat "$DIR/index.log" >&2; die "storefs index failed"; }
        log "fixture: indexed in $((($(date +%s%N) - t_ix) / 1000000)) ms: $(tail -n1 "$DIR/index.log")"
        echo "$IX_KEY" >"$DIR/caches/$CACHE_SUB/.indexed"
    fi
fi
log "fixture: $NPATHS paths, $((CLOSURE_BYTES / 1048576)) MiB (NAR), $CLOSURE_FILES files; stdlib $STDLIB_MB MB / $STDLIB_FILES files; site-packages $SITE_MB MB / $SITE_FILES files"

# ---------------------------------------------------------------------------------------------
# 2. Network: nginx in a namespace, tbf on both ends of a veth pair, delaying proxy on the host.
#    job/storefs/nix (host) -> 127.0.0.1:PROXY (delay-proxy, host ns, +DELAY each way)
#      -> veth sfbh<ID> 10.213.X.1 ==tbf RATE== sfbn<ID> 10.213.X.2 (netns) -> nginx :8080
ID=$$
NS=storefs-bench-$ID
VH=sfbh$((ID % 100000)) VN=sfbn$((ID % 100000))
OCT=$((ID % 250 + 1))
HOST_IP=10.213.$OCT.1 NS_IP=10.213.$OCT.2
WORK=$(mktemp -d /var/tmp/storefs-bench-run.XXXXXX)
PIDS_TO_STOP=()
MOUNTS_TO_DROP=()
cleanup() {
    local rc=$?
    set +e
    for m in "${MOUNTS_TO_DROP[@]}"; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
    for p in "${PIDS_TO_STOP[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS_TO_STOP[@]}"; do wait "$p" 2>/dev/null; done
    ip link del "$VH" 2>/dev/null
    ip netns del "$NS" 2>/dev/null
    rm -rf "$WORK"
    ((rc == 0)) || log "failed (exit $rc); cleaned up"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # DESC DEADLINE_S CMD...: polls CMD every 50 ms until it succeeds or the deadline passes
    local desc=$1 deadline=$(($(date +%s) + $2)); shift 2
    until "$@" >/dev/null 2>&1; do
        (($(date +%s) < deadline)) || die "timed out waiting for $desc"
        sleep 0.05
    done
}

log "network: namespace $NS, veth $VH ($HOST_IP) <-> $VN ($NS_IP), tbf $RATE each way"
ip netns add "$NS" || die "ip netns add $NS"
ip link add "$VH" type veth peer name "$VN" || die "ip link add veth"
ip link set "$VN" netns "$NS" || die "moving $VN into $NS"
ip addr add "$HOST_IP/30" dev "$VH" && ip link set "$VH" up || die "configuring $VH"
ip -n "$NS" addr add "$NS_IP/30" dev "$VN" && ip -n "$NS" link set "$VN" up && ip -n "$NS" link set lo up ||
    die "configuring $VN in $NS"
# tbf: burst 64 KiB, at most 50 ms of queueing; on both sides (download is nginx -> host).
tc qdisc add dev "$VH" root tbf rate "$RATE" burst 64kb latency 50ms || die "tc tbf on $VH"
tc -n "$NS" qdisc add dev "$VN" root tbf rate "$RATE" burst 64kb latency 50ms || die "tc tbf on $VN in $NS"

NGX=$WORK/nginx
mkdir -p "$NGX"
cat >"$NGX/nginx.conf" <<EOF
user root;
daemon off;
master_process off;
worker_processes 1;
pid $NGX/nginx.pid;
error_log $NGX/error.log info;
events { worker_connections 1024; }
http {
    default_type application/octet-stream;
    types { text/x-nix-narinfo narinfo; }
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_timeout 75s; keepalive_requests 100000;
    client_body_temp_path $NGX/cb; proxy_temp_path $NGX/px; fastcgi_temp_path $NGX/fc;
    uwsgi_temp_path $NGX/uw; scgi_temp_path $NGX/sc;
    log_format bench '\$request\t\$status\t\$body_bytes_sent';
    access_log $NGX/access.log bench;
    server {
        listen $NS_IP:8080;
        root $DIR/caches;
        location = /__ready { access_log off; return 200 "ready"; }
    }
}
EOF
ip netns exec "$NS" "$NGINX" -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/error.log" 2>"$NGX/stderr.log" &
PIDS_TO_STOP+=($!)
http_ok() { python3 - "$1" <<'PY'
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).read() == b"ready" else 1)
PY
}
wait_for "nginx on $NS_IP:8080 (see $NGX/error.log)" 20 http_ok "http://$NS_IP:8080/__ready"
python3 "$REPO/scripts/delay-proxy.py" 127.0.0.1:0 "$NS_IP:8080" "$DELAY_MS" "$WORK/proxy.port" 2>"$WORK/proxy.log" &
PIDS_TO_STOP+=($!)
wait_for "the delaying proxy's port file" 20 test -s "$WORK/proxy.port"
PROXY_PORT=$(cat "$WORK/proxy.port")
CACHE_URL=http://127.0.0.1:$PROXY_PORT/$CACHE_SUB
wait_for "nginx through the proxy" 20 http_ok "http://127.0.0.1:$PROXY_PORT/__ready"
rtt_ms=$(python3 - "$PROXY_PORT" <<'PY'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
best = 1e9
for _ in range(5):
    t = time.monotonic()
    s.sendall(b"GET /__ready HTTP/1.1\r\nHost: x\r\n\r\n")
    buf = b""
    while not buf.endswith(b"ready"):
        buf += s.recv(4096)
    best = min(best, time.monotonic() - t)
print(f"{best * 1000:.1f}")
PY
)
log "network: cache $CACHE_URL, measured HTTP round trip ${rtt_ms} ms"

ACCESS=$NGX/access.log
log_reset() { : >"$ACCESS"; }
log_count() { # prints "REQUESTS BYTES" since the last reset (nginx logs a request when it ends)
    awk -F'\t' '{n++; b += $3} END {printf "%d %d\n", n, b}' "$ACCESS"
}

# ---------------------------------------------------------------------------------------------
# 3. Measurements.
PY_JOB="import sys, importlib
mods = '$JOB_STDLIB $JOB_SITE'.split()
for m in mods:
    importlib.import_module(m)
io = dict(l.split(': ') for l in open('/proc/self/io').read().splitlines())
print(len(mods), 'modules; rchar', io['rchar'].strip())"
# run_job STORE_DIR: runs the job in a private mount namespace whose /nix/store is STORE_DIR.
run_job() {
    unshare -m --propagation private env -i PATH=/usr/bin:/bin PYTHONDONTWRITEBYTECODE=1 \
        PYTHONHOME="$PYHOME_STORE" PYTHONPATH="$SITE" PYTHONNOUSERSITE=1 \
        bash -c 'mount --bind "$1" /nix/store && shift && exec "$@"' _ "$1" \
        "$PYTHON" -c "$PY_JOB" >>"$WORK/job.out" 2>&1 || { cat "$WORK/job.out" >&2; die "the job failed on $1"; }
}
PYHOME_STORE=$(sed -n "s/^PYHOME='\(.*\)'/\1/p" "$DIR/fixture.env")
# Sanity: the job runs against the local /nix/store.
run_job /nix/store
JOB_RCHAR=$(tail -n1 "$WORK/job.out" | awk '{print $NF}')
log "job: $(tail -n1 "$WORK/job.out") (reads ~$((JOB_RCHAR * 1000 / CLOSURE_BYTES / 10)).$((JOB_RCHAR * 1000 / CLOSURE_BYTES % 10))% of the closure's bytes)"

SF_PID=""
start_storefs() { # MNT CACHE [EXTRA FLAGS...]
    mkdir -p "$1"
    "$STOREFS" mount "$1" --cache-dir "$2" --nix-conf /dev/null --substituter "$CACHE_URL" \
        --trusted-public-key "$PUBLIC_KEY" --max-size 50G --min-free 0 --negative-ttl 0 \
        --control-socket "$WORK/storefs.sock" $SF_ARGS "${@:3}" >>"$WORK/storefs.log" 2>&1 &
    SF_PID=$!
    PIDS_TO_STOP+=("$SF_PID"); MOUNTS_TO_DROP+=("$1")
    local deadline=$(($(date +%s) + 20))
    until [[ $(findmnt -n -o FSTYPE --mountpoint "$1" 2>/dev/null) == fuse* ]] && stat -f "$1" >/dev/null 2>&1; do
        kill -0 "$SF_PID" 2>/dev/null || { tail -n 30 "$WORK/storefs.log" >&2; die "storefs exited before mounting $1"; }
        (($(date +%s) < deadline)) || { tail -n 30 "$WORK/storefs.log" >&2; die "storefs did not mount $1 within 20 s"; }
        sleep 0.02
    done
}
stop_storefs() { # MNT
    kill "$SF_PID" 2>/dev/null || true
    local deadline=$(($(date +%s) + 20))
    while kill -0 "$SF_PID" 2>/dev/null; do
        (($(date +%s) < deadline)) || { kill -9 "$SF_PID"; break; }
        sleep 0.02
    done
    wait "$SF_PID" 2>/dev/null || true
    mountpoint -q "$1" && umount -l "$1"
    SF_PID=""
}
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$SF_PID/status"; }
nix_subst() { # ROOT: Nix's own substitution of the top path's closure into a fresh chroot store
    XDG_CACHE_HOME=$1.xdg nix-store -r --store "$1" \
        --option build-users-group '' --option sandbox false --option substituters "$CACHE_URL" \
        --option trusted-public-keys "$PUBLIC_KEY" --option narinfo-cache-negative-ttl 0 \
        "$TOP" >"$1.log" 2>&1 || { tail -n 20 "$1.log" >&2; die "nix-store -r into $1 failed"; }
}
read_all() { # DIR...: reads every file (following the closure's paths), prints bytes read
    find "$@" -type f -print0 | xargs -0 -r cat | wc -c
}
find_stat() { find "$@" -printf '%s %m %T@\n' | wc -l; }  # find + stat (lstat) of every entry
drop_caches() { ((DROP)) && sync && echo 3 >/proc/sys/vm/drop_caches; return 0; }
# Before each timed cold run: the previous run's writes (its cache, deleted or not) are flushed
# first, so that neither this run's fsyncs (Nix syncs each path) nor its reads wait for them.
settle() { sync; }
# fresh_fs NAME: sets FS to an empty directory for one run's store or cache: by default the root
# of a new ext4 filesystem (an 8 GiB sparse image, loop-mounted). Nix's store and storefs's cache
# each start on one, as on a fresh CI host: on a filesystem the earlier runs filled and emptied,
# every later run creates its tens of thousands of inodes slower (ext4 without a journal scans
# recently freed inodes), and Nix, which creates the most, slowed from 14 to 37 s over six runs.
# drop_fs NAME: unmounts and deletes it.
fresh_fs() {
    FS=$WORK/fs-$1
    mkdir -p "$FS"
    ((FRESH_FS)) || return 0
    truncate -s 8G "$FS.img" && mkfs.ext4 -q -F "$FS.img" && mount -o loop "$FS.img" "$FS" ||
        die "cannot make a fresh ext4 filesystem at $FS (loop devices needed; or --same-fs)"
    MOUNTS_TO_DROP+=("$FS")
}
drop_fs() {
    local fs=$WORK/fs-$1
    if ((FRESH_FS)); then
        umount "$fs" 2>/dev/null || umount -l "$fs"
        rm -f "$fs.img"
    fi
    rm -rf "$fs"
}
ms_since() { echo $((($(now_ns) - $1) / 1000000)); }

declare -A R  # R[metric]="v1 v2 ..."
add() { R[$1]="${R[$1]:-} $2"; }

# narhash_check MNT VAR: every closure path read through mount MNT must hash to its NarHash
# (else the bench stops); VAR is set to what was checked.
narhash_check() {
    local p want_hash got_hash bad=0
    for p in "${CLOSURE[@]}"; do
        want_hash=$(sed -n 's/^NarHash: sha256://p' "$DIR/caches/$CACHE_SUB/$(basename "$p" | cut -c1-32).narinfo")
        got_hash=$(nix-hash --type sha256 --base32 "$1/$(basename "$p")")
        [[ $got_hash == "$want_hash" ]] || { bad=$((bad + 1)); log "NarHash differs: $p"; }
    done
    ((bad == 0)) || die "$bad paths read through the file-level mount at $1 differ from their NarHash"
    printf -v "$2" '%s' "$NPATHS of $NPATHS paths"
}

# file_level_job PREFIX URL CHECK: one cold job through a file-level mount of the cache at
# URL, on a fresh filesystem; its time, requests and bytes are added as PREFIX_job_*. In the
# first repetition, every path read through that mount is then checked against its NarHash,
# and the result set in the variable named CHECK.
file_level_job() {
    log_reset
    fresh_fs "$1"; settle; t=$(now_ns)
    CACHE_URL=$2 start_storefs "$R_DIR/mnt" "$FS/sfcache" --trusted-index-key "$PUBLIC_KEY"
    run_job "$R_DIR/mnt"
    add "$1_job_ms" "$(ms_since "$t")"
    read -r n b < <(log_count); add "$1_job_req" "$n"; add "$1_job_bytes" "$b"
    if ((rep == 1)); then
        log "rep $rep/$REPS:    every path read through this mount hashes to its NarHash?"
        narhash_check "$R_DIR/mnt" "$3"
    fi
    stop_storefs "$R_DIR/mnt"; drop_fs "$1"
}

# The learned warm list (--indexed): one cold job through a file-level mount of the indexed
# cache logs the files it opens (--record-reads), and `storefs index --warm-list` writes them
# into the indexes of a copy of that cache (hard links; only indexes are written anew). The
# "warm list" runs read that copy: a fleet learns the list once, then every cold host uses it.
if ((INDEXED)) && want a; then
    WARM_SUB=$CACHE_SUB-warm
    WARM_URL=http://127.0.0.1:$PROXY_PORT/$WARM_SUB
    log "fixture: learning a warm list: one cold file-level job with --record-reads"
    rm -rf "$DIR/caches/$WARM_SUB"
    cp -al "$DIR/caches/$CACHE_SUB" "$DIR/caches/$WARM_SUB"
    fresh_fs learn
    start_storefs "$WORK/learn-mnt" "$FS/sfcache" --trusted-index-key "$PUBLIC_KEY" \
        --record-reads "$WORK/reads.log"
    run_job "$WORK/learn-mnt"
    stop_storefs "$WORK/learn-mnt"; drop_fs learn
    "$STOREFS" index "$DIR/caches/$WARM_SUB" --secret-key-file "$DIR/keys/secret" \
        --warm-list "$WORK/reads.log" >"$WORK/warm-index.log" 2>&1 ||
        { cat "$WORK/warm-index.log" >&2; die "storefs index --warm-list failed"; }
    log "fixture: warm list of $(wc -l <"$WORK/reads.log") files: $(tail -n1 "$WORK/warm-index.log")"
fi

# Row c for PREFIX (sf or nat) over the trees DIR...: every file read with the page cache dropped
# (ms, MiB/s), read again with it hot (MiB/s), then find + stat with it dropped (ms).
warm_reads() {
    local prefix=$1 t got ms; shift
    drop_caches; t=$(now_ns); got=$(read_all "$@"); ms=$(ms_since "$t")
    add "${prefix}_warm_ms" "$ms"; add "${prefix}_warm_mbs" "$((got * 1000 / (ms + 1) / 1048576))"
    t=$(now_ns); got=$(read_all "$@"); ms=$(ms_since "$t")
    add "${prefix}_hot_mbs" "$((got * 1000 / (ms + 1) / 1048576))"
    drop_caches; t=$(now_ns); find_stat "$@" >/dev/null; add "${prefix}_stat_ms" "$(ms_since "$t")"
}

# The closure's paths under mountpoint $1, the top path first: a job starts from its entry point
# (the top path), as `nix-store -r TOP` does, and then reads its way through the closure.
mnt_paths() {
    local p
    printf '%s/%s\n' "$1" "$(basename "$TOP")"
    for p in "${CLOSURE[@]}"; do [[ $p == "$TOP" ]] || printf '%s/%s\n' "$1" "$(basename "$p")"; done
}

for rep in $(seq 1 "$REPS"); do
    R_DIR=$WORK/rep$rep; mkdir -p "$R_DIR"
    if want a; then
        log "rep $rep/$REPS: a. cold job through storefs"
        log_reset
        fresh_fs sf-a; settle; t=$(now_ns)
        start_storefs "$R_DIR/mnt" "$FS/sfcache"
        run_job "$R_DIR/mnt"
        add sf_job_ms "$(ms_since "$t")"
        read -r n b < <(log_count); add sf_job_req "$n"; add sf_job_bytes "$b"
        stop_storefs "$R_DIR/mnt"; drop_fs sf-a

        if ((INDEXED)); then
            log "rep $rep/$REPS: a. cold job through storefs, file-level (--trusted-index-key)"
            file_level_job sf_ix "$CACHE_URL" NARHASH_CHECK
            log "rep $rep/$REPS: a. cold job through storefs, file-level with the learned warm list"
            file_level_job sf_wl "$WARM_URL" NARHASH_CHECK_WL
        fi

        log "rep $rep/$REPS: a. cold job with Nix (nix-store -r, then the job)"
        log_reset
        fresh_fs nix-a; settle; t=$(now_ns)
        nix_subst "$FS/nixroot-a"
        run_job "$FS/nixroot-a/nix/store"
        add nix_job_ms "$(ms_since "$t")"
        read -r n b < <(log_count); add nix_job_req "$n"; add nix_job_bytes "$b"
        drop_fs nix-a
    fi

    if want b || want c; then
        log "rep $rep/$REPS: b. cold full read through storefs"
        log_reset
        fresh_fs sf-b; settle; t=$(now_ns)
        start_storefs "$R_DIR/mnt" "$FS/sfcache"
        mapfile -t MP < <(mnt_paths "$R_DIR/mnt")
        got=$(read_all "${MP[@]}")
        add sf_full_ms "$(ms_since "$t")"
        read -r n b < <(log_count); add sf_full_req "$n"; add sf_full_bytes "$b"
        log "rep $rep/$REPS:    read $((got / 1048576)) MiB"
    fi

    if want c; then
        log "rep $rep/$REPS: c. warm reads through storefs (page cache $( ((DROP)) && echo dropped || echo kept))"
        warm_reads sf "${MP[@]}"
    fi
    if want b || want c; then
        add sf_hwm_kb "$(hwm_kb)"
        log_reset
        stop_storefs "$R_DIR/mnt"; drop_fs sf-b
    fi

    if want c; then
        log "rep $rep/$REPS: c. warm reads on the local disk (/nix/store)"
        warm_reads nat "${CLOSURE[@]}"
    fi

    if want b; then
        log "rep $rep/$REPS: b. cold full copy with Nix (nix-store -r)"
        log_reset
        fresh_fs nix-b; settle; t=$(now_ns)
        nix_subst "$FS/nixroot-b"
        add nix_full_ms "$(ms_since "$t")"
        read -r n b < <(log_count); add nix_full_req "$n"; add nix_full_bytes "$b"
        drop_fs nix-b
    fi
    rm -rf "$R_DIR"
done

# ---------------------------------------------------------------------------------------------
# 4. The table.
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR] = $1} END {if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else print int((a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
M() { local m; m=$(median <<<"${R[$1]:-}"); echo "${m:--}"; }
# Measurements left out with --only show as "-".
ratio() { [[ $1 == - || $2 == - ]] && { echo -; return; }; awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
mib() { [[ $1 == - ]] && { echo -; return; }; awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
kib_mib() { [[ $1 == - ]] && { echo -; return; }; awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
sec() { [[ $1 == - ]] && { echo -; return; }; awk -v m="$1" 'BEGIN { printf "%.2f s", m / 1000 }'; }

MACHINE="$(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)), $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
DATE=$(date -u +%FT%TZ)
TABLE=$(
    echo "| measurement | storefs | baseline | ratio | target |"
    echo "|---|---|---|---|---|"
    echo "| a. cold job (s), vs Nix substitution + job | $(sec "$(M sf_job_ms)") | $(sec "$(M nix_job_ms)") | $(ratio "$(M sf_job_ms)" "$(M nix_job_ms)") | <= 0.75 |"
    if ((INDEXED)); then
        echo "| a. cold job, file-level (--trusted-index-key) (s), vs Nix substitution + job | $(sec "$(M sf_ix_job_ms)") | $(sec "$(M nix_job_ms)") | $(ratio "$(M sf_ix_job_ms)" "$(M nix_job_ms)") | <= 0.15 |"
        echo "| a. MiB downloaded, cold job, file-level, vs MiB the job reads (rchar) | $(mib "$(M sf_ix_job_bytes)") | $(mib "$JOB_RCHAR") | $(ratio "$(M sf_ix_job_bytes)" "$JOB_RCHAR") | <= 3 |"
        echo "| a. requests, cold job, file-level, vs Nix | $(M sf_ix_job_req) | $(M nix_job_req) | $(ratio "$(M sf_ix_job_req)" "$(M nix_job_req)") | |"
        echo "| a. cold job, file-level with a learned warm list (s), vs Nix substitution + job | $(sec "$(M sf_wl_job_ms)") | $(sec "$(M nix_job_ms)") | $(ratio "$(M sf_wl_job_ms)" "$(M nix_job_ms)") | <= 0.15 |"
        echo "| a. MiB downloaded, cold job, file-level with a warm list, vs MiB the job reads (rchar) | $(mib "$(M sf_wl_job_bytes)") | $(mib "$JOB_RCHAR") | $(ratio "$(M sf_wl_job_bytes)" "$JOB_RCHAR") | <= 3 |"
        echo "| a. requests, cold job, file-level with a warm list, vs Nix | $(M sf_wl_job_req) | $(M nix_job_req) | $(ratio "$(M sf_wl_job_req)" "$(M nix_job_req)") | |"
    fi
    echo "| b. cold full read (s), vs Nix substitution | $(sec "$(M sf_full_ms)") | $(sec "$(M nix_full_ms)") | $(ratio "$(M sf_full_ms)" "$(M nix_full_ms)") | <= 1.05 |"
    echo "| c. warm read throughput, page cache $( ((DROP)) && echo dropped || echo kept) (MiB/s), vs local disk | $(M sf_warm_mbs) | $(M nat_warm_mbs) | $(ratio "$(M sf_warm_mbs)" "$(M nat_warm_mbs)") | >= 0.9 |"
    echo "| c. warm read throughput, page cache hot (read again, MiB/s), vs local disk | $(M sf_hot_mbs) | $(M nat_hot_mbs) | $(ratio "$(M sf_hot_mbs)" "$(M nat_hot_mbs)") | >= 0.9 |"
    echo "| c. warm find + stat (s), vs local disk | $(sec "$(M sf_stat_ms)") | $(sec "$(M nat_stat_ms)") | $(ratio "$(M sf_stat_ms)" "$(M nat_stat_ms)") | <= 1.5 |"
    echo "| d. requests, cold job, vs Nix | $(M sf_job_req) | $(M nix_job_req) | $(ratio "$(M sf_job_req)" "$(M nix_job_req)") | |"
    echo "| d. MiB downloaded, cold job, vs Nix | $(mib "$(M sf_job_bytes)") | $(mib "$(M nix_job_bytes)") | $(ratio "$(M sf_job_bytes)" "$(M nix_job_bytes)") | |"
    echo "| d. requests, full read, vs Nix | $(M sf_full_req) | $(M nix_full_req) | $(ratio "$(M sf_full_req)" "$(M nix_full_req)") | |"
    echo "| d. MiB downloaded, full read, vs Nix | $(mib "$(M sf_full_bytes)") | $(mib "$(M nix_full_bytes)") | $(ratio "$(M sf_full_bytes)" "$(M nix_full_bytes)") | |"
    echo "| e. storefs peak RSS (VmHWM, MiB) after full + warm reads | $(kib_mib "$(M sf_hwm_kb)") | | | < 150 |"
)
RAW=$(for k in $(printf '%s\n' "${!R[@]}" | sort); do printf '%-14s %s\n' "$k" "${R[$k]}"; done)
FIXDESC="$NPATHS store paths, $(mib "$CLOSURE_BYTES") MiB of NARs, $CLOSURE_FILES files: Python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])') stdlib ($STDLIB_MB MB, $STDLIB_FILES files), $( ((SYNTH)) && echo "synthetic site-packages" || echo site-packages) ($SITE_MB MB, $SITE_FILES files, $( [[ $SITE_LAYOUT == one-path ]] && echo "the whole tree as one store path" || echo "one store path per top-level entry")), a chain of $CHAIN_LEN small paths; cache compression $COMPRESSION"
SETUP="$( ((INDEXED)) && echo "cache indexed by storefs index (every NarHash checked through the file-level mount after the job: ${NARHASH_CHECK:-not run}; and through the mount with the warm list: ${NARHASH_CHECK_WL:-not run}); warm list learned from one cold run of the same job (--record-reads, then storefs index --warm-list); ")link $RATE (tc tbf) + ${DELAY_MS} ms each way (delay proxy; measured HTTP round trip ${rtt_ms} ms); $REPS repetitions, medians; $( ((FRESH_FS)) && echo 'each run on a fresh ext4 filesystem' || echo 'every run on /var/tmp'); page cache $( ((DROP)) && echo 'dropped before each warm measurement' || echo 'kept')${SF_ARGS:+; storefs flags: $SF_ARGS}"
echo
echo "storefs benchmark, $DATE"
echo "machine: $MACHINE"
echo "fixture: $FIXDESC"
echo "setup:   $SETUP"
echo "job:     imports $(wc -w <<<"$JOB_STDLIB $JOB_SITE") modules, reads $(mib "$JOB_RCHAR") MiB (rchar)"
echo
echo "$TABLE"
echo
echo "raw values (ms, MiB/s, bytes, KiB) per repetition:"
echo "$RAW"
if [[ -n $WRITE_DOC ]]; then
    {
        echo "Run on $DATE, \`scripts/bench.sh --reps $REPS$( ((QUICK)) && echo ' --quick')$( ((INDEXED)) && echo ' --indexed')$( [[ $SITE_LAYOUT != per-package ]] && echo " --site-layout $SITE_LAYOUT")$( [[ $COMPRESSION != zstd ]] && echo " --compression $COMPRESSION")\`."
        echo
        echo "- Machine: $MACHINE"
        echo "- Fixture: $FIXDESC"
        echo "- Setup: $SETUP"
        echo "- Job: imports $(wc -w <<<"$JOB_STDLIB $JOB_SITE") modules, reads $(mib "$JOB_RCHAR") MiB (rchar, $(ratio "$((JOB_RCHAR * 100))" "$CLOSURE_BYTES")% of the closure's bytes)"
        echo
        echo "$TABLE"
        echo
        echo "Raw values per repetition (ms, MiB/s, bytes, KiB):"
        echo
        echo '```'
        echo "$RAW"
        echo '```'
    } >"$WRITE_DOC"
    log "wrote $WRITE_DOC"
fi
log "done"
