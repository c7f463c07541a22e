"""Versions converted from a fitted object record their conversion (converter, version, tolerance, errors).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mf_model_versions") as batch:
        batch.add_column(sa.Column("conversion", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mf_model_versions") as batch:
        batch.drop_column("conversion")
