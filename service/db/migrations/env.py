"""Alembic environment: runs on the connection handed in by service.db.engine.migrate (the only
way the service runs its migrations)."""

from alembic import context

from service.db.schema import metadata

config = context.config
context.configure(connection=config.attributes["connection"], target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
