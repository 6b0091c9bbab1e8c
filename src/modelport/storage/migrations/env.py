"""Alembic environment of modelport.

Migrations run on the connection handed over by ``Database.migrate()`` through
``config.attributes["connection"]``, inside the transaction it opened; there is no
alembic.ini and no URL here, so the one ``Database`` object stays the only place that
knows how to connect.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from modelport.storage.tables import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "modelport migrations run through Database.migrate(), which passes a connection"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: later migrations rebuild tables in batch mode.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
