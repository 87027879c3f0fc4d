"""A doorbell: any number of rings, one answer. The maintenance leader waits on its own
(actors/maintenance.py); the completer rings it when a batch closed a step of some instance,
and the advancer when its moves call for another look, so the next pass comes at once
instead of at the next interval."""
from __future__ import annotations

import anyio


class Doorbell:
    def __init__(self) -> None:
        self._event = anyio.Event()
        # someone here answers (this node leads maintenance); else a ring must reach the
        # leader on another node (Channel.ring_leader)
        self.answered_here = False

    def ring(self) -> None:
        self._event.set()

    @property
    def rung(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    def answer(self) -> None:
        """Rings from now on are new ones."""
        if self._event.is_set():
            self._event = anyio.Event()
