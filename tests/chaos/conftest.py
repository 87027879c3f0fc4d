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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` runs two pytest-xdist workers with --dist loadgroup: the chaos tests, which
    start several daemons each and time faults, run one after another on one worker while the
    other worker takes the rest of the suite (each test has its own database and ports)."""
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(pytest.mark.xdist_group("chaos"))
