"""The nodes of the test cluster as processes, for the fault tests: stop one (as a crash or an
operator would) and start it again. `make citus-test` (tests/citus/run.sh) starts the cluster with
../shared/engines/citus/cluster.sh and sets CITUS_DIR to its folder: node0 is the coordinator,
node1.. the workers, node i listening on the coordinator's port + i."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

PG_CTL = "/usr/lib/postgresql/15/bin/pg_ctl"


class Node:
    """One PostgreSQL server of the cluster, stopped and started with pg_ctl as the postgres user.
    Through runuser, not subprocess's user=: that makes Python fork() instead of vfork(), and a
    fork() while gRPC threads run in this process can crash the child before exec."""

    def __init__(self, folder: Path, index: int, port: int):
        self.folder = folder
        self.index = index
        self.port = port
        self.data = folder / f"node{index}"
        self.admin_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        command = [PG_CTL, *args]
        if os.geteuid() == 0:
            runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
            assert runuser, "runuser (util-linux) is needed to run pg_ctl as the postgres user"
            command = [runuser, "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=90, cwd=self.folder)
        assert result.returncode == 0, f"{' '.join(command)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"

    def stop(self) -> None:
        """Fast shutdown: open transactions rolled back, every client disconnected."""
        self._pg_ctl("-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def start(self) -> None:
        self._pg_ctl("-D", str(self.data), "-l", f"{self.data}.log", "-w", "-t", "60", "start")

    def accepts(self) -> bool:
        try:
            with psycopg.connect(self.admin_url, connect_timeout=1) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def ensure_started(self) -> None:
        """For fixtures' clean-up: a node a failed test left stopped is started again."""
        if not self.accepts():
            self.start()


def cluster_folder() -> Path:
    folder = os.environ.get("CITUS_DIR")
    if not folder:
        pytest.fail("CITUS_DIR is not set: run `make citus-test` (it starts the cluster and sets it)")
    path = Path(folder)
    assert (path / "node0" / "PG_VERSION").is_file(), f"{path}: not a cluster folder of cluster.sh"
    return path


def node_at(citus_url: str, port: int) -> Node:
    """The node listening on `port`, found from the coordinator's port (node i is at its + i)."""
    base = sa.engine.make_url(citus_url).port or 5432
    node = Node(cluster_folder(), port - base, port)
    assert node.data.is_dir(), f"no node folder {node.data} for port {port}"
    return node


def coordinator(citus_url: str) -> Node:
    return node_at(citus_url, sa.engine.make_url(citus_url).port or 5432)
