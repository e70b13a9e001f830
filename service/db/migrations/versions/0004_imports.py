"""Streamed imports (R81): how far each import got, committed with each batch of its rows, and
the results of its refused rows, so that an interrupted import resumes from its first row not
applied and still reports every row. Both tables lead with workspace_id (Citus).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imports",
        sa.Column("workspace_id", sa.Text, nullable=False),
        sa.Column("import_id", sa.Text, nullable=False),
        # The file's header and options: a resume must present the same ones.
        sa.Column("fingerprint", sa.LargeBinary, nullable=False),
        # Rows 1..rows_done have their results committed; the import resumes at rows_done + 1.
        sa.Column("rows_done", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("applied", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("refused", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("finished", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "import_id", name="imports_pkey"),
    )
    op.create_index("imports_age", "imports", ["workspace_id", "updated_at"])
    op.create_table(
        "import_refusals",
        sa.Column("workspace_id", sa.Text, nullable=False),
        sa.Column("import_id", sa.Text, nullable=False),
        sa.Column("row_number", sa.BigInteger, nullable=False),
        # The row's google.rpc.Status, serialized.
        sa.Column("status", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "import_id", "row_number", name="import_refusals_pkey"),
    )


def downgrade() -> None:
    op.drop_table("import_refusals")
    op.drop_table("imports")
