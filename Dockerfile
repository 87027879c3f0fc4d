# chunkd as a container (sidecar or standalone). Build: docker build -t chunkd .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CHUNKD_LOG_FORMAT=json \
    CHUNKD_HTTP_ADDR=0.0.0.0:8080 \
    CHUNKD_HOME=/home/chunkd/.chunkd

RUN useradd --create-home --uid 10001 chunkd
WORKDIR /app

# Locked runtime dependencies first: a code change does not re-install them.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

COPY pyproject.toml README.md ./
COPY daemon ./daemon
COPY actors ./actors
COPY storage ./storage
COPY channels ./channels
COPY metrics ./metrics
COPY benchmarks ./benchmarks
RUN pip install --no-cache-dir --no-deps . && rm -rf /app/build

USER chunkd
EXPOSE 8080
# SIGTERM: stop claiming, finish or release in-flight chunks within
# CHUNKD_SHUTDOWN_GRACE_SECONDS (default 25), exit 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import os,urllib.request; h,p=os.environ['CHUNKD_HTTP_ADDR'].rsplit(':',1); urllib.request.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=2)"
ENTRYPOINT ["chunkd"]
CMD ["run"]
