"""Read access to Postgres for steps (ctx.db) and submit-time parameter checks, on a
small pool of its own so user reads can never starve claims and completions."""
from __future__ import annotations

from typing import Any

import anyio
import asyncpg


class Reader:
    def __init__(self, dsn: str, max_size: int = 4) -> None:
        self._dsn = dsn
        self._max = max_size
        self._pool: asyncpg.Pool | None = None
        self._lock = anyio.Lock()

    async def _get(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(self._dsn, min_size=0, max_size=self._max,
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
