"""The tables, as SQLAlchemy Core metadata. The migrations in service/migrations create them;
this module is what the repository queries against. `workspace_id` leads every key, so the data
can be distributed by workspace."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

metadata = sa.MetaData()

workspaces = sa.Table(
    "workspaces",
    metadata,
    sa.Column("workspace_id", sa.Text, primary_key=True),
    sa.Column("identifier_mode", sa.Text, nullable=False),
    sa.Column("email_updatable_by_id", sa.Boolean, nullable=False),
    sa.Column("sole_identifier_updatable", sa.Boolean, nullable=False),
    sa.Column("auto_merge", sa.Boolean, nullable=False),
    sa.Column("event_retention_days", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # Fair share (issue 11): 0 is the server's default.
    sa.Column("max_calls_per_second", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_concurrent_calls", sa.Integer, nullable=False, server_default="0"),
)

people = sa.Table(
    "people",
    metadata,
    sa.Column("workspace_id", sa.Text, sa.ForeignKey("workspaces.workspace_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("cio_id", sa.Text, primary_key=True),
    # The values as given, whether the field is an identifier or an attribute in the mode.
    sa.Column("id", sa.Text),
    sa.Column("email", sa.Text),
    # The normalised email (computed in Python, R4), kept in every mode for R2's checks.
    sa.Column("email_norm", sa.Text),
    # The unique keys (R41): set only where the field is an identifier in the workspace's mode.
    sa.Column("id_key", sa.Text),
    sa.Column("email_key", sa.Text),
    sa.Column("attributes", JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

sa.Index("people_id_key_unique", people.c.workspace_id, people.c.id_key, unique=True)
sa.Index("people_email_key_unique", people.c.workspace_id, people.c.email_key, unique=True)

event_sequences = sa.Table(
    "event_sequences",
    metadata,
    sa.Column("workspace_id", sa.Text, primary_key=True),
    sa.Column("last_sequence", sa.BigInteger, nullable=False),
    sa.Column("last_time", sa.DateTime(timezone=True)),
)

person_events = sa.Table(
    "person_events",
    metadata,
    sa.Column("workspace_id", sa.Text, primary_key=True),
    sa.Column("sequence", sa.BigInteger, primary_key=True),
    sa.Column("cio_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("merged_cio_id", sa.Text),
    sa.Column("undoes", sa.BigInteger),
    sa.Column("rpc", sa.Text, nullable=False),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("commit_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("body", JSONB, nullable=False),
)

stored_responses = sa.Table(
    "stored_responses",
    metadata,
    sa.Column("workspace_id", sa.Text, primary_key=True),
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("method", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.LargeBinary, nullable=False),
    sa.Column("response", sa.LargeBinary, nullable=False),
    sa.Column("cio_ids", ARRAY(sa.Text), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

imports = sa.Table(
    "imports",
    metadata,
    sa.Column("workspace_id", sa.Text, primary_key=True),
    sa.Column("import_id", sa.Text, primary_key=True),
    sa.Column("fingerprint", sa.LargeBinary, nullable=False),
    sa.Column("rows_done", sa.BigInteger, nullable=False),
    sa.Column("applied", sa.BigInteger, nullable=False),
    sa.Column("refused", sa.BigInteger, nullable=False),
    sa.Column("finished", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

import_refusals = sa.Table(
    "import_refusals",
    metadata,
    sa.Column("workspace_id", sa.Text, primary_key=True),
    sa.Column("import_id", sa.Text, primary_key=True),
    sa.Column("row_number", sa.BigInteger, primary_key=True),
    sa.Column("status", sa.LargeBinary, nullable=False),
)

# Managed API keys (migration 0005). Not per workspace: reference tables on Citus.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("salt", sa.LargeBinary, nullable=False),
    sa.Column("digest", sa.LargeBinary, nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("workspace_ids", ARRAY(sa.Text), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)

api_key_versions = sa.Table(
    "api_key_versions",
    metadata,
    sa.Column("singleton", sa.Boolean, primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
)
