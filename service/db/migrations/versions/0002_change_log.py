"""The change log (R50-R54), its per-workspace sequence (R51), stored responses (R70) and the
retention setting. Every table leads with workspace_id, so that each can be distributed by it
(Citus) with every statement routed to one shard.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "workspaces",
        sa.Column("event_retention_days", sa.Integer, nullable=False, server_default=sa.text("30")),
    )
    op.create_check_constraint(
        "workspaces_event_retention_days_range", "workspaces", "event_retention_days BETWEEN 1 AND 3650"
    )
    # R51: one counter per workspace, taken by each appending transaction just before its COMMIT
    # and held (a row lock) until it ends, so that sequence order is commit order.
    op.create_table(
        "event_sequences",
        sa.Column("workspace_id", sa.Text, primary_key=True),
        sa.Column("last_sequence", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    )
    op.execute("INSERT INTO event_sequences (workspace_id) SELECT workspace_id FROM workspaces")
    op.create_table(
        "person_events",
        sa.Column("workspace_id", sa.Text, nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("cio_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        # MERGED: the secondary's cio_id (history follows merges, R53).
        sa.Column("merged_cio_id", sa.Text),
        # UNMERGED (the primary's event): the merge it undid; unique, so a merge is undone once.
        sa.Column("undoes", sa.BigInteger),
        sa.Column("rpc", sa.Text, nullable=False),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("commit_time", sa.DateTime(timezone=True), nullable=False),
        # Identifiers before and after, attribute changes, a merge's record (R61).
        sa.Column("body", JSONB, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "sequence", name="person_events_pkey"),
        sa.CheckConstraint(
            "kind IN ('CREATED', 'UPDATED', 'MERGED', 'UNMERGED', 'DELETED', 'ERASED')",
            name="person_events_kind_known",
        ),
    )
    op.create_index("person_events_person", "person_events", ["workspace_id", "cio_id", "sequence"])
    op.create_index(
        "person_events_merged",
        "person_events",
        ["workspace_id", "merged_cio_id"],
        postgresql_where=sa.text("merged_cio_id IS NOT NULL"),
    )
    op.create_index(
        "person_events_undoes_unique",
        "person_events",
        ["workspace_id", "undoes"],
        unique=True,
        postgresql_where=sa.text("undoes IS NOT NULL"),
    )
    # R70: the first response to each request_id, kept at least 24 hours.
    op.create_table(
        "stored_responses",
        sa.Column("workspace_id", sa.Text, nullable=False),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.LargeBinary, nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        # The people the response shows: an erasure (R54) deletes it with them.
        sa.Column("cio_ids", ARRAY(sa.Text), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "request_id", name="stored_responses_pkey"),
    )
    op.create_index("stored_responses_age", "stored_responses", ["workspace_id", "created_at"])


def downgrade() -> None:
    op.drop_table("stored_responses")
    op.drop_table("person_events")
    op.drop_table("event_sequences")
    op.drop_constraint("workspaces_event_retention_days_range", "workspaces")
    op.drop_column("workspaces", "event_retention_days")
