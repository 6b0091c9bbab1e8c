"""Pipeline visibility: pipelines.visibility (private, shared or public, as a model's) and
pipeline_shares (the tenants a shared pipeline is shared with). Existing pipelines stay
private (the column's server default).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-15

Written against ``modelport.storage.tables`` and checked by
``tests/integration/test_registry.py`` (schema and migrations agree).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pipelines", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "visibility",
                sa.String(length=16),
                server_default=sa.text("'private'"),
                nullable=False,
            )
        )
    op.create_table(
        "pipeline_shares",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pipeline_id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["pipeline_id"],
            ["pipelines.id"],
            name=op.f("fk_pipeline_shares_pipeline_id_pipelines"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_pipeline_shares_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipeline_shares")),
        sa.UniqueConstraint(
            "pipeline_id", "tenant_id", name=op.f("uq_pipeline_shares_pipeline_id_tenant_id")
        ),
    )


def downgrade() -> None:
    op.drop_table("pipeline_shares")
    with op.batch_alter_table("pipelines", schema=None) as batch_op:
        batch_op.drop_column("visibility")
