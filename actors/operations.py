"""What the API may do to a running daemon, and nothing more (the HTTP room's port): read
instances, submit, stop and restart, keep schedules. It never hands out the pool, the
pipeline or the engine; daemon/wiring/node.py builds one when the engine exists."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from actors import control
from actors.engine import Engine
from actors.instances import Result, Submission, Submitted, checked, submit, submit_many
from actors.job import Job
from actors.registry import Registry
from actors.submit_group import SubmitGroup
from storage.protocol import InstanceReads
from storage.schedules import Schedules
from storage.types import Created, NewInstance


class Operations:
    def __init__(self, engine: Engine, schedules: Schedules) -> None:
        self._engine = engine
        self.reads: InstanceReads = engine.store
        self.registry: Registry = engine.registry
        self.schedules = schedules
        # Single submits arriving together share a transaction (bulk ones are batches already).
        self._group = SubmitGroup(engine.store.create_instances, self.publish)

    async def checked(self, job_name: str, params_json: str | bytes, version: int | None) -> tuple[Job, str]:
        """A submit's checks (actors.instances.checked), params_check with ctx.db's reader included."""
        e = self._engine
        return await checked(self.registry, job_name, params_json, version, e.reader, e.store.dsn)

    async def submit(self, job_name: str, params_json: str | bytes, *, version: int | None,
                     idempotency_key: str | None, priority: int) -> Submitted:
        e = self._engine
        return await submit(e.store, e.channel, self.registry, job_name, params_json, version=version,
                            idempotency_key=idempotency_key, reader=e.reader, priority=priority,
                            create=self._group.create_instances)

    async def submit_many(self, items: Sequence[Submission], positions: Sequence[int] | None = None) -> list[Result]:
        """The submit service for a batch (actors.instances.submit_many): one result per item;
        `positions` are the items' numbers in the request, for messages."""
        e = self._engine
        return await submit_many(e.store, e.channel, self.registry, items, e.reader, positions=positions)

    async def create_instances(self, items: Sequence[NewInstance]) -> tuple[list[Created], set[int]]:
        """Instances already `checked`; publish the partitions after (see `publish`)."""
        return await self._engine.store.create_instances(items)

    async def publish(self, partitions: Iterable[int]) -> None:
        await self._engine.channel.publish(sorted(partitions))

    async def stop(self, instance_id: int, *, force: bool) -> bool:
        return await control.stop(self._engine, instance_id, force=force)

    async def restart(self, row: dict[str, Any]) -> bool:
        return await control.restart(self._engine, self.registry, row)
