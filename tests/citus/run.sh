#!/usr/bin/env bash
# `make citus-test`: builds and installs Citus into the machine's PostgreSQL 15 if it is not yet
# (../shared/engines/citus/build.sh, once per machine, about 5 minutes on 2 idle cores), starts a
# local cluster (a coordinator and 2 workers on free loopback ports, data in a temporary folder),
# runs tests/citus/ against it (CITUS_URL), then the end-to-end suite unchanged through
# tests/citus/e2e_plugin.py (CITUS_E2E: the paths to run, default tests/e2e; empty: none), and
# stops and removes the cluster, whatever happened. Exits non-zero if either run failed.
# Needs root (build.sh installs packages; the cluster's servers run as the postgres user).
# Arguments are passed to both pytest runs. CITUS_ENGINE points at the engine's folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
engine=${CITUS_ENGINE:-../shared/engines/citus}
python=${PYTHON:-.venv/bin/python}

if [ ! -f /usr/lib/postgresql/15/lib/citus.so ]; then
  echo "== building Citus (once per machine)"
  start=$(date +%s)
  bash "$engine/build.sh"
  echo "== Citus built in $(( $(date +%s) - start )) s"
fi

dir=$(mktemp -d -p /var/tmp identity-citus.XXXXXX)
chmod 755 "$dir"
cleanup() {
  bash "$engine/cluster.sh" stop "$dir" || true
  rm -rf "$dir"
}
trap cleanup EXIT
# Three consecutive free ports (the coordinator's, then one per worker).
base=$("$python" - <<'EOF'
import socket
for base in range(15441, 16441, 7):
    try:
        socks = []
        for port in range(base, base + 3):
            s = socket.socket(); s.bind(("127.0.0.1", port)); socks.append(s)
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    if len(socks) == 3:
        print(base); break
EOF
)
echo "== starting a Citus cluster (coordinator :$base, 2 workers) in $dir"
url=$(bash "$engine/cluster.sh" start "$dir" "$base" 2)
echo "== CITUS_URL=$url"
status=0
echo "== tests/citus"
CITUS_URL="$url" "$python" -m pytest -p no:cacheprovider tests/citus "$@" || status=1
e2e=${CITUS_E2E-tests/e2e}
if [ -n "$e2e" ]; then
  echo "== $e2e on Citus"
  # shellcheck disable=SC2086
  CITUS_URL="$url" "$python" -m pytest -p no:cacheprovider --confcutdir=tests/e2e -p tests.citus.e2e_plugin \
    $e2e "$@" || status=1
fi
exit $status
