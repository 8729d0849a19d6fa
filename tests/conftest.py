"""Shared fixtures: one redis-server and one mock provider per test session (on free loopback ports).

Tests that kill or restart a process start their own instead of using these.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import MockProvider, RedisServer


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def redis_server(session_tmp: Path) -> Iterator[RedisServer]:
    try:
        server = RedisServer(session_tmp / "redis")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mock(session_tmp: Path) -> Iterator[MockProvider]:
    provider = MockProvider(session_tmp)
    yield provider
    provider.stop()
