"""Managed API keys and fair shares (issue 11).

`api_keys` holds each key's salted digest (never the secret), its grant and its expiry and
revocation; `api_key_versions` is one row counting the changes to it: every change bumps it in
its own transaction (the row lock orders the changes), and each server process polls it every
0.25 s and reloads the keys when it moved, so a revocation reaches every process within a
second. Neither table is per workspace: on Citus both are reference tables.

`workspaces` gains the two fair-share limits of a workspace, 0 meaning the server's default; a
partial index finds the few workspaces that override them (each process polls those).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("salt", sa.LargeBinary, nullable=False),
        # HMAC-SHA256(salt, secret): keys are random 256-bit values, so a fast salted hash suffices.
        sa.Column("digest", sa.LargeBinary, nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("workspace_ids", ARRAY(sa.Text), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("key_id", name="api_keys_pkey"),
        sa.CheckConstraint("admin OR cardinality(workspace_ids) > 0", name="api_keys_grant"),
    )
    op.create_table(
        "api_key_versions",
        sa.Column("singleton", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("singleton", name="api_key_versions_pkey"),
        sa.CheckConstraint("singleton", name="api_key_versions_one_row"),
    )
    op.execute("INSERT INTO api_key_versions (singleton, version) VALUES (true, 0)")
    op.add_column("workspaces", sa.Column("max_calls_per_second", sa.Integer, nullable=False, server_default="0"))
    op.add_column("workspaces", sa.Column("max_concurrent_calls", sa.Integer, nullable=False, server_default="0"))
    op.create_index(
        "workspaces_with_limits",
        "workspaces",
        ["workspace_id"],
        postgresql_where=sa.text("max_calls_per_second <> 0 OR max_concurrent_calls <> 0"),
    )


def downgrade() -> None:
    op.drop_index("workspaces_with_limits", table_name="workspaces")
    op.drop_column("workspaces", "max_concurrent_calls")
    op.drop_column("workspaces", "max_calls_per_second")
    op.drop_table("api_key_versions")
    op.drop_table("api_keys")
