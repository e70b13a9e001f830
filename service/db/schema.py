"""The tables, as SQLAlchemy Core metadata. The migrations in service/migrations create them;
this module is what the repository queries against. `workspace_id` leads every key, so the data
can be distributed by workspace."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

workspaces = sa.Table(
    "workspaces",
    metadata,
    sa.Column("workspace_id", sa.Text, primary_key=True),
    sa.Column("identifier_mode", sa.Text, nullable=False),
    sa.Column("email_updatable_by_id", sa.Boolean, nullable=False),
    sa.Column("sole_identifier_updatable", sa.Boolean, nullable=False),
    sa.Column("auto_merge", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
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
