# syntax=docker/dockerfile:1.7
# The worker image: `outloud-worker` on a CUDA runtime base, with libtorch from the
# same PyPI wheel `scripts/setup` installs (torch 2.11.0, the CUDA 13.0 build). The
# same image runs on CPU nodes (`--device cpu`); the NVIDIA container toolkit mounts
# the driver on GPU nodes.
# Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t outloud-worker:0.1.0 .
ARG RUST_VERSION=1.90
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
ARG TORCH_VERSION=2.11.0
ARG OUTLOUD_VERSION=0.1.0
# The commit checkpoints record (`--build-arg GIT_COMMIT=$(git rev-parse --short=12 HEAD)`).
ARG GIT_COMMIT=unknown

FROM rust:${RUST_VERSION}-bookworm AS build
ARG TORCH_VERSION
ARG GIT_COMMIT
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/torch \
    && /opt/torch/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}"
ENV LIBTORCH_USE_PYTORCH=1 PATH="/opt/torch/bin:${PATH}" OUTLOUD_GIT_COMMIT="${GIT_COMMIT}"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY core core
COPY coordinator coordinator
COPY worker worker
COPY tests tests
RUN cargo build --release --locked -p outloud-worker --bin outloud-worker \
    && strip target/release/outloud-worker \
    && mkdir -p /opt/libs \
    && cp -r /opt/torch/lib/python3.*/site-packages/torch /opt/torch/lib/python3.*/site-packages/nvidia /opt/libs/

FROM ${CUDA_IMAGE}
ARG OUTLOUD_VERSION
ARG TORCH_VERSION
LABEL org.opencontainers.image.title="outloud-worker" \
      org.opencontainers.image.version="${OUTLOUD_VERSION}" \
      org.opencontainers.image.source="https://github.com/outloud/outloud" \
      outloud.torch.version="${TORCH_VERSION}"
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin outloud
# libtorch and the CUDA libraries it was built against, in the wheel's own layout so
# their relative run paths still find each other; no Python at run time.
COPY --from=build /opt/libs/torch/lib /opt/site-packages/torch/lib
COPY --from=build /opt/libs/nvidia /opt/site-packages/nvidia
COPY --from=build /src/target/release/outloud-worker /usr/local/bin/outloud-worker
# cudarc loads libnccl.so by that name; the wheel ships libnccl.so.2.
RUN ln -s /opt/site-packages/nvidia/nccl/lib/libnccl.so.2 /opt/site-packages/nvidia/nccl/lib/libnccl.so
ENV LD_LIBRARY_PATH="/opt/site-packages/torch/lib:/opt/site-packages/nvidia/nccl/lib"
USER 10001
ENTRYPOINT ["/usr/local/bin/outloud-worker"]
CMD ["--device", "auto"]
