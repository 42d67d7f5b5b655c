#!/usr/bin/env bash
# Builds the crate from exactly the files the Dockerfile's build stage COPYs, laid out as the
# image's WORKDIR holds them, with `cargo build --locked --offline`: a file the build needs that
# the Dockerfile does not copy (benches/ for Cargo.toml's [[bench]] targets, say) fails here, the
# way `docker build` would fail, without Docker or a registry.
#   scripts/docker-context-build.sh
# It reuses ./target (debug profile, dependencies already built by the lint step), so only the
# storefs crate itself is compiled again. scripts/docker-image.sh builds and runs the real image.
set -euo pipefail
cd "$(dirname "$0")/.."

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

# The build stage is everything before the second FROM. Only COPY from the build context
# matters (COPY --from copies between stages); ADD would need a URL or an archive, so refuse it.
stage=0
copied=()
while read -r instr rest; do
    case ${instr^^} in
    FROM)
        stage=$((stage + 1))
        ((stage > 1)) && break
        ;;
    ADD)
        echo "docker-context-build: ADD in the build stage is not supported: $rest" >&2
        exit 1
        ;;
    COPY)
        read -ra args <<<"$rest"
        flags=() paths=()
        for a in "${args[@]}"; do
            if [[ $a == --* ]]; then flags+=("$a"); else paths+=("$a"); fi
        done
        [[ ${flags[*]:-} == *--from* ]] && continue
        dest=${paths[-1]}
        unset 'paths[-1]'
        if [[ $dest == /* ]]; then
            echo "docker-context-build: absolute COPY destination $dest is not supported" >&2
            exit 1
        fi
        for src in "${paths[@]}"; do
            if [[ -d $src ]]; then
                # Docker copies a directory's contents into the destination.
                mkdir -p "$ctx/$dest"
                cp -a "$src/." "$ctx/$dest/"
            elif [[ $dest == */ ]]; then
                mkdir -p "$ctx/$dest"
                cp -a "$src" "$ctx/$dest"
            else
                mkdir -p "$(dirname "$ctx/$dest")"
                cp -a "$src" "$ctx/$dest"
            fi
            copied+=("$src")
        done
        ;;
    esac
done <Dockerfile

((${#copied[@]})) || { echo "docker-context-build: no COPY found in the build stage" >&2; exit 1; }
echo "docker-context-build: the Dockerfile copies ${copied[*]}"
CARGO_TARGET_DIR="$PWD/target" cargo build --locked --offline --quiet \
    --manifest-path "$ctx/Cargo.toml"
echo "docker-context-build: the crate builds from exactly those files"
