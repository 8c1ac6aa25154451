# Tether server image. Linted (hadolint, tests/test_deploy_files.py); not built by the test
# suite, which runs where docker is not available.
#
#   docker build -t tether .
#   docker run -p 8700:8700 -v tether-data:/var/lib/tether tether
#
# The data dir (/var/lib/tether) holds the SQLite database, the admin token file and, unless
# they come from secrets, the master key and the ledger signing key: keep it on a volume.

FROM python:3.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tether
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/tether/bin/pip install .

FROM python:3.13-slim-bookworm
RUN groupadd --system --gid 10001 tether \
    && useradd --system --uid 10001 --gid tether --home-dir /var/lib/tether \
       --no-create-home --shell /usr/sbin/nologin tether \
    && install -d -o tether -g tether -m 0700 /var/lib/tether
COPY --from=build /opt/tether /opt/tether
ENV PATH=/opt/tether/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TETHER_DATA_DIR=/var/lib/tether \
    TETHER_HOST=0.0.0.0 \
    TETHER_PORT=8700
USER 10001:10001
WORKDIR /var/lib/tether
VOLUME ["/var/lib/tether"]
EXPOSE 8700
# No curl in the slim image: the venv's Python asks /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TETHER_PORT', '8700') + '/healthz', timeout=2)"]
CMD ["tether", "serve"]
