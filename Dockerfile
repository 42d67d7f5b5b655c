# storefs in a container. Build:  docker build -t storefs .
# Run (see docs/OPERATIONS.md for why /nix and not /nix/store is bound):
#   docker run -d --name storefs --device /dev/fuse --cap-add SYS_ADMIN \
#     --security-opt apparmor=unconfined -v /nix:/nix:rshared \
#     -v /var/cache/storefs:/var/cache/storefs storefs
# storefs runs in the foreground; `docker stop` (SIGTERM) unmounts the store.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# rust-toolchain.toml pins the exact toolchain; rustup in the image honours it.
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY src ./src
RUN cargo build --locked --release

FROM debian:bookworm-slim
# fuse3: fusermount3 for manual unmounts. storefs itself calls mount(2) directly as root.
# ca-certificates: the system CA store. storefs does not read it yet; it uses rustls with
# compiled-in Mozilla roots.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /nix/store
COPY --from=build /src/target/release/storefs /usr/local/bin/storefs
ENTRYPOINT ["storefs", "mount"]
CMD ["/nix/store", "--allow-other"]
