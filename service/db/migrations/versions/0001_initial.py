"""Workspaces and people, with the unique keys of R41.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workspaces",
        sa.Column("workspace_id", sa.Text, primary_key=True),
        sa.Column("identifier_mode", sa.Text, nullable=False),
        sa.Column("email_updatable_by_id", sa.Boolean, nullable=False),
        sa.Column("sole_identifier_updatable", sa.Boolean, nullable=False),
        sa.Column("auto_merge", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "identifier_mode IN ('EMAIL_OR_ID', 'ID_ONLY', 'EMAIL_ONLY')",
            name="workspaces_identifier_mode_known",
        ),
    )
    op.create_table(
        "people",
        sa.Column("workspace_id", sa.Text, sa.ForeignKey("workspaces.workspace_id", ondelete="CASCADE"), nullable=False),
        sa.Column("cio_id", sa.Text, nullable=False),
        sa.Column("id", sa.Text),
        sa.Column("email", sa.Text),
        sa.Column("email_norm", sa.Text),
        sa.Column("id_key", sa.Text),
        sa.Column("email_key", sa.Text),
        sa.Column("attributes", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "cio_id", name="people_pkey"),
        # A key is set only where its field is an identifier, and then equals the field.
        sa.CheckConstraint("id_key IS NULL OR id_key = id", name="people_id_key_is_id"),
        sa.CheckConstraint("email_key IS NULL OR email_key = email_norm", name="people_email_key_is_norm"),
    )
    # R41: uniqueness of id and of the email key, per workspace, by the database.
    op.create_index("people_id_key_unique", "people", ["workspace_id", "id_key"], unique=True)
    op.create_index("people_email_key_unique", "people", ["workspace_id", "email_key"], unique=True)


def downgrade() -> None:
    op.drop_table("people")
    op.drop_table("workspaces")
