# storefs in a container. Build:  docker build -t storefs .
# Run (see docs/OPERATIONS.md for why /nix and not /nix/store is bound, and why --stop-timeout):
#   docker run -d --name storefs --restart unless-stopped --stop-timeout 60 \
#     --device /dev/fuse --cap-add SYS_ADMIN --security-opt apparmor=unconfined \
#     -v /nix:/nix:rshared -v /var/cache/storefs:/var/cache/storefs storefs
# storefs runs in the foreground; `docker stop` (SIGTERM) unmounts the store.
# scripts/test.sh builds the crate from exactly the files copied below, so a file the build
# needs and this list lacks fails CI.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# rust-toolchain.toml pins the exact toolchain; rustup in the image honours it.
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY src ./src
# Cargo.toml declares [[bench]] targets; cargo refuses the manifest when their sources are missing.
COPY benches ./benches
RUN cargo build --locked --release

FROM debian:bookworm-slim
# fuse3: fusermount3 for manual unmounts. storefs itself calls mount(2) directly as root.
# ca-certificates: the system CA store, which storefs trusts (read once at start) besides the
# Mozilla roots compiled into it; see docs/CONFIGURATION.md (TLS).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /nix/store
COPY --from=build /src/target/release/storefs /usr/local/bin/storefs
ENTRYPOINT ["storefs", "mount"]
CMD ["/nix/store", "--allow-other"]
