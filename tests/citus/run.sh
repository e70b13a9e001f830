#!/usr/bin/env bash
# `make citus-test`: builds and installs Citus into the machine's PostgreSQL 15 if it is not yet
# (../shared/engines/citus/build.sh, once per machine, 1-7 minutes on 2 cores), starts a local
# cluster (a coordinator and 2 workers on free loopback ports, data in a temporary folder, with
# wal_level=logical so that shards move online), then runs against it (CITUS_URL, CITUS_DIR):
#   1. tests/citus/: distribution, routing, the fault suite on the cluster, a worker stopped under
#      load, tenant moves;
#   2. the end-to-end and race suites unchanged through tests/citus/e2e_plugin.py (CITUS_E2E: the
#      paths, default "tests/e2e tests/races"; the fault tests, tests/races/test_faults.py and the
#      feed's, run in step 1 instead (tests/citus/test_faults_on_citus.py), stopping the cluster's
#      coordinator rather than a throwaway Postgres; empty: step 2 skipped);
# and stops and removes the cluster, whatever happened. Exits non-zero if a step failed.
# Needs root (build.sh installs packages; the cluster's servers run as the postgres user).
# Arguments are passed to both pytest runs. CITUS_ENGINE points at the engine's folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
engine=${CITUS_ENGINE:-../shared/engines/citus}
[ -d "$engine" ] || engine=/work/shared/engines/citus  # a clone elsewhere (CI's) finds the machine's
python=${PYTHON:-.venv/bin/python}

if [ ! -f /usr/lib/postgresql/15/lib/citus.so ]; then
  echo "== building Citus (once per machine)"
  start=$(date +%s)
  bash "$engine/build.sh"
  echo "== Citus built in $(( $(date +%s) - start )) s"
fi

dir=""
cleanup() {
  if [ -n "$dir" ]; then
    bash "$engine/cluster.sh" stop "$dir" || true  # every node*, a node a test added included
    rm -rf "$dir"
  fi
}
trap cleanup EXIT

# Four consecutive free ports: the coordinator's, one per worker, and one for a node a test adds.
free_ports() {
  "$python" - <<'EOF'
import random, socket
bases = list(range(15441, 19441, 7)); random.shuffle(bases)
for base in bases:
    socks = []
    try:
        for port in range(base, base + 4):
            s = socket.socket(); socks.append(s); s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    print(base); break
EOF
}

# The cluster, with retries: a port taken between the check and the start, or a node slow to come
# up on a busy machine, costs one more attempt with fresh ports and a fresh folder, not the run.
start_cluster() {
  local base url bin=/usr/lib/postgresql/15/bin
  dir=$(mktemp -d -p /var/tmp identity-citus.XXXXXX)
  chmod 755 "$dir"
  base=$(free_ports)
  [ -n "$base" ] || { echo "no 4 consecutive free ports" >&2; return 1; }
  echo "== starting a Citus cluster (coordinator :$base, 2 workers) in $dir" >&2
  url=$(bash "$engine/cluster.sh" start "$dir" "$base" 2) || return 1
  # Online shard moves and tenant isolation copy through logical replication, with Citus's own
  # decoding plugin (this PostgreSQL names the plugins it allows in output_plugin_libraries).
  for i in 0 1 2; do
    psql -qXAt -h 127.0.0.1 -p $((base + i)) -U postgres -c "ALTER SYSTEM SET wal_level = logical" \
      -c "ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding, citus" >/dev/null || return 1
    runuser -u postgres -- "$bin/pg_ctl" -D "$dir/node$i" -l "$dir/node$i.log" -m fast -w -t 60 restart >/dev/null || return 1
  done
  for i in 0 1 2; do
    for _ in $(seq 1 60); do
      [ "$(psql -qXAt -h 127.0.0.1 -p $((base + i)) -U postgres -c 'SHOW wal_level' 2>/dev/null)" = logical ] && continue 2
      sleep 0.5
    done
    echo "node$i on :$((base + i)) did not come back with wal_level=logical" >&2; return 1
  done
  # Every worker registered and active in the coordinator's metadata.
  [ "$(psql -qXAt -h 127.0.0.1 -p "$base" -U postgres -c \
    "SELECT count(*) FROM pg_dist_node WHERE isactive AND groupid <> 0")" = 2 ] || return 1
  CITUS_URL=$url
}

CITUS_URL=""
for attempt in 1 2 3; do
  if start_cluster; then break; fi
  echo "== the cluster did not start (attempt $attempt); logs:" >&2
  tail -n 20 "$dir"/node*.log >&2 || true
  cleanup; dir=""; CITUS_URL=""
  sleep 2
done
[ -n "$CITUS_URL" ] || { echo "== no Citus cluster after 3 attempts" >&2; exit 1; }
export CITUS_URL CITUS_DIR=$dir
echo "== CITUS_URL=$CITUS_URL CITUS_DIR=$CITUS_DIR"

status=0
echo "== tests/citus"
"$python" -m pytest -p no:cacheprovider tests/citus "$@" || status=1
e2e=${CITUS_E2E-tests/e2e tests/races}
if [ -n "$e2e" ]; then
  echo "== $e2e on Citus"
  # shellcheck disable=SC2086
  "$python" -m pytest -p no:cacheprovider --confcutdir=tests/e2e -p tests.citus.e2e_plugin \
    --ignore=tests/races/test_faults.py \
    --deselect tests/races/test_feed.py::test_feed_readers_resume_without_gap_or_duplicate_through_a_worker_kill_and_a_database_restart \
    $e2e "$@" || status=1
fi
exit $status
