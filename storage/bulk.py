"""Bulk submit (issue 16): many instances, each with its first chunk and counters, in ONE
transaction of five statements whatever the batch size (Store.create_instance costs four
round trips per instance)."""
from __future__ import annotations

from collections.abc import Sequence

import msgspec

from . import sql
from .counters import CREATED, CounterDelta
from .states import C
from .store import Store

# Ids first, so each inserted row is known by its position, keyed or not.
_IDS = "SELECT nextval(pg_get_serial_sequence('chunkd_instance', 'id')) FROM generate_series(1, $1)"
_INSERT = """
INSERT INTO chunkd_instance (id, job_name, job_version, params, gated, idempotency_key, idempotency_request, priority)
OVERRIDING SYSTEM VALUE
SELECT d.id, d.job, d.version, d.params::jsonb, d.gated, d.ikey, d.ireq::jsonb, d.priority
FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::bool[], $6::text[], $7::text[], $8::smallint[])
     AS d(id, job, version, params, gated, ikey, ireq, priority)
ORDER BY d.id
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id"""
_BY_KEYS = "SELECT idempotency_key, id FROM chunkd_instance WHERE idempotency_key = ANY($1::text[])"


class NewInstance(msgspec.Struct, array_like=True):
    job_name: str
    version: int
    params_json: str             # canonical
    gated: bool
    idempotency_key: str | None
    idempotency_request: str | None
    first_max_attempts: int
    priority: int = 0


class Created(msgspec.Struct, array_like=True):
    instance_id: int
    created: bool                # False: the idempotency key named an existing instance


async def create_instances(store: Store, items: Sequence[NewInstance]) -> tuple[list[Created], set[int]]:
    """All of `items` in one transaction: each item is either created whole (instance, first
    chunk, counters) or, when its idempotency key exists already, answered with that
    instance's id. Keys must be distinct within `items`. Returns one result per item, in order,
    and the partitions to notify after the commit."""
    if not items:
        return [], set()
    async with store.pool.acquire() as conn, conn.transaction():
        ids = [r[0] for r in await conn.fetch(_IDS, len(items))]
        inserted = {r[0] for r in await conn.fetch(
            _INSERT, ids, [i.job_name for i in items], [i.version for i in items], [i.params_json for i in items],
            [i.gated for i in items], [i.idempotency_key for i in items],
            [i.idempotency_request if i.idempotency_key is not None else None for i in items],
            [i.priority for i in items])}
        existing: dict[str, int] = {}
        missing = [i.idempotency_key for n, i in zip(ids, items) if n not in inserted]
        if missing:
            existing = {r[0]: r[1] for r in await conn.fetch(_BY_KEYS, missing)}
        out: list[Created] = []
        rows: list[tuple[int, int, int, int, int, bytes, int]] = []
        partitions: set[int] = set()
        delta = CounterDelta()
        for n, item in zip(ids, items):
            if n in inserted:
                part = store.next_partition()
                partitions.add(part)
                rows.append((n, 0, int(C.READY), part, item.first_max_attempts, b"", 0))
                delta.add(n, 0, CREATED)
                out.append(Created(n, True))
            else:
                assert item.idempotency_key is not None  # only a key conflict skips a row
                out.append(Created(existing[item.idempotency_key], False))
        if rows:
            await conn.execute(sql.CHUNK_INSERT, *map(list, zip(*rows)))
            await conn.execute(sql.COUNTERS_ADD, *delta.arrays())
    return out, partitions
