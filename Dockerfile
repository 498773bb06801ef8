# syntax=docker/dockerfile:1.7
# fill-publisher image: multi-stage, slim pinned base, non-root, read-only-root friendly.
#   VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
#   docker build -t fill-publisher:$VERSION --build-arg VERSION=$VERSION \
#     --build-arg REVISION=$(git rev-parse HEAD) --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) .
#   docker run --read-only -v $PWD/config.yaml:/etc/fill-publisher/config.yaml:ro fill-publisher:$VERSION
# EXTRAS=[demo] adds confluent-kafka so `fill-publisher demo` works in the image.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------- builder: wheels only
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY publisher ./publisher
ARG EXTRAS=""
# The project's wheel plus wheels of all its dependencies (all have manylinux wheels: no compiler).
RUN pip wheel --wheel-dir /wheels ".${EXTRAS}"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
# OCI annotations; the version is pyproject.toml's (the one place it is written), passed in
ARG PYTHON_IMAGE
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="fill-publisher" \
      org.opencontainers.image.description="Polls venues' fills endpoints and publishes every fill exactly once to Kafka" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="LicenseRef-Proprietary" \
      org.opencontainers.image.documentation="README.md, docs/operations.md" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
ARG EXTRAS=""
# Install from the builder's wheels only (--no-index), bind-mounted so no wheel stays in a layer.
# pip byte-compiles at install time, so nothing is written at run time (read-only root works).
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links=/wheels "fill-publisher${EXTRAS}" \
    && groupadd --system --gid 10001 fill-publisher \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin fill-publisher \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/fill-publisher
# /var/lib/fill-publisher: the only writable place, for volumes (the compose stack's simulators
# keep their demo keys there). The service itself writes nothing to disk.
USER 10001:10001
WORKDIR /var/lib/fill-publisher
EXPOSE 9108
# /healthz on the port the service serves: FILLPUB_HTTP__PORT, else the config's http.port, else
# 9108 (publisher/healthcheck.py; python's urllib because slim has no curl). A config mounted
# elsewhere: override the HEALTHCHECK or mount it at /etc/fill-publisher/config.yaml.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "publisher.healthcheck", "--config", "/etc/fill-publisher/config.yaml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["fill-publisher"]
CMD ["run", "--config", "/etc/fill-publisher/config.yaml"]
