"""The benchmarks' scratch databases, on the server of an admin DSN."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg

from benchmarks import sql


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def with_db(dsn: str, db: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + db, parts.query, parts.fragment))


async def existing_database(admin_dsn: str, name: str) -> str:
    """`name` on the server of `admin_dsn`, created if missing, never dropped; returns its DSN."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        if not await admin.fetchval(sql.DATABASE_EXISTS, name):
            await admin.execute(sql.DATABASE_CREATE.format(name=quoted(name)))
    finally:
        await admin.close()
    return with_db(admin_dsn, name)


async def fresh_database(admin_dsn: str, name: str) -> str:
    """Drop and create `name` on the server of `admin_dsn`; returns its DSN."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(sql.DATABASE_DROP.format(name=quoted(name)))
        await admin.execute(sql.DATABASE_CREATE.format(name=quoted(name)))
    finally:
        await admin.close()
    return with_db(admin_dsn, name)
