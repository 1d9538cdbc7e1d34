"""Alembic's entry point for this schema: watchkeep.store._migrations runs it."""

from watchkeep.store._migrations import run_environment

run_environment()
