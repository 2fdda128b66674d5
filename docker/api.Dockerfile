# syntax=docker/dockerfile:1
# The HTTP API: FastAPI, the Redis client and the metrics; no torch, no diffusers.
# Build from the repository root:  docker build -f docker/api.Dockerfile -t qvgen-api .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with the API's requirements only -------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml docker/api_requirements.py ./
# The project's own dependency list starts with torch; the API takes the `service` extra and
# numpy from it instead (docker/api_requirements.py says why).
RUN python api_requirements.py pyproject.toml > requirements.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install -r requirements.txt
COPY qvgen /app/qvgen
COPY service /app/service
# Fails the build if an import of the API or of its command line needs anything not installed.
RUN PYTHONPATH=/app /opt/venv/bin/python -c "import service.api.main, service.cli"

# ---- runtime: non-root, sources on PYTHONPATH ------------------------------------------------
FROM ${PYTHON_IMAGE}
# The same uid in both images: the shared results volume is created owned by it.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin qvgen \
 && mkdir -p /data/results \
 && chown qvgen:qvgen /data/results
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY docker/healthcheck.py /usr/local/bin/qvgen-healthcheck
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    QVGEN_RESULTS_DIR=/data/results
USER qvgen
WORKDIR /home/qvgen
EXPOSE 8000
# Liveness; docker-compose.yml replaces it by /readyz (Redis up and a live worker per model).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["qvgen-healthcheck", "http://127.0.0.1:8000/healthz"]
CMD ["python", "-m", "service.cli", "serve", "api", "--host", "0.0.0.0", "--port", "8000"]
