# The identity service. Build: podman build -t identity-service .   (or docker build)
# Run:   docker run -e DATABASE_URL=postgresql://user@db:5432/identity -e API_KEYS='<key>=*' \
#          -p 50051:50051 identity-service
# That serves in clear text on 0.0.0.0 (the default arguments are `--insecure`; the server logs a
# WARNING). For TLS, mount the files and replace the arguments (SIGHUP to the container reloads
# them); the health check then needs the CA (and, with --tls-client-ca, a client certificate:
# HEALTHCHECK_TLS_CERT, HEALTHCHECK_TLS_KEY):
#        docker run -v /etc/identity-tls:/tls:ro -e HEALTHCHECK_TLS_CA=/tls/ca.crt \
#          -e HEALTHCHECK_SERVER_NAME=<name in the certificate> ... identity-service \
#          --tls-cert /tls/server.crt --tls-key /tls/server.key
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
CMD ["--insecure"]
