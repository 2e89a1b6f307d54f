# syntax=docker/dockerfile:1
# One image for the operator, the aggregator and the silo agent (`fedshield ...`).
#
#   docker build --target slim --build-arg TORCH_INDEX_URL=<PyTorch CPU wheel index> -t fedshield/fedshield:0.1.0 .
#   docker build --target cuda -t fedshield/fedshield:0.1.0-cuda .
#
# slim: CPU torch (operator, aggregator, CPU silos); cuda: CUDA torch (GPU silos).
# Pods run it as uid 10001 with a read-only root filesystem: HOME=/tmp, caches in /cache.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

# ---- slim: Debian bookworm, Python 3.11, CPU torch ----
FROM ${PYTHON_IMAGE} AS slim
ARG TORCH_VERSION=2.13.0
ARG DEEPSPEED_VERSION=0.19.8
ARG PIP_VERSION=26.3
# The index serving CPU-only torch wheels (a plain `torch` would pull the CUDA build).
ARG TORCH_INDEX_URL
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/fedshield PATH=/opt/fedshield/bin:$PATH
RUN test -n "$TORCH_INDEX_URL" || { echo "slim needs --build-arg TORCH_INDEX_URL=<PyTorch CPU wheel index>" >&2; exit 1; }
# g++: DeepSpeed compiles a small op on first start (into $TORCH_EXTENSIONS_DIR).
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/fedshield && pip install "pip==${PIP_VERSION}" \
    && pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fedshield ./fedshield
RUN pip install . && DS_BUILD_OPS=0 pip install --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}" ninja \
    && rm -rf /src
RUN groupadd --gid 10001 fedshield && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp fedshield \
    && mkdir -p /cache && chown 10001:10001 /cache
ENV HOME=/tmp HF_HOME=/cache/hf HF_HUB_OFFLINE=1 TORCH_EXTENSIONS_DIR=/cache/torch_extensions
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["fedshield"]
CMD ["--help"]

# ---- cuda: CUDA runtime on Ubuntu 22.04, Python 3.11, CUDA torch ----
FROM ${CUDA_IMAGE} AS cuda
ARG TORCH_VERSION=2.13.0
ARG DEEPSPEED_VERSION=0.19.8
ARG PIP_VERSION=26.3
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/fedshield PATH=/opt/fedshield/bin:$PATH
# g++ and the Python headers: DeepSpeed compiles a small op on first start.
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev g++ \
    && rm -rf /var/lib/apt/lists/*
# The default index's torch for Linux x86_64 is the CUDA build.
RUN python3.11 -m venv /opt/fedshield && pip install "pip==${PIP_VERSION}" && pip install "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fedshield ./fedshield
RUN pip install . && DS_BUILD_OPS=0 pip install --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}" ninja \
    && rm -rf /src
RUN groupadd --gid 10001 fedshield && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp fedshield \
    && mkdir -p /cache && chown 10001:10001 /cache
ENV HOME=/tmp HF_HOME=/cache/hf HF_HUB_OFFLINE=1 TORCH_EXTENSIONS_DIR=/cache/torch_extensions
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["fedshield"]
CMD ["--help"]
