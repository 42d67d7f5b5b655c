#!/usr/bin/env bash
# Builds the storefs image from the Dockerfile and runs it as docs/OPERATIONS.md says, with no
# container registry: Debian's docker.io dockerd runs with its own data root and socket (no
# iptables, no bridge), the runtime base `debian:bookworm-slim` is a debootstrap tree from the
# Debian mirror (`docker import`), and the build base (`rust:1.95-bookworm`) is a stand-in made
# from it with gcc, the host's Rust toolchain and the host's crate cache (CARGO_NET_OFFLINE, so
# the build stage needs no network). Optional: not part of scripts/test.sh (it takes minutes
# and a release build); run it after changing the Dockerfile.
#   scripts/docker-image.sh [WORKDIR]      # as root; WORKDIR defaults to /var/tmp/storefs-docker
# The smoke test: the container mounts /nix/store, the mount reaches the host through the
# rshared bind of /nix, df shows the quota, a fixture path reads through the host's view (when
# tests/fixtures/build.sh has run), and `docker stop` unmounts it with exit code 0.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=${1:-/var/tmp/storefs-docker}
fixtures=${STOREFS_FIXTURES_DIR:-/var/tmp/storefs-fixtures}
toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
# The two bases, as the Dockerfile names them (build stage first).
build_base=$(awk 'toupper($1) == "FROM" { print $2; exit }' Dockerfile)
runtime_base=$(awk 'toupper($1) == "FROM" && ++n == 2 { print $2; exit }' Dockerfile)

say() { printf 'docker-image: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root"
[[ $runtime_base == debian:bookworm-slim && $build_base == rust:*-bookworm ]] ||
    die "the Dockerfile's bases ($build_base, $runtime_base) are not the ones this script makes"

for p in docker.io debootstrap; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || {
        say "installing $p"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$p" >/dev/null
    }
done

mkdir -p "$work"
sock=$work/docker.sock
export DOCKER_HOST=unix://$sock DOCKER_BUILDKIT=0
dockerd_pid=
host=$work/host
cleanup() {
    docker rm -f storefs-smoke >/dev/null 2>&1 || true
    if mountpoint -q "$host/nix/store"; then umount -l "$host/nix/store" || true; fi
    if mountpoint -q "$host"; then umount -l "$host" || true; fi
    if [[ -n $dockerd_pid ]]; then
        kill "$dockerd_pid" 2>/dev/null || true
        wait "$dockerd_pid" 2>/dev/null || true
        # dockerd leaves its network namespace bound in the exec root.
        if mountpoint -q "$work/exec/netns/default"; then umount "$work/exec/netns/default"; fi
    fi
}
trap cleanup EXIT

say "starting dockerd (data root $work/data, socket $sock)"
dockerd --data-root "$work/data" --exec-root "$work/exec" --pidfile "$work/dockerd.pid" \
    -H "unix://$sock" --iptables=false --ip6tables=false --bridge=none \
    >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 100); do docker version >/dev/null 2>&1 && break; sleep 0.2; done
docker version >/dev/null 2>&1 || die "dockerd did not start; see $work/dockerd.log"

if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
    if [[ ! -x $work/rootfs/bin/sh ]]; then
        say "debootstrap bookworm (minbase) into $work/rootfs"
        rm -rf "$work/rootfs"
        debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian \
            >"$work/debootstrap.log" 2>&1 || die "debootstrap failed; see $work/debootstrap.log"
    fi
    say "importing it as debian:bookworm-slim"
    tar -C "$work/rootfs" -c . | docker import - debian:bookworm-slim >/dev/null
fi

if ! docker image inspect "$build_base" >/dev/null 2>&1; then
    say "making the stand-in $build_base (the host's $toolchain toolchain and crate cache)"
    rustc_dir=$(rustup run "$toolchain" rustc --print sysroot)
    ctx=$work/rust-context
    rm -rf "$ctx"
    mkdir -p "$ctx/rust" "$ctx/registry"
    cp -al "$rustc_dir/bin" "$rustc_dir/lib" "$ctx/rust/" 2>/dev/null ||
        cp -a "$rustc_dir/bin" "$rustc_dir/lib" "$ctx/rust/"
    # Every crate Cargo.lock names, from the host's cache (cargo fetch fills it if needed).
    cargo fetch --locked --quiet
    cp -a "${CARGO_HOME:-$HOME/.cargo}/registry/cache" "${CARGO_HOME:-$HOME/.cargo}/registry/index" \
        "$ctx/registry/"
    cat >"$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev make ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY rust /usr/local/rust
COPY registry /usr/local/cargo/registry
ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_HOME=/usr/local/cargo CARGO_NET_OFFLINE=true
EOF
    docker build --network host -t "$build_base" "$ctx" >"$work/rust-base.log" 2>&1 ||
        die "building the rust stand-in failed; see $work/rust-base.log"
fi

say "docker build -t storefs . (release build; log in $work/build.log)"
start=$SECONDS
# --network host: only the runtime stage's apt-get needs the network (the Debian mirror).
# --cpu-shares: a quarter of the default weight, so a shared host stays usable meanwhile.
docker build --network host --cpu-shares 256 -t storefs "$repo" >"$work/build.log" 2>&1 ||
    { tail -20 "$work/build.log" >&2; die "docker build failed; see $work/build.log"; }
say "image built in $((SECONDS - start)) s"

# The smoke test, with the run line of docs/OPERATIONS.md. The host side lives under $host,
# made a shared mount of its own (rshared needs a shared host mount; / may be private here).
mkdir -p "$host/nix/store" "$host/cache"
chmod 0700 "$host/cache"
mountpoint -q "$host" || mount --bind "$host" "$host"
mount --make-rshared "$host"
args=(/nix/store --allow-other)
vols=(-v "$host/nix:/nix:rshared" -v "$host/cache:/var/cache/storefs")
fixture_path=
if [[ -f $fixtures/keys/public && -f $fixtures/closure.txt ]]; then
    vols+=(-v "$fixtures/caches:/caches:ro")
    args+=(--substituter file:///caches/zstd --trusted-public-key "$(cat "$fixtures/keys/public")")
    fixture_path=$(head -1 "$fixtures/closure.txt")
fi
docker run -d --name storefs-smoke --stop-timeout 60 \
    --device /dev/fuse --cap-add SYS_ADMIN --security-opt apparmor=unconfined \
    "${vols[@]}" storefs "${args[@]}" >/dev/null
for _ in $(seq 100); do
    [[ $(findmnt -n -o FSTYPE "$host/nix/store" 2>/dev/null) == fuse.storefs ]] && break
    sleep 0.2
done
[[ $(findmnt -n -o FSTYPE "$host/nix/store" 2>/dev/null) == fuse.storefs ]] ||
    { docker logs storefs-smoke >&2; die "the container's mount did not reach the host"; }
say "mounted; the host sees it: $(findmnt -n -o TARGET,FSTYPE "$host/nix/store")"
df -h "$host/nix/store" | sed 's/^/docker-image:   /'
if [[ -n $fixture_path ]]; then
    name=$(basename "$fixture_path")
    find "$host/nix/store/$name" -type f -exec cat {} + >/dev/null ||
        { docker logs storefs-smoke >&2; die "reading $name through the host failed"; }
    say "read $name through the host's /nix/store"
fi
docker stop storefs-smoke >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' storefs-smoke)
[[ $code == 0 ]] || { docker logs storefs-smoke >&2; die "storefs exited $code on docker stop"; }
! mountpoint -q "$host/nix/store" || die "the store is still mounted after docker stop"
say "docker stop: exit 0, /nix/store unmounted on the host"
say "ok"
