"""The response cache as a boundary between teams: real gateway processes, the mock provider, both stores.

Two teams sending the identical request never read each other's entry (each one's first answer comes
from the provider, proven by the mock's request counter and the provider's response id), unless both
name the same explicit shared ``group``. A miss looks the same whether or not another team holds the
entry, so the cache cannot be used to learn what other teams ask. A revoked key reads nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.harness import ADMIN_TOKEN, GatewayProc, MockProvider, RedisServer, write_config
from tests.integration.test_cache import Resp, Stack, cache_config, chat, post, upstream_calls

# Headers whose values legitimately differ between any two responses (ids, clocks, sizes, money left).
VOLATILE = {
    "x-request-id",
    "date",
    "content-length",
    "x-gateway-cost-usd",
    "x-gateway-budget-remaining-usd",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
}


def security_config(mock_url: str) -> dict[str, Any]:
    cfg = cache_config(mock_url)
    always = {"mode": "always", "ttl_s": 600}
    for team, group in (("a", None), ("b", None), ("g1", "shared"), ("g2", "shared"), ("g3", "elsewhere")):
        cfg["teams"][team] = {
            "keys": [{"id": f"key-{team}", "key": f"sk-{team}"}],
            "cache": {**always, "group": group} if group else always,
            "budget": {"usd": 100, "period": "monthly"},
        }
    return cfg


@pytest.fixture(scope="module")
def mock_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockProvider]:
    provider = MockProvider(tmp_path_factory.mktemp("cache-security-mock"))
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("cache-security-redis"))
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
    tmp = tmp_path_factory.mktemp(f"cache-security-{store}")
    redis_url = module_redis.url if store == "redis" else None
    proc = GatewayProc(write_config(tmp, security_config(mock_provider.url)), redis_url=redis_url)
    yield Stack(store, proc.url, mock_provider, redis_url)
    proc.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def answer_id(resp: Resp) -> str:
    """The provider's response id: a fresh upstream answer has a new one, a replay repeats it.
    (Embeddings have no id and the mock's are deterministic: their raw bytes stand in.)"""
    if resp.headers["content-type"].startswith("text/event-stream"):
        first = resp.events()[0]
        return str(first.get("id") or first["message"]["id"])
    return str(resp.json().get("id") or resp.raw.decode())


async def primed(session: aiohttp.ClientSession, url: str, body: dict[str, Any], key: str, **kw: Any) -> Resp:
    """Team ``key`` asks first and then again, so its entry is certainly stored; returns the first answer."""
    first = await post(session, url, body, key=key, **kw)
    assert first.status == 200 and first.cache == "miss"
    await asyncio.sleep(0.1)
    again = await post(session, url, body, key=key, **kw)
    assert again.cache == "hit" and answer_id(again) == answer_id(first)
    return first


# ---------------------------------------------------------------- isolation


@pytest.mark.parametrize("stream", [False, True])
async def test_a_team_never_receives_another_teams_entry(
    stack: Stack, http: aiohttp.ClientSession, stream: bool
) -> None:
    body = chat(stream=stream)
    a_first = await primed(http, stack.url, body, "sk-a")

    before = await upstream_calls(http, stack.mock)
    b_first = await post(http, stack.url, body, key="sk-b")
    assert b_first.status == 200 and b_first.cache == "miss"
    assert await upstream_calls(http, stack.mock) == before + 1  # B's answer came from the provider
    assert answer_id(b_first) != answer_id(a_first)
    await asyncio.sleep(0.1)

    b_again = await post(http, stack.url, body, key="sk-b")
    a_again = await post(http, stack.url, body, key="sk-a")
    assert b_again.cache == a_again.cache == "hit"
    assert answer_id(b_again) == answer_id(b_first)  # each team replays its own answer
    assert answer_id(a_again) == answer_id(a_first)
    assert await upstream_calls(http, stack.mock) == before + 1


async def test_isolation_holds_for_anthropic_and_embeddings(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    message = {
        "model": "claude-sonnet",
        "max_tokens": 32,
        "messages": [{"role": "user", "content": f"secret {uuid.uuid4().hex}"}],
    }
    embedding = {"model": "text-embedding-3-small", "input": f"secret {uuid.uuid4().hex}"}
    for body, path in ((message, "/v1/messages"), (embedding, "/v1/embeddings")):
        await primed(http, stack.url, body, "sk-a", path=path)
        before = await upstream_calls(http, stack.mock)
        other = await post(http, stack.url, body, key="sk-b", path=path)
        assert other.status == 200 and other.cache == "miss", path
        assert await upstream_calls(http, stack.mock) == before + 1, path


async def test_teams_in_one_explicit_group_share_and_nobody_else_does(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    body = chat()
    g1_first = await primed(http, stack.url, body, "sk-g1")
    before = await upstream_calls(http, stack.mock)
    g2 = await post(http, stack.url, body, key="sk-g2")
    assert g2.cache == "hit" and g2.raw == g1_first.raw
    assert await upstream_calls(http, stack.mock) == before  # served from the group's entry

    for outsider in ("sk-g3", "sk-a"):  # another group, and a team without one
        resp = await post(http, stack.url, body, key=outsider)
        assert resp.cache == "miss" and answer_id(resp) != answer_id(g1_first), outsider
    assert await upstream_calls(http, stack.mock) == before + 2

    # and a team's own namespace is not reachable by a group member either
    private = chat()
    await primed(http, stack.url, private, "sk-a")
    assert (await post(http, stack.url, private, key="sk-g1")).cache == "miss"


# ---------------------------------------------------------------- no side channel


@pytest.mark.parametrize("stream", [False, True])
async def test_a_miss_looks_the_same_whether_or_not_another_team_holds_the_entry(
    stack: Stack, http: aiohttp.ClientSession, stream: bool
) -> None:
    held_elsewhere = chat(stream=stream)
    await primed(http, stack.url, held_elsewhere, "sk-a")
    nowhere = chat(stream=stream)  # same shape, cached by nobody

    probe = await post(http, stack.url, held_elsewhere, key="sk-b")
    control = await post(http, stack.url, nowhere, key="sk-b")
    assert probe.status == control.status == 200
    assert probe.cache == control.cache == "miss"
    assert "age" not in probe.headers and "age" not in control.headers
    assert set(probe.headers) == set(control.headers)
    stable = {name: value for name, value in probe.headers.items() if name not in VOLATILE}
    assert stable == {name: value for name, value in control.headers.items() if name not in VOLATILE}
    # (the cost differs only with the prompt's token count: the prompts differ in their random suffix)
    if stream:  # same number of events, same shape, only ids and counts differ
        assert [sorted(e) for e in probe.events()] == [sorted(e) for e in control.events()]
    else:
        assert sorted(probe.json()) == sorted(control.json())
        assert probe.json()["choices"] == control.json()["choices"]


# ---------------------------------------------------------------- revoked keys


async def test_a_revoked_key_cannot_read_cached_entries(stack: Stack, http: aiohttp.ClientSession) -> None:
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/json"}
    async with http.post(stack.url + "/admin/keys", data=orjson.dumps({"team": "a"}), headers=admin) as resp:
        assert resp.status == 201
        created = orjson.loads(await resp.read())
    key, key_id = created["key"], created["id"]

    body, streamed = chat(), chat(stream=True)
    await primed(http, stack.url, body, key)
    await primed(http, stack.url, streamed, key)
    async with http.delete(f"{stack.url}/admin/keys/{key_id}", headers=admin) as resp:
        assert resp.status == 200

    before = await upstream_calls(http, stack.mock)
    for request in (body, streamed):
        denied = await post(http, stack.url, request, key=key)
        assert denied.status == 401
        assert "x-gateway-cache" not in denied.headers and "age" not in denied.headers
        assert denied.json()["error"]["code"] == "key_revoked"
    assert await upstream_calls(http, stack.mock) == before
    # the entries are still there for the team's valid keys: the 401 was the key, not a miss
    assert (await post(http, stack.url, body, key="sk-a")).cache == "hit"
