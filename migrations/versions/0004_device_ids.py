"""Device ids are never reused on SQLite (AUTOINCREMENT): a logout's revocation, remembered
by device id for a while, must not close the connections of the next login.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("devices", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("devices", recreate="always", table_kwargs={"sqlite_autoincrement": False}):
            pass
