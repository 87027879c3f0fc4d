"""The demo's synthetic dataset: FHIR-like Patient and Observation resources as JSONB."""
from __future__ import annotations

import asyncpg

from storage import sql


async def seed_demo_resources(pool: asyncpg.Pool, rows: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(sql.DEMO_CREATE)
        await conn.execute(sql.DEMO_FILL, rows)
