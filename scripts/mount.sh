#!/usr/bin/env bash
# Installs what storefs needs, builds it, and mounts a lazy /nix/store in the foreground
# (Ctrl-C unmounts). Arguments are passed to `storefs mount`; with none it mounts /nix/store from
# the substituters in /etc/nix/nix.conf, or cache.nixos.org with its key.
#   scripts/mount.sh
#   scripts/mount.sh /tmp/store --cache-dir /tmp/storefs-cache --max-size 5G
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >&2
cargo build --locked --release >&2
exec "${CARGO_TARGET_DIR:-target}/release/storefs" mount "$@"
