# syntax=docker/dockerfile:1
# streamcast image: a release build linked against the libtorch that ships in
# the torch wheel (as scripts/env does locally), and a slim runtime that
# carries only that wheel's libraries and the binary.
#
#   docker build -t streamcast .
#   docker compose up --build          # with a Kafka broker, see docker-compose.yml
#
# TORCH_INDEX_URL: leave empty for the default index (the CUDA build of torch,
# several GB with its nvidia-* wheels); point it at PyTorch's CPU-only wheel
# index for an image a fraction of the size.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=

FROM rust:1.95-bookworm AS build
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv cmake pkg-config \
 && rm -rf /var/lib/apt/lists/*
# bookworm's python3 is 3.11: the venv path below is fixed on that.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir \
      ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"
ENV LIBTORCH=/opt/venv/lib/python3.11/site-packages/torch
ENV LD_LIBRARY_PATH=${LIBTORCH}/lib
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin streamcast \
 && install -D -m 0755 target/release/streamcast /out/streamcast

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /app streamcast
# torch's shared libraries find their nvidia-* siblings by relative rpath, so
# site-packages keeps its path; no Python interpreter is needed at run time.
COPY --from=build /opt/venv/lib/python3.11/site-packages /opt/venv/lib/python3.11/site-packages
COPY --from=build /out/streamcast /usr/local/bin/streamcast
COPY pipelines /app/pipelines
ENV LIBTORCH=/opt/venv/lib/python3.11/site-packages/torch \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/torch/lib \
    STREAMCAST_BROKERS=kafka:19092 \
    RUST_LOG=info
USER streamcast
WORKDIR /app
ENTRYPOINT []
CMD ["streamcast", "run", "/app/pipelines/quickstart.toml"]
