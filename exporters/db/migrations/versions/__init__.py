"""flowtel's revisions, applied in order by Alembic (``v0001_history_tables`` first)."""
