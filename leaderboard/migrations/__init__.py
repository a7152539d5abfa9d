"""Alembic migrations of the leaderboard database (`leaderboard.db.migrate` runs them)."""
