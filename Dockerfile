# syntax=docker/dockerfile:1.7
# fill-publisher image: multi-stage, slim pinned base, non-root, read-only-root friendly.
#   docker build -t fill-publisher:0.1.0 .
#   docker run --read-only -v $PWD/config.yaml:/etc/fill-publisher/config.yaml:ro fill-publisher:0.1.0
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
LABEL org.opencontainers.image.title="fill-publisher" \
      org.opencontainers.image.description="Polls venues' fills endpoints and publishes every fill exactly once to Kafka"
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
# /healthz on the default http.port; python's urllib because slim has no curl. urlopen raises
# on a non-2xx answer or a refused connection, which exits non-zero.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["fill-publisher"]
CMD ["run", "--config", "/etc/fill-publisher/config.yaml"]
