"""Alembic revisions, oldest first; each one says what it changes and never drops data."""
