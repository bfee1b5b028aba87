# sipas-bot: `docker build -t sipas-bot .` then `docker run -e SIPAS_API_TOKENS=... -p 8080:8080 sipas-bot`
# or, with PostgreSQL, `docker compose up` (see compose.yaml and README.md).

# --- builder: builds the wheel and installs it, with its dependencies, into a venv ---------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
RUN python -m venv /opt/venv

# Only what the wheel is built from (see .dockerignore), so editing tests rebuilds nothing.
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY handlers ./handlers
COPY storage ./storage

# tzdata: slim images carry no system time zone database, and SIPAS_TIMEZONE needs one.
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install /wheels/sipas_bot-*.whl tzdata

# --- runtime: the venv only, a non-root user, SQLite on a volume unless told otherwise ----
FROM python:3.11-slim AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIPAS_HTTP_HOST=0.0.0.0 \
    SIPAS_HTTP_PORT=8080 \
    SIPAS_DATABASE_URL=sqlite+aiosqlite:////data/sipas.db

RUN groupadd --system sipas \
 && useradd --system --gid sipas --home-dir /data --no-create-home --shell /usr/sbin/nologin sipas \
 && mkdir -p /data \
 && chown sipas:sipas /data

# The venv's python links to /usr/local/bin/python3.11, the same in both stages.
COPY --from=builder /opt/venv /opt/venv

USER sipas
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080

# Python's standard library only: the image has no curl. urlopen raises on anything but 2xx,
# and /healthz answers 503 while the database is unreachable.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SIPAS_HTTP_PORT', '8080'), timeout=4)" || exit 1

# serve handles SIGTERM (docker stop) with a clean shutdown.
STOPSIGNAL SIGTERM
CMD ["sipas-bot", "serve"]
