# chunkd as a container (sidecar or standalone). Build: docker build -t chunkd .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CHUNKD_LOG_FORMAT=json \
    CHUNKD_HTTP_ADDR=0.0.0.0:8080 \
    CHUNKD_HOME=/home/chunkd/.chunkd

RUN groupadd --gid 10001 chunkd && useradd --create-home --uid 10001 --gid 10001 chunkd
WORKDIR /app

# Locked runtime dependencies first: a code change does not re-install them.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

# Every package pyproject.toml lists (tests/integration/test_image_build.py installs exactly
# what these lines copy, as the RUN line below does, and runs `chunkd --version` and a job import).
COPY pyproject.toml README.md ./
COPY chunkd ./chunkd
COPY daemon ./daemon
COPY actors ./actors
COPY storage ./storage
COPY channels ./channels
COPY metrics ./metrics
COPY benchmarks ./benchmarks
RUN pip install --no-cache-dir --no-deps . && rm -rf /app/build
COPY deploy/docker/healthcheck.py /usr/local/lib/chunkd/healthcheck.py

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd
# (the manifests in deploy/kubernetes set runAsUser: 10001 to match).
USER 10001:10001
EXPOSE 8080
# SIGTERM: stop claiming, finish or release in-flight chunks within
# CHUNKD_SHUTDOWN_GRACE_SECONDS (default 25), exit 0.
STOPSIGNAL SIGTERM
# Liveness only (/healthz). The script reads CHUNKD_HTTP_ADDR through daemon.wiring.config, so
# "off" and wildcard hosts work; start-period covers migrations (HTTP answers after them).
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "/usr/local/lib/chunkd/healthcheck.py"]
ENTRYPOINT ["chunkd"]
CMD ["run"]
