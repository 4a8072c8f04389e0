"""Alembic migrations of the relational schema, run by ``kibitz serve`` at start-up."""
