"""Postgres: migrations, pool, every SQL statement, state transitions, chunk codecs."""
