"""The response cache end to end: a real gateway process in front of the mock provider, on loopback.

Every behaviour runs against both stores (the embedded memory store and a real redis-server), through one
gateway per store for the whole module; each test uses prompts of its own, so tests never see each
other's entries. Whether a request reached the provider is read from the mock's own request counter
(``/_mock/stats``), never inferred from the gateway's headers.

Processes that a test stops or that need another configuration (Redis going away, two replicas sharing
one Redis) are started by that test.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis

from gateway.cache import ResponseCache, cache_key
from gateway.cache_codec import MAGIC, decode_entry
from tests.harness import (
    ADMIN_TOKEN,
    GatewayProc,
    MockProvider,
    RedisServer,
    base_config,
    free_port,
    write_config,
)

COST_COMMENT = re.compile(rb": x-gateway-cost-usd=(\d+\.\d{9})\n\n\Z")
ZERO_COST = "0.000000000"
MAX_ENTRY_BYTES = 64 * 1024
COMPRESS_MIN_BYTES = 2048
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def cache_config(mock_url: str, **cache: Any) -> dict[str, Any]:
    """The base test config plus one team per cache mode and a model whose only deployment is down."""
    cfg = base_config(mock_url)
    cfg["providers"]["dead"] = {"type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"}
    cfg["models"]["broken"] = {
        "deployments": [{"provider": "dead", "model": "mock-gpt", "price": "mock-gpt"}]
    }
    # two deployments priced apart; the first is down, so the answer is always made (and paid) on the second
    cfg["models"]["two-priced"] = {
        "deployments": [
            {"provider": "dead", "model": "mock-gpt", "price": "mock-gpt-mini"},
            {"provider": "mock-openai", "model": "mock-gpt", "price": "mock-gpt"},
        ]
    }
    cfg["routing"] = {"retry": {"max_attempts": 1}, "fallbacks": {"broken": ["gpt-4o-mini"]}}
    cfg["cache"] = {
        "max_entry_bytes": MAX_ENTRY_BYTES,
        "compress_min_bytes": COMPRESS_MIN_BYTES,
        "lock_wait_ms": 2000,
        **cache,
    }
    for team in ("auto", "always", "off", "ledger", "ledger-2p"):
        mode = "always" if team.startswith("ledger") else team
        cfg["teams"][team] = {
            "keys": [{"id": team, "key": f"sk-{team}"}],
            "cache": {"mode": mode, "ttl_s": 600},
            "on_store_error": "fail_open",
        }
    return cfg


# ---------------------------------------------------------------- HTTP helpers


@dataclass
class Resp:
    status: int
    headers: dict[str, str]  # lower-case names
    raw: bytes

    @property
    def cache(self) -> str:
        return self.headers.get("x-gateway-cache", "")

    def json(self) -> Any:
        return orjson.loads(self.raw)

    def events(self) -> list[dict[str, Any]]:
        """The JSON payloads of the SSE stream, in order ([DONE] and comments left out)."""
        out = []
        for block in self.raw.split(b"\n\n"):
            for line in block.split(b"\n"):
                if line.startswith(b"data: ") and line != b"data: [DONE]":
                    out.append(orjson.loads(line[6:]))
        return out

    def without_cost_comment(self) -> bytes:
        """The stream minus its trailing ``: x-gateway-cost-usd=`` comment (the one line that may differ)."""
        stripped, count = COST_COMMENT.subn(b"", self.raw)
        assert count == 1, self.raw[-200:]
        return stripped


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    key: str = "sk-always",
    headers: dict[str, str] | None = None,
    path: str = "/v1/chat/completions",
) -> Resp:
    sent = {"authorization": f"Bearer {key}", "content-type": "application/json", **(headers or {})}
    if path == "/v1/messages":
        sent["anthropic-version"] = "2023-06-01"
    async with session.post(url + path, data=orjson.dumps(body), headers=sent) as resp:
        raw = await resp.read()
        return Resp(resp.status, {k.lower(): v for k, v in resp.headers.items()}, raw)


async def upstream_calls(session: aiohttp.ClientSession, mock: MockProvider) -> int:
    async with session.get(mock.url + "/_mock/stats") as resp:
        stats = await resp.json()
    return int(sum(stats["by_path"].values()))


async def metrics(
    session: aiohttp.ClientSession, url: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text -> {(name, labels): value}."""
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            out[(match.group(1), labels)] = float(match.group(3))
    return out


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def chat(prompt: str | None = None, **fields: Any) -> dict[str, Any]:
    text = prompt or f"cache test {uuid.uuid4().hex}"
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": text}], "temperature": 0, **fields}


