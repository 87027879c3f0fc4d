from __future__ import annotations

from collections.abc import Callable

import pytest

from .channels import kafka_env, postgres_env


@pytest.fixture(params=["postgres", "kafka"])
def channel(request: pytest.FixtureRequest) -> Callable[..., dict[str, str]]:
    """Daemon environment for the scenario's channel: `channel(**extra)` -> env."""
    if request.param == "kafka":
        broker = request.getfixturevalue("kafka_broker")
        return lambda **extra: kafka_env(broker, **extra)
    return postgres_env
