"""The operator's tools: admin and disabled users, invitations.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("users", sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("users", sa.Column("disabled_ms", sa.BigInteger, nullable=True))
    op.add_column("users", sa.Column("deleted_ms", sa.BigInteger, nullable=True))
    op.create_table(
        "invitations",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("code_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("uses_allowed", sa.Integer, nullable=False),
        sa.Column("uses", sa.Integer, nullable=False, server_default="0"),
        sa.Column("expires_ms", sa.BigInteger, nullable=True),
        sa.Column("revoked_ms", sa.BigInteger, nullable=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("invitations")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("deleted_ms")
        batch.drop_column("disabled_ms")
        batch.drop_column("admin")