def streamed_text(resp: Resp) -> str:
    return "".join(
        choice["delta"].get("content") or "" for event in resp.events() for choice in event.get("choices", [])
    )


def usage_chunks(resp: Resp) -> list[dict[str, Any]]:
    return [e for e in resp.events() if e.get("choices") == [] and isinstance(e.get("usage"), dict)]


async def eventually(probe: Any, timeout: float = 5.0) -> Any:
    """Poll an async probe until it returns something truthy (ledger writes and metrics are async)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- fixtures


@dataclass
class Stack:
    store: str
    url: str
    mock: MockProvider
    redis_url: str | None


@pytest.fixture(scope="module")
def mock_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockProvider]:
    provider = MockProvider(tmp_path_factory.mktemp("cache-mock"))
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("cache-redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["memory", "redis"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    mock_provider: MockProvider,
    module_redis: RedisServer,
) -> Iterator[Stack]:
    store: str = request.param
    tmp = tmp_path_factory.mktemp(f"cache-{store}")
    redis_url = module_redis.url if store == "redis" else None
    proc = GatewayProc(write_config(tmp, cache_config(mock_provider.url)), redis_url=redis_url)
    yield Stack(store, proc.url, mock_provider, redis_url)
    proc.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# ---------------------------------------------------------------- miss, hit, replay


async def test_miss_then_hit_serves_the_stored_body_for_free(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    body = chat()
    before = await upstream_calls(http, stack.mock)
    miss = await post(http, stack.url, body)
    assert miss.status == 200 and miss.cache == "miss"
    assert "age" not in miss.headers
    assert miss.headers["x-gateway-cost-usd"] != ZERO_COST
    assert await upstream_calls(http, stack.mock) == before + 1

    await asyncio.sleep(0.1)  # the entry is written off the response path
    hit = await post(http, stack.url, body)
    assert hit.status == 200 and hit.cache == "hit"
    assert hit.headers["x-gateway-cost-usd"] == ZERO_COST
    assert 0 <= int(hit.headers["age"]) <= 5
    assert hit.raw == miss.raw  # the very bytes the first client got
    assert hit.headers["x-gateway-model"] == miss.headers["x-gateway-model"]
    assert await upstream_calls(http, stack.mock) == before + 1


async def _hit(session: aiohttp.ClientSession, url: str, body: dict[str, Any], **kwargs: Any) -> Resp | None:
    """The response if it was a hit (for polling with ``eventually``), else None."""
    resp = await post(session, url, body, **kwargs)
    return resp if resp.cache == "hit" else None


@pytest.mark.parametrize("include_usage", [False, True])
async def test_stream_replays_byte_for_byte(
    stack: Stack, http: aiohttp.ClientSession, include_usage: bool
) -> None:
    body = chat(stream=True, stream_options={"include_usage": include_usage})
    before = await upstream_calls(http, stack.mock)
    miss = await post(http, stack.url, body)
    assert miss.status == 200 and miss.cache == "miss"
    await asyncio.sleep(0.1)  # the entry is written after the last byte
    hit = await post(http, stack.url, body)
    assert hit.cache == "hit" and "age" in hit.headers
    assert hit.headers["x-gateway-cost-usd"] == ZERO_COST
    assert hit.without_cost_comment() == miss.without_cost_comment()
    assert hit.raw.endswith(b": x-gateway-cost-usd=0.000000000\n\n")
    assert len(usage_chunks(hit)) == int(include_usage)
    assert await upstream_calls(http, stack.mock) == before + 1


@pytest.mark.parametrize("recorded_with_usage", [False, True])
@pytest.mark.parametrize("replayed_with_usage", [False, True])
async def test_include_usage_is_honoured_per_request_on_replay(
    stack: Stack, http: aiohttp.ClientSession, recorded_with_usage: bool, replayed_with_usage: bool
) -> None:
    body = chat(stream=True, stream_options={"include_usage": recorded_with_usage})
    miss = await post(http, stack.url, body)
    await asyncio.sleep(0.1)
    replay = {**body, "stream_options": {"include_usage": replayed_with_usage}}
    hit = await post(http, stack.url, replay)
    assert hit.cache == "hit"
    assert streamed_text(hit) == streamed_text(miss)
    chunks = usage_chunks(hit)
    assert len(chunks) == int(replayed_with_usage)  # never twice, never unasked
    if replayed_with_usage:
        usage = chunks[0]["usage"]
        assert usage["completion_tokens"] == 16 and usage["prompt_tokens"] > 0
        assert hit.events()[-1] == chunks[0]  # usage comes last
    assert hit.raw.count(b"data: [DONE]\n\n") == 1


async def test_tool_call_stream_replays_and_assembles(stack: Stack, http: aiohttp.ClientSession) -> None:
    body = chat(stream=True, tools=TOOLS, tool_choice="auto")
    miss = await post(http, stack.url, body)
    await asyncio.sleep(0.1)
    hit = await post(http, stack.url, body)
    assert hit.cache == "hit"
    assert hit.without_cost_comment() == miss.without_cost_comment()
    calls = [c for e in hit.events() for ch in e["choices"] for c in ch["delta"].get("tool_calls") or []]
    assert calls[0]["function"]["name"] == "get_weather"

    as_body = await post(http, stack.url, {**body, "stream": False})  # same key: stream is not in it
    assert as_body.cache == "hit"
    choice = as_body.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": "{}"}
    assert call["id"] == calls[0]["id"]


async def test_a_stream_entry_serves_a_body_and_a_body_entry_serves_a_stream(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    before = await upstream_calls(http, stack.mock)
    streamed = chat(stream=True)
    first = await post(http, stack.url, streamed)
    await asyncio.sleep(0.1)
    body_hit = await post(http, stack.url, {**streamed, "stream": False})
    assert body_hit.cache == "hit"
    message = body_hit.json()["choices"][0]
    assert message["message"]["content"] == streamed_text(first)
    assert message["finish_reason"] == "stop"
    assert body_hit.json()["id"] == first.events()[0]["id"]

    plain = chat()
    second = await post(http, stack.url, plain)
    await asyncio.sleep(0.1)
    stream_hit = await post(http, stack.url, {**plain, "stream": True})
    assert stream_hit.cache == "hit"
    assert stream_hit.headers["content-type"].startswith("text/event-stream")
    assert streamed_text(stream_hit) == second.json()["choices"][0]["message"]["content"]
    assert stream_hit.events()[-1]["choices"][0]["finish_reason"] == "stop"
    assert stream_hit.raw.count(b"data: [DONE]\n\n") == 1
    assert await upstream_calls(http, stack.mock) == before + 2


async def test_anthropic_requests_are_cached_apart_and_replayed(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    # one dict, valid in both wire formats: only the inbound format tells the two entries apart
    body = {
        "model": "claude-sonnet",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": f"anthropic {uuid.uuid4().hex}"}],
    }
    before = await upstream_calls(http, stack.mock)
    as_openai = await post(http, stack.url, body)
    assert as_openai.cache == "miss" and as_openai.json()["object"] == "chat.completion"
    await asyncio.sleep(0.1)
    miss = await post(http, stack.url, body, path="/v1/messages")
    assert miss.cache == "miss" and miss.json()["type"] == "message"
    assert await upstream_calls(http, stack.mock) == before + 2
    await asyncio.sleep(0.1)
    hit = await post(http, stack.url, body, path="/v1/messages")
    assert hit.cache == "hit" and hit.raw == miss.raw
    assert hit.headers["x-gateway-cost-usd"] == ZERO_COST
    openai_hit = await post(http, stack.url, body)
    assert openai_hit.cache == "hit" and openai_hit.raw == as_openai.raw

    streamed = {**body, "messages": [{"role": "user", "content": f"anthropic {uuid.uuid4().hex}"}]}
    streamed["stream"] = True
    stream_miss = await post(http, stack.url, streamed, path="/v1/messages")
    await asyncio.sleep(0.1)
    stream_hit = await post(http, stack.url, streamed, path="/v1/messages")
    assert stream_miss.cache == "miss" and stream_hit.cache == "hit"
    assert stream_hit.without_cost_comment() == stream_miss.without_cost_comment()
    assert b"event: message_stop" in stream_hit.raw
    body_from_stream = await post(http, stack.url, {**streamed, "stream": False}, path="/v1/messages")
    assert body_from_stream.cache == "hit"
    assert body_from_stream.json()["content"][0]["text"].strip()
    assert await upstream_calls(http, stack.mock) == before + 3


async def test_failed_and_cut_answers_are_never_stored(stack: Stack, http: aiohttp.ClientSession) -> None:
    rejected, cut = chat(), chat(stream=True)
    before = await upstream_calls(http, stack.mock)
    error = await post(http, stack.url, rejected, headers={"x-mock-status": "400"})
    assert error.status == 400 and "age" not in error.headers
    broken = await post(http, stack.url, cut, headers={"x-mock-cut-after": "3"})
    assert broken.status == 200 and b"data: [DONE]" not in broken.raw  # ended by an in-band error event
    assert b"error" in broken.raw
    await asyncio.sleep(0.2)
    assert (await post(http, stack.url, rejected)).cache == "miss"
    complete = await post(http, stack.url, cut)
    assert complete.cache == "miss" and b"data: [DONE]" in complete.raw
    assert await upstream_calls(http, stack.mock) == before + 4


# ---------------------------------------------------------------- freshness and client control


async def test_ttl_header_expires_the_entry(stack: Stack, http: aiohttp.ClientSession) -> None:
    body = chat()
    short = {"x-gateway-cache-ttl": "1"}
    assert (await post(http, stack.url, body, headers=short)).cache == "miss"
    await asyncio.sleep(0.1)
    assert (await post(http, stack.url, body)).cache == "hit"
    await asyncio.sleep(1.2)
    before = await upstream_calls(http, stack.mock)
    assert (await post(http, stack.url, body)).cache == "miss"
    assert await upstream_calls(http, stack.mock) == before + 1


async def test_no_cache_skips_the_read_and_refreshes_the_entry(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    body = chat()
    first = await post(http, stack.url, body)
    await asyncio.sleep(0.1)
    before = await upstream_calls(http, stack.mock)
    refreshed = await post(http, stack.url, body, headers={"cache-control": "no-cache"})
    assert refreshed.cache == "miss" and "age" not in refreshed.headers
    assert await upstream_calls(http, stack.mock) == before + 1
    assert refreshed.json()["id"] != first.json()["id"]  # a fresh upstream answer
    await asyncio.sleep(0.1)
    hit = await post(http, stack.url, body)
    assert hit.cache == "hit" and hit.raw == refreshed.raw  # the refreshed answer replaced the old one


async def test_no_store_bypasses_and_writes_nothing(stack: Stack, http: aiohttp.ClientSession) -> None:
    body = chat()
    before = await upstream_calls(http, stack.mock)
    bypass = await post(http, stack.url, body, headers={"cache-control": "no-store"})
    assert bypass.status == 200 and bypass.cache == "bypass" and "age" not in bypass.headers
    await asyncio.sleep(0.2)
    after = await post(http, stack.url, body)
    assert after.cache == "miss"  # nothing had been written
    assert await upstream_calls(http, stack.mock) == before + 2
    # and no-store on a request that would hit still goes upstream
    await asyncio.sleep(0.1)
    assert (await post(http, stack.url, body, headers={"cache-control": "no-store"})).cache == "bypass"
    assert await upstream_calls(http, stack.mock) == before + 3


@pytest.mark.parametrize(
    ("key", "fields", "expected"),
    [
        ("sk-off", {"temperature": 0}, ("bypass", "bypass")),
        ("sk-auto", {"temperature": 0}, ("miss", "hit")),
        ("sk-auto", {"temperature": 0.7}, ("bypass", "bypass")),
        ("sk-auto", {"temperature": 0.7, "seed": 7}, ("miss", "hit")),
        ("sk-auto", {"temperature": None}, ("bypass", "bypass")),  # the default temperature is 1
        ("sk-auto", {"temperature": 0, "n": 2}, ("bypass", "bypass")),
        ("sk-always", {"temperature": 0.7}, ("miss", "hit")),
        ("sk-always", {"temperature": 0.7, "n": 2}, ("bypass", "bypass")),
    ],
)
async def test_cache_modes(
    stack: Stack,
    http: aiohttp.ClientSession,
    key: str,
    fields: dict[str, Any],
    expected: tuple[str, str],
) -> None:
    body = {k: v for k, v in chat(**fields).items() if v is not None}
    before = await upstream_calls(http, stack.mock)
    first = await post(http, stack.url, body, key=key)
    await asyncio.sleep(0.1)
    second = await post(http, stack.url, body, key=key)
    assert (first.status, second.status) == (200, 200)
    assert (first.cache, second.cache) == expected
    upstream = 1 if expected[1] == "hit" else 2
    assert await upstream_calls(http, stack.mock) == before + upstream


async def test_embeddings_are_cached_under_auto(stack: Stack, http: aiohttp.ClientSession) -> None:
    body = {"model": "text-embedding-3-small", "input": [f"embed {uuid.uuid4().hex}", "second"]}
    before = await upstream_calls(http, stack.mock)
    miss = await post(http, stack.url, body, key="sk-auto", path="/v1/embeddings")
    assert miss.status == 200 and miss.cache == "miss"
    await asyncio.sleep(0.1)
    hit = await post(http, stack.url, body, key="sk-auto", path="/v1/embeddings")
    assert hit.cache == "hit" and hit.raw == miss.raw
    assert len(hit.json()["data"]) == 2
    assert await upstream_calls(http, stack.mock) == before + 1


# ---------------------------------------------------------------- stampede, fallbacks


async def test_a_stampede_of_identical_requests_makes_one_upstream_call(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    body = chat()
    slow = {"x-mock-latency-ms": "200"}
    before = await upstream_calls(http, stack.mock)
    replies = await asyncio.gather(*(post(http, stack.url, body, headers=slow) for _ in range(20)))
    assert {r.status for r in replies} == {200}
    assert await upstream_calls(http, stack.mock) == before + 1
    assert len({r.raw for r in replies}) == 1  # everyone got the one answer
    caches = sorted(r.cache for r in replies)
    assert caches == ["hit"] * 19 + ["miss"]
    costs = sorted(r.headers["x-gateway-cost-usd"] for r in replies)
    assert costs[:19] == [ZERO_COST] * 19 and costs[19] != ZERO_COST


async def test_a_fallback_answer_is_stored_under_the_fallback_model(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    body = {**chat(), "model": "broken"}
    before = await upstream_calls(http, stack.mock)
    first = await post(http, stack.url, body)
    assert first.status == 200 and first.cache == "miss"
    assert first.headers["x-gateway-model"] == "gpt-4o-mini"
    await asyncio.sleep(0.1)
    again = await post(http, stack.url, body)  # the primary's slot stays empty
    assert again.cache == "miss" and again.headers["x-gateway-model"] == "gpt-4o-mini"
    assert await upstream_calls(http, stack.mock) == before + 2
    await asyncio.sleep(0.1)
    direct = await post(http, stack.url, {**body, "model": "gpt-4o-mini"})
    assert direct.cache == "hit" and direct.raw == again.raw  # found where the fallback put it
    assert await upstream_calls(http, stack.mock) == before + 2


# ---------------------------------------------------------------- accounting


@pytest.mark.parametrize(
    ("team", "model"),
    [
        ("ledger", "gpt-4o"),
        # the hit must report what the answer cost, not a re-pricing on the model's first deployment
        ("ledger-2p", "two-priced"),
    ],
)
async def test_a_hit_is_in_the_ledger_and_the_metrics(
    stack: Stack, http: aiohttp.ClientSession, team: str, model: str
) -> None:
    body = chat(model=model)
    miss = await post(http, stack.url, body, key=f"sk-{team}")
    original = miss.headers["x-gateway-cost-usd"]
    assert miss.status == 200 and miss.cache == "miss" and original != ZERO_COST
    await asyncio.sleep(0.1)
    hit = await post(http, stack.url, body, key=f"sk-{team}")
    assert hit.cache == "hit"

    async def totals() -> dict[str, Any] | None:
        async with http.get(
            stack.url + "/admin/spend",
            params={"format": "json", "team": team, "by": "team"},
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as resp:
            assert resp.status == 200
            data = orjson.loads(await resp.read())
        return data["totals"] if data["totals"]["requests"] >= 2 else None

    spent = await eventually(totals)
    assert spent is not None, "the ledger never showed both requests"
    assert spent["requests"] == 2 and spent["cache_hits"] == 1
    assert spent["cost_usd"] == original  # the hit added nothing
    assert spent["cache_savings_usd"] == original  # the hit's counterfactual is the original cost

    samples = await metrics(http, stack.url)
    requests_total = "llm_gateway_cache_requests_total"
    assert metric(samples, requests_total, team=team, result="hit") == 1
    assert metric(samples, requests_total, team=team, result="miss") == 1
    saved = metric(samples, "llm_gateway_savings_usd_total", team=team, reason="cache")
    assert saved == pytest.approx(float(original), abs=1e-12)


# ---------------------------------------------------------------- entry size and compression


async def test_an_entry_above_max_entry_bytes_is_not_stored(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    # embeddings are random floats: they compress poorly, so the encoded entry stays above the limit
    inputs = [f"big {uuid.uuid4().hex} {i}" for i in range(3)]
    body = {"model": "text-embedding-3-small", "input": inputs, "dimensions": 4096}
    before = await upstream_calls(http, stack.mock)
    first = await post(http, stack.url, body, path="/v1/embeddings")
    assert first.cache == "miss" and len(first.raw) > MAX_ENTRY_BYTES
    await asyncio.sleep(0.2)
    second = await post(http, stack.url, body, path="/v1/embeddings")
    assert second.status == 200 and second.cache == "miss"
    assert await upstream_calls(http, stack.mock) == before + 2
    if stack.redis_url:
        assert _stored(stack, "team:always", "embeddings", "text-embedding-3-small", body) is None


async def test_large_entries_are_compressed_and_round_trip(stack: Stack, http: aiohttp.ClientSession) -> None:
    big, small = chat(), chat()
    long_answer = {"x-mock-completion-tokens": "3000"}
    miss = await post(http, stack.url, big, headers=long_answer)
    assert miss.cache == "miss" and len(miss.raw) > 4 * COMPRESS_MIN_BYTES
    small_miss = await post(http, stack.url, small)
    await asyncio.sleep(0.1)
    hit = await post(http, stack.url, big, headers=long_answer)
    assert hit.cache == "hit" and hit.raw == miss.raw
    assert (await post(http, stack.url, small)).raw == small_miss.raw
    if stack.redis_url:  # look at the stored bytes themselves
        stored = _stored(stack, "team:always", "chat", "gpt-4o", big, vary=long_answer)
        assert stored is not None and stored[: len(MAGIC) + 1] == MAGIC + b"\x01"
        assert len(stored) < len(miss.raw) // 4
        assert decode_entry(stored).body == miss.raw
        raw_small = _stored(stack, "team:always", "chat", "gpt-4o", small)
        assert raw_small is not None and raw_small[: len(MAGIC) + 1] == MAGIC + b"\x00"


def _stored(
    stack: Stack,
    namespace: str,
    operation: str,
    model: str,
    body: dict[str, Any],
    vary: dict[str, str] | None = None,
) -> bytes | None:
    """The raw cache value in Redis (see ResponseCache.slot and gateway.store.redis for the layout).
    ``vary``: the forwarded request headers (x-mock-* here), which are part of the key."""
    assert stack.redis_url is not None
    key = cache_key(namespace, "openai", operation, model, body, vary)
    client = redis.Redis.from_url(stack.redis_url)
    try:
        # A team's entries share the team's own hash slot (gw:{<team>}:c:<key>), so the cache probe and
        # the budget reservation run as one script; a shared group keeps its own slot.
        value = client.get(f"gw:{{{ResponseCache.slot(namespace)}}}:c:{key}")
    finally:
        client.close()
    assert value is None or isinstance(value, bytes)
    return value


# ---------------------------------------------------------------- two replicas, and Redis going away


async def test_two_gateways_on_one_redis_share_entries_and_the_stampede_lock(
    tmp_path: Path, mock_provider: MockProvider, module_redis: RedisServer, http: aiohttp.ClientSession
) -> None:
    """Observed: 10 + 10 concurrent identical requests split over two replicas make exactly one upstream
    call. Each replica's in-process leader races for the Redis lock (SET NX PX); the loser polls the entry
    (every 20 ms, at most lock_wait_ms) and serves it as a hit, and its own waiters share that. A second
    upstream call per replica is only possible when the lock holder takes longer than lock_wait_ms."""
    path = write_config(tmp_path, cache_config(mock_provider.url))
    first, second = await asyncio.gather(  # start both at once: a start is mostly tokenizer loading
        asyncio.to_thread(GatewayProc, path, redis_url=module_redis.url),
        asyncio.to_thread(GatewayProc, path, redis_url=module_redis.url),
    )
    try:
        body = chat()
        slow = {"x-mock-latency-ms": "300"}
        before = await upstream_calls(http, mock_provider)
        replies = await asyncio.gather(
            *(post(http, gw.url, body, headers=slow) for _ in range(10) for gw in (first, second))
        )
        assert {r.status for r in replies} == {200}
        assert len({r.raw for r in replies}) == 1
        assert await upstream_calls(http, mock_provider) == before + 1
        assert sorted(r.cache for r in replies) == ["hit"] * 19 + ["miss"]
        # and an entry written by one replica is a hit on the other
        other = chat()
        await post(http, first.url, other)
        await asyncio.sleep(0.1)
        assert (await post(http, second.url, other)).cache == "hit"
    finally:
        first.stop()
        second.stop()


async def test_redis_failure_fails_open(
    tmp_path: Path, mock_provider: MockProvider, http: aiohttp.ClientSession
) -> None:
    server = RedisServer(tmp_path / "redis")
    gw = GatewayProc(write_config(tmp_path, cache_config(mock_provider.url)), redis_url=server.url)
    try:
        body = chat()
        assert (await post(http, gw.url, body)).cache == "miss"
        await asyncio.sleep(0.1)
        assert (await post(http, gw.url, body)).cache == "hit"
        errors_before = await metrics(http, gw.url)

        server.stop()
        before = await upstream_calls(http, mock_provider)
        started = time.monotonic()
        down = await post(http, gw.url, body)
        assert down.status == 200 and down.cache in ("miss", "bypass")
        assert "age" not in down.headers and down.json()["choices"][0]["message"]["content"]
        streamed = await post(http, gw.url, chat(stream=True))
        assert streamed.status == 200 and streamed.cache in ("miss", "bypass")
        assert b"data: [DONE]" in streamed.raw
        assert time.monotonic() - started < 10
        assert await upstream_calls(http, mock_provider) == before + 2

        async def counted() -> bool:
            after = await metrics(http, gw.url)
            name = "llm_gateway_cache_errors_total"

            # The probe travels with the reservation ("admit"); a store error there is a plain miss,
            # with no wait for another replica's entry.
            def total(sample: Any) -> float:
                return metric(sample, name, operation="get") + metric(sample, name, operation="admit")

            return total(after) >= total(errors_before) + 2

        assert await eventually(counted), "cache errors were not counted"
        # Redis comes back (empty): the cache works again without a restart. (It also lets the gateway's
        # shutdown flush its ledger: with Redis still down, SIGTERM takes the harness's full 20 s timeout.)
        server.restart()
        recovered = chat()
        assert (await post(http, gw.url, recovered)).status == 200
        assert await eventually(lambda: _hit(http, gw.url, recovered)), "the cache did not recover"
    finally:
        gw.stop()
        server.stop()


async def test_forwarded_headers_are_part_of_the_key(stack: Stack, http: aiohttp.ClientSession) -> None:
    """A header the provider receives (here x-mock-*, like anthropic-beta in production) can change the
    answer, so two requests that differ only in it never share an entry."""
    body = chat()
    first = await post(http, stack.url, body, headers={"x-mock-completion-tokens": "3"})
    other = await post(http, stack.url, body, headers={"x-mock-completion-tokens": "5"})
    again = await post(http, stack.url, body, headers={"x-mock-completion-tokens": "3"})
    assert first.cache == "miss" and other.cache == "miss" and again.cache == "hit"
    assert again.raw == first.raw != other.raw
