"""One submit service (actors.instances.submit_many): a single submit is a batch of one,
and the idempotency conflict reads the same however it is reached (issue 25 row 3)."""
from __future__ import annotations

import asyncpg
import pytest

from actors.instances import BadRequest, IdempotencyConflict, Submission, UnknownJob, submit, submit_many
from daemon.jobs import load_registry
from storage.store import Store


@pytest.mark.anyio
async def test_submit_many_answers_each_item_in_order(dsn: str, conn: asyncpg.Connection) -> None:
    store = await Store.open(dsn, partitions=4, min_size=1, max_size=2)
    reg = load_registry(["tests.testjobs"])
    syn = "chunkd.synthetic"
    try:
        first = await submit(store, None, reg, syn, b'{"chunks": 2}', idempotency_key="old")
        res = await submit_many(store, None, reg, [
            Submission(syn, b'{"chunks": 3}', idempotency_key="k"),     # 0 created
            Submission(syn, b'{"chunks": 3}', idempotency_key="k"),     # 1 the same instance as 0
            Submission(syn, b'{"chunks": 4}', idempotency_key="k"),     # 2 conflicts with 0
            Submission("no.such.job"),                                  # 3 unknown
            Submission(syn, b'{"chunks": 9}', idempotency_key="old"),   # 4 conflicts with the earlier submit
            Submission(syn, b'{}', idempotency_key="nul\x00"),          # 5 text Postgres cannot hold
        ])
        assert res[0].submitted is not None and res[0].submitted.created
        assert res[1].submitted is not None and res[1].submitted.instance_id == res[0].submitted.instance_id
        assert not res[1].submitted.created
        assert isinstance(res[2].error, IdempotencyConflict)
        assert str(res[2].error).startswith("idempotency key 'k' was used by item 0 of this batch with a different")
        assert isinstance(res[3].error, UnknownJob)
        assert isinstance(res[4].error, IdempotencyConflict)
        single = f"idempotency key 'old' was first used for instance {first.instance_id} with a different request"
        assert str(res[4].error).startswith(single)
        with pytest.raises(IdempotencyConflict) as e:  # the single submit: the same text
            await submit(store, None, reg, syn, b'{"chunks": 9}', idempotency_key="old")
        assert str(e.value) == str(res[4].error)
        assert isinstance(res[5].error, BadRequest) and res[5].error.parameter == "idempotency_key"
        assert await conn.fetchval("SELECT count(*) FROM chunkd_instance") == 2  # nothing for the refused
    finally:
        await store.close()
