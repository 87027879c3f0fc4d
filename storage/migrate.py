"""Plain-SQL migrations, applied in order under a transaction-scoped advisory lock
so two daemons starting at once apply each file exactly once."""
from __future__ import annotations

from importlib import resources

import asyncpg

from storage import sql


def migration_files() -> list[tuple[int, str, str]]:
    out = []
    for entry in resources.files("storage").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name, entry.read_text()))
    return sorted(out)


async def migrate(conn: asyncpg.Connection, timeout: float | None = None) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date). Each
    statement may take `timeout` seconds (None: the connection's command timeout)."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute(sql.MIGRATION_LOCK, timeout=timeout)
        await conn.execute(sql.MIGRATION_TABLE, timeout=timeout)
        done = {r[0] for r in await conn.fetch(sql.MIGRATIONS_APPLIED, timeout=timeout)}
        for version, name, text in migration_files():
            if version in done:
                continue
            await conn.execute(text, timeout=timeout)
            await conn.execute(sql.MIGRATION_RECORD, version, name, timeout=timeout)
            applied.append(name)
    return applied


async def pending(conn: asyncpg.Connection) -> list[str]:
    exists = await conn.fetchval(sql.MIGRATION_TABLE_EXISTS)
    done = {r[0] for r in await conn.fetch(sql.MIGRATIONS_APPLIED)} if exists else set()
    return [name for version, name, _ in migration_files() if version not in done]
