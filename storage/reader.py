"""Read access to Postgres for steps (ctx.db) and submit-time parameter checks, on a
small pool of its own so user reads can never starve claims and completions."""
from __future__ import annotations

from typing import Any

import anyio
import asyncpg

from storage.deadlines import DEFAULT, Deadlines, keep_alive


class Reader:
    def __init__(self, dsn: str, max_size: int = 4, deadlines: Deadlines = DEFAULT) -> None:
        self._dsn = dsn
        self._max = max_size
        self._deadlines = deadlines
        self._pool: asyncpg.Pool | None = None
        self._lock = anyio.Lock()

    async def _get(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    # user reads: the user-SQL deadline per statement, chunkd's own for connects
                    d = self._deadlines
                    self._pool = await asyncpg.create_pool(
                        self._dsn, min_size=0, max_size=self._max, command_timeout=d.user_sql, timeout=d.statement,
                        init=lambda c: _keep_alive(c, d.statement),
                        server_settings={"application_name": "chunkd-steps"})
        return self._pool

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await (await self._get()).fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await (await self._get()).fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await (await self._get()).fetchval(query, *args)

    def pool_for_maintenance(self) -> "Reader":
        """Built-in maintenance jobs write through this (user steps use ctx.tx)."""
        return self

    async def execute(self, query: str, *args: Any) -> str:
        return await (await self._get()).execute(query, *args)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


async def _keep_alive(conn: asyncpg.Connection, deadline: float) -> None:
    keep_alive(conn, deadline)
