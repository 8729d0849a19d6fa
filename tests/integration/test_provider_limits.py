"""A provider's ``max_connections`` caps the calls the gateway has open to it at once: a real gateway
app in this process on a loopback socket, against a mock provider process of its own that counts the
calls it has open."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config.load import load_config
from gateway.core import Gateway
from gateway.server import make_app
from tests.harness import MockProvider, base_config, free_port, http_json, write_config


@pytest.fixture
def slow_mock(tmp_path: Path) -> Iterator[MockProvider]:
    mock = MockProvider(tmp_path, "--latency-ms", "150")
    try:
        yield mock
    finally:
        mock.stop()


@pytest.fixture
async def gateway_url(slow_mock: MockProvider, tmp_path: Path) -> AsyncIterator[str]:
    cfg = base_config(slow_mock.url)
    cfg["store"]["state_dir"] = str(tmp_path / "state")
    cfg["providers"]["mock-openai"]["max_connections"] = 2
    runner = web.AppRunner(make_app(Gateway(load_config(write_config(tmp_path, cfg))), watch=False))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def chat(session: aiohttp.ClientSession, url: str, i: int) -> int:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"call {i}"}]}
    async with session.post(
        url + "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-demo"}
    ) as resp:
        await resp.read()
        return resp.status


async def test_calls_over_a_providers_cap_wait_for_a_slot(gateway_url: str, slow_mock: MockProvider) -> None:
    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(chat(session, gateway_url, i) for i in range(6)))
    assert statuses == [200] * 6
    _, stats, _ = await asyncio.to_thread(http_json, "GET", slow_mock.url + "/_mock/stats")
    assert stats["requests"] == 6
    assert stats["peak_in_flight"] == 2  # six at once from the clients, never more than two upstream
