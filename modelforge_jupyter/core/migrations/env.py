"""Alembic environment: run with the connection ``database.migrate`` hands over, or from ``sqlalchemy.url``."""

from alembic import context
from sqlalchemy import create_engine

from modelforge_jupyter.core.schema import metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:  # plain `alembic` CLI use: -x or sqlalchemy.url in the ini
        engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
        with engine.begin() as connection:
            _migrate(connection)
        return
    _migrate(connection)


def _migrate(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run()
