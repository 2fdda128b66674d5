# syntax=docker/dockerfile:1
# A GPU worker: CUDA 13.0 runtime, torch 2.13.0, Triton, diffusers, and the embedded default model
# (models/qvgen-tiny-w4a4). Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t qvgen-worker .
# torch 2.13.0's Linux wheel on the package registry is built for CUDA 13.0 (it depends on the
# cuda-toolkit 13.0 pip packages and pins triton 3.7.1), hence the 13.0 base: hosts need an
# NVIDIA driver of the 580 series or newer. For another CUDA build, pass both build arguments
# together, e.g. CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 and TORCH_INDEX_URL set to
# PyTorch's cu128 wheel index.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

# ---- build: the virtual environment ----------------------------------------------------------
FROM ${CUDA_IMAGE} AS build
ARG TORCH_INDEX_URL=
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
# torch first and pinned, as the Makefile does: an unpinned resolve could pick another build.
RUN /opt/venv/bin/pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY qvgen qvgen
COPY service service
COPY training training
# The project with its service and triton extras; torch is already satisfied by the pin above.
RUN /opt/venv/bin/pip install '.[service,triton]' \
 && /opt/venv/bin/python -c "import torch, triton, diffusers, service.cli, service.engine.diffusers_engine"

# ---- runtime -----------------------------------------------------------------------------------
FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# Triton compiles its small launcher module with the system C compiler against Python's headers
# the first time it runs a kernel, so the runtime image keeps gcc and python3-dev.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# The same uid in both images: the shared results volume is created owned by it.
# A named volume mounted on one of these starts with the image's owner: qvgen's.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin qvgen \
 && mkdir -p /data/results /data/compile-cache \
 && chown qvgen:qvgen /data/results /data/compile-cache
COPY --from=build /opt/venv /opt/venv
COPY docker/healthcheck.py /usr/local/bin/qvgen-healthcheck
COPY models/qvgen-tiny-w4a4 /app/models/qvgen-tiny-w4a4
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRITON_CACHE_DIR=/home/qvgen/.triton \
    QVGEN_RESULTS_DIR=/data/results \
    QVGEN_COMPILE_CACHE_DIR=/data/compile-cache \
    QVGEN_WORKER_METRICS_PORT=9101
USER qvgen
WORKDIR /home/qvgen
EXPOSE 9101
# The metrics port opens once the model is loaded: a worker that answers it is alive.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["qvgen-healthcheck", "http://127.0.0.1:9101/metrics"]
CMD ["python", "-m", "service.cli", "serve", "worker", \
     "--model", "/app/models/qvgen-tiny-w4a4", "--model-id", "qvgen-tiny", "--device", "cuda"]
