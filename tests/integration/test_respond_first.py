"""A non-streamed answer is written before its bookkeeping (settle, ledger, cache fill, metrics), and
the bookkeeping runs whatever happens: a real gateway app in this process, on a loopback socket,
against the mock provider process, with the embedded store."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config.load import load_config
from gateway.core import Gateway
from gateway.pipeline import Pipeline
from gateway.server import make_app
from tests.harness import MockProvider, base_config, free_port, write_config


@pytest.fixture
async def served(mock: MockProvider, tmp_path: Path) -> AsyncIterator[tuple[str, Gateway]]:
    cfg = base_config(mock.url)
    cfg["store"]["state_dir"] = str(tmp_path / "state")
    # Same name at the gateway and upstream: the edge's encoding of the body goes upstream as-is.
    cfg["models"]["mock-gpt"] = {"deployments": [{"provider": "mock-openai", "model": "mock-gpt"}]}
    gateway = Gateway(load_config(write_config(tmp_path, cfg)))
    runner = web.AppRunner(make_app(gateway, watch=False), access_log=None, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", gateway
    finally:
        await runner.cleanup()


def chat(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8}


async def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-demo"}
        ) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.json()


async def ledger_cost_usd(gateway: Gateway, team: str) -> list[Decimal]:
    records: list[dict[str, Any]] = []
    for _ in range(100):  # settlements are queued and flushed in batches
        await gateway.budget.flush_once()
        now_ms = int(time.time() * 1000)
        records = await gateway.store.ledger(team, now_ms - 3_600_000, now_ms + 3_600_000)
        if records:
            break
        await asyncio.sleep(0.02)
    return [Decimal(r["cost_nano"]) / Decimal(10**9) for r in records]


async def test_the_answer_is_settled_at_the_cost_its_header_shows(served: tuple[str, Gateway]) -> None:
    url, gateway = served
    status, headers, body = await post(url, chat("mock-gpt", "settle me"))
    assert status == 200 and body["object"] == "chat.completion"
    assert body["model"] == "mock-gpt"  # the upstream got the body with the model it serves
    cost = Decimal(headers["x-gateway-cost-usd"])
    assert cost > 0
    assert await ledger_cost_usd(gateway, "demo") == [cost]


async def test_a_failing_bookkeeping_never_turns_a_sent_answer_into_an_error(
    served: tuple[str, Gateway], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = served

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("bookkeeping bug")

    monkeypatch.setattr(Pipeline, "_book_body", broken)
    with caplog.at_level(logging.ERROR):
        status, _, body = await post(url, chat("gpt-4o-mini", "still answered"))
    assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"
    assert any("request bookkeeping failed" in r.getMessage() for r in caplog.records)
