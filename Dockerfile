# The identity service. Build: podman build -t identity-service .   (or docker build)
# Run:   docker run -e DATABASE_URL=postgresql://user@db:5432/identity -e API_KEYS='<key>=*' \
#          -p 50051:50051 identity-service
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LISTEN_ADDRESS=0.0.0.0:50051 \
    MIGRATE_ON_START=1

RUN useradd --create-home --uid 10001 identity
WORKDIR /app

# Dependencies first (read from pyproject.toml), so that a change of code does not reinstall
# them. The embedded Postgres of `make run` is an extra the image does not need.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
COPY README.md ./
COPY service ./service
COPY generated ./generated
RUN pip install --no-cache-dir --no-deps . && chown -R identity /app

USER identity
EXPOSE 50051
# The same check as .ci/run uses: the standard gRPC health service.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python -m service.runtime.healthcheck 127.0.0.1:50051 || exit 1
ENTRYPOINT ["identity-server"]
