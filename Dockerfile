# keyshard image: the `keyshard` bot and the `keyshard-sim` simulator on a slim Debian runtime.
#
#   docker build -t keyshard:local .        (deploy-multi.sh start/build do this through compose)
#
# Layer order is for rebuild speed: the dependency graph (manifests + Cargo.lock) is built first
# against stub sources, so a change to our own code recompiles only the workspace crates.
# Plain Dockerfile syntax, no BuildKit-only features, so the classic builder works as well.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ── 1. Manifests only ─────────────────────────────────────────────────────────────────────────
# Copying everything and deleting all but the manifests yields identical layer contents while
# only sources change, so the dependency layer below stays cached. (`COPY crates/*/Cargo.toml`
# would flatten the paths.)
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS manifests
WORKDIR /src
COPY . .
RUN find . -type f ! -name Cargo.toml ! -name Cargo.lock ! -name rust-toolchain.toml \
        ! -path './.cargo/*' -delete \
    && find . -type d -empty -delete

# ── 2. Dependencies, against stub sources ─────────────────────────────────────────────────────
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
COPY --from=manifests /src ./
# Stub sources (deploy/stub-workspace.sh) let cargo load the workspace and build every
# dependency; the stubs are removed in the same step, the real tree arrives in the next layer.
COPY deploy/stub-workspace.sh /usr/local/bin/stub-workspace
RUN stub-workspace . \
    && cargo build --release --locked -p keyshard-bot -p keyshard-sim \
    && rm -rf crates/*/src crates/*/tests crates/*/benches crates/*/examples

# ── 3. The real sources ───────────────────────────────────────────────────────────────────────
COPY . .
# COPY keeps the checkout's modification times, which can be older than the stub build above;
# touching our sources makes cargo rebuild the workspace crates instead of trusting the stubs.
RUN find crates -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p keyshard-bot -p keyshard-sim \
    && mkdir -p /out \
    && cp target/release/keyshard target/release/keyshard-sim /out/

# ── 4. Runtime ────────────────────────────────────────────────────────────────────────────────
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: TLS to Discord and the providers. Nothing else: the healthcheck is bash.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin keyshard
COPY --from=builder /out/keyshard /out/keyshard-sim /usr/local/bin/
COPY deploy/keyshard-readyz /usr/local/bin/keyshard-readyz
# The bot writes nothing to disk (state lives in Redis), so it runs as an unprivileged user
# and docker-compose.multi.yml mounts the root file system read-only.
USER 10001:10001
WORKDIR /app
ENV HTTP_BIND=0.0.0.0:8080 \
    RUST_LOG=info
EXPOSE 8080
# Ready = gateway session READY, commands registered, Redis answering. start-period covers the
# gateway connect and command registration.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["keyshard-readyz"]
# SIGTERM (docker stop) makes the bot drain: peers take its users, in-hand acks finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["keyshard"]
CMD ["run"]
