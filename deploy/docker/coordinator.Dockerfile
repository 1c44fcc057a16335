# syntax=docker/dockerfile:1.7
# The coordinator image: `outloud` (scheduler, state store, CLI) on a small runtime
# base, without libtorch. Also the image the submit Job and users' CLI pods run.
# Build from the repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t outloud-coordinator:0.1.0 .
ARG RUST_VERSION=1.90
ARG OUTLOUD_VERSION=0.1.0

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Every workspace member's sources: cargo reads all their manifests.
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY core core
COPY coordinator coordinator
COPY worker worker
COPY tests tests
RUN cargo build --release --locked -p outloud-coordinator --bin outloud \
    && strip target/release/outloud

FROM debian:bookworm-slim
ARG OUTLOUD_VERSION
LABEL org.opencontainers.image.title="outloud-coordinator" \
      org.opencontainers.image.version="${OUTLOUD_VERSION}" \
      org.opencontainers.image.source="https://github.com/outloud/outloud"
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin outloud \
    && mkdir -p /var/lib/outloud && chown 10001 /var/lib/outloud
COPY --from=build /src/target/release/outloud /usr/local/bin/outloud
USER 10001
# gRPC (workers, CLI), then metrics and probes (plain HTTP).
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/outloud"]
CMD ["coordinator", "--listen", "0.0.0.0:50051", "--http", "0.0.0.0:9090", "--state-dir", "/var/lib/outloud/state"]
