# syntax=docker/dockerfile:1
#
# The eHerkenning identity gateway as a container image (see docs/deploy.md).
#
#   docker build -t eherkenning-gateway:dev .
#   docker run --read-only -p 8080:8080 -e GATEWAY__SERVER__HOST=0.0.0.0 \
#       -v "$PWD/gateway.yaml:/etc/gateway/gateway.yaml:ro" eherkenning-gateway:dev
#
# The image holds the gateway only: the wheel is built from gateway/, and the
# development package gateway_dev/ (broker simulator, sample portal, demo,
# development keys) is not in the build context. deploy/compose/ runs the
# simulator and the portal on this image by mounting gateway_dev/ into those
# two containers.
# tests/deploy/ checks this file against the code (port, health path, UID,
# commands), so it cannot drift silently.

# Both stages use the same base: the virtualenv built in the first stage links
# to this exact interpreter. Pin a digest for reproducible builds:
#   --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Everything installed comes from the lock files in requirements/ (exact
# versions with hashes, the ones the test suite ran): the build backend in a
# throw-away venv, the gateway's dependencies in /opt/venv, binary wheels only.
# lxml 6.1 and python-xmlsec 1.3.17 ship manylinux wheels that bundle
# libxml2/libxmlsec1, so the image needs no compiler and no -dev packages. A
# dependency without a wheel fails the build here instead of compiling
# something unreviewed. (.dockerignore keeps keys, tests and .venv out.)
COPY requirements/runtime.txt requirements/build.txt ./requirements/
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --no-deps --only-binary=:all: -r requirements/build.txt \
 && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes --no-deps --only-binary=:all: -r requirements/runtime.txt \
 && /opt/venv/bin/pip install --no-deps /wheels/eherkenning_gateway-*.whl \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/python -c "import xmlsec, lxml.etree, gateway.cli"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}

ARG VERSION=dev
LABEL org.opencontainers.image.title="eherkenning-gateway" \
      org.opencontainers.image.description="eHerkenning (SAML) login, mandates and a signed identity header in front of a legacy employer portal" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Proprietary" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# ca-certificates: TLS to the broker, the mandate registry and Redis
# (rediss://). No xmlsec1: the XML crypto runs in-process (python-xmlsec
# bundles libxmlsec1) and pysaml2 is not part of the image. Versions are not
# pinned: the slim tag's Debian release fixes them, and pins break on
# security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged UID/GID (10001), the same as runAsUser/fsGroup in
# deploy/kubernetes: secret files mounted with mode 0440 are group-readable.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin gateway

COPY --from=builder /opt/venv /opt/venv

# TMPDIR: the only path the gateway writes to: prometheus multiprocess files
# when server.workers > 1 and the socket of the SAML verify pool's forkserver
# (both via tempfile). With a read-only root filesystem it must be a volume
# (an emptyDir in Kubernetes, tmpfs in compose).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TMPDIR=/tmp \
    GATEWAY_CONFIG=/etc/gateway/gateway.yaml
VOLUME ["/tmp"]

WORKDIR /
USER 10001:10001
EXPOSE 8080

# Docker/compose health; Kubernetes ignores this and uses the probes in the
# Deployment. slim has no curl: the standard library does the request.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/_gateway/healthz', timeout=2).status == 200 else 1)"]

# PID 1 is the gateway itself: it handles SIGTERM (readiness 503, drain, exit
# 0) and, with workers > 1, supervises and reaps its workers.
ENTRYPOINT ["gateway"]
CMD ["serve"]
