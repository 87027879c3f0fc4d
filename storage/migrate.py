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


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date)."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute(sql.MIGRATION_LOCK)
        await conn.execute(sql.MIGRATION_TABLE)
        done = {r[0] for r in await conn.fetch(sql.MIGRATIONS_APPLIED)}
        for version, name, text in migration_files():
            if version in done:
                continue
            await conn.execute(text)
            await conn.execute(sql.MIGRATION_RECORD, version, name)
            applied.append(name)
    return applied


async def pending(conn: asyncpg.Connection) -> list[str]:
    exists = await conn.fetchval(sql.MIGRATION_TABLE_EXISTS)
    done = {r[0] for r in await conn.fetch(sql.MIGRATIONS_APPLIED)} if exists else set()
    return [name for version, name, _ in migration_files() if version not in done]
