from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.chaos.channels import kafka_env, postgres_env


class ChannelEnv:
    """Daemon environment for the scenario's channel: `channel(**extra)` -> env."""

    def __init__(self, name: str, make: Callable[..., dict[str, str]]) -> None:
        self.name, self._make = name, make

    def __call__(self, **extra: str) -> dict[str, str]:
        return self._make(**extra)


@pytest.fixture(params=["postgres", "kafka"])
def channel(request: pytest.FixtureRequest) -> ChannelEnv:
    if request.param == "kafka":
        broker = request.getfixturevalue("kafka_broker")
        return ChannelEnv("kafka", lambda **extra: kafka_env(broker, **extra))
    return ChannelEnv("postgres", postgres_env)
