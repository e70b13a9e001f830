"""The change log's counter records when it was last taken (the database's clock, as the
transaction asks for it): the appended event's commit time, read back by the insert, so that
both statements of an append stay on the workspace's shard (Citus).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("event_sequences", sa.Column("last_time", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("event_sequences", "last_time")
