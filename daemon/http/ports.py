"""What the HTTP room needs from the daemon that serves it; daemon/wiring/node.py's Node
provides it. The room never imports the wiring: the arrow runs wiring -> http."""
from __future__ import annotations

from typing import Protocol

import msgspec

from actors.operations import Operations
from actors.registry import Registry


class HttpSettings(msgspec.Struct, frozen=True, kw_only=True):
    addr: tuple[str, int] | None              # where the API listens (its host is one of our own)
    allowed_hosts: tuple[str, ...] = ()       # other Host names that mean this daemon
    max_submits: int = 64                     # submissions in flight at once before a 503


class Served(Protocol):
    registry: Registry
    ops: Operations | None   # None while the daemon starts: probes answer before the engine exists
    http: HttpSettings

    def liveness_problems(self) -> list[str]: ...

    async def readiness_problems(self) -> list[str]: ...
