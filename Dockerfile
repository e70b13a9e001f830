# The identity service. Build: docker build -t identity-service .
# Run:   docker run -e DATABASE_URL=postgresql://user@db:5432/identity -e API_KEYS='<key>=*' \
#          -p 50051:50051 identity-service
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LISTEN_ADDRESS=0.0.0.0:50051 \
    MIGRATE_ON_START=1

RUN useradd --create-home --uid 10001 identity
WORKDIR /app

# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml README.md ./
COPY service ./service
COPY generated ./generated
RUN pip install --no-cache-dir . && chown -R identity /app

USER identity
EXPOSE 50051
# The same check as `make` and .ci/run use: the standard gRPC health service.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python -m service.runtime.healthcheck 127.0.0.1:50051 || exit 1
ENTRYPOINT ["identity-server"]
