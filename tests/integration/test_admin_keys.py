"""The admin API for virtual keys and the ``gateway keys`` CLI, against real gateway processes.

Covers: the admin surface is absent (404) without GATEWAY_ADMIN_TOKEN and closed (401) to a wrong
token; a created key is shown once, works, is listed without its secret and can be revoked;
revocation reaches a second gateway process sharing the same Redis within 5 s (dynamic and
YAML-declared keys alike); only sha256 digests are ever stored (Redis contents and the embedded
store's state files are searched for the plaintext); the CLI wraps all of it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.harness import (
    ADMIN_TOKEN,
    ROOT,
    GatewayProc,
    MockProvider,
    RedisServer,
    base_config,
    http_json,
    write_config,
)

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
REVOCATION_DEADLINE_S = 5.0


def chat_status(gw: GatewayProc, key: str, model: str = "gpt-4o") -> int:
    body = {**CHAT, "model": model}
    headers = {"authorization": f"Bearer {key}"}
    status, _, _ = http_json("POST", gw.url + "/v1/chat/completions", body, headers)
    return status


def create_key(gw: GatewayProc, team: str = "demo", name: str = "test") -> dict[str, Any]:
    status, body, _ = http_json("POST", gw.url + "/admin/keys", {"team": team, "name": name}, ADMIN)
    assert status == 201, body
    return dict(body)


def list_keys(gw: GatewayProc) -> list[dict[str, Any]]:
    status, body, _ = http_json("GET", gw.url + "/admin/keys", None, ADMIN)
    assert status == 200, body
    return list(body["data"])


def revoke(gw: GatewayProc, key_id: str) -> tuple[int, Any]:
    status, body, _ = http_json("DELETE", f"{gw.url}/admin/keys/{key_id}", None, ADMIN)
    return status, body


def wait_for_401(gw: GatewayProc, key: str, model: str = "gpt-4o") -> float:
    """Poll until the key is refused; the elapsed seconds (the caller asserts the bound)."""
    started = time.monotonic()
    while time.monotonic() - started < REVOCATION_DEADLINE_S + 5:
        status = chat_status(gw, key, model)
        if status == 401:
            return time.monotonic() - started
        assert status == 200, status
        time.sleep(0.05)
    raise AssertionError("key still accepted after 10s")


# ---------------------------------------------------------------- one gateway, embedded store


@pytest.fixture(scope="module")
def mem_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("admin-memory")


@pytest.fixture(scope="module")
def gw(mock: MockProvider, mem_dir: Path) -> Iterator[GatewayProc]:
    proc = GatewayProc(write_config(mem_dir, base_config(mock.url)))
    yield proc
    proc.stop()


def test_the_admin_api_is_absent_without_a_token(mock: MockProvider, tmp_path: Path) -> None:
    proc = GatewayProc(write_config(tmp_path, base_config(mock.url)), env={"GATEWAY_ADMIN_TOKEN": ""})
    try:
        for method, path, body in [
            ("GET", "/admin/keys", None),
            ("POST", "/admin/keys", {"team": "demo"}),
            ("DELETE", "/admin/keys/demo", None),
            ("GET", "/admin/budgets", None),
            ("GET", "/admin/spend", None),
            ("POST", "/admin/reload", None),
        ]:
            for headers in ({}, ADMIN, {"authorization": "Bearer "}):
                status, err, _ = http_json(method, proc.url + path, body, headers)
                assert status == 404, (method, path, err)
                assert err["error"]["type"] == "invalid_request_error"
        assert chat_status(proc, "sk-demo") == 200  # the LLM surface is unaffected
    finally:
        proc.stop()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
        {"authorization": f"Basic {ADMIN_TOKEN}"},
        {"authorization": "Bearer sk-demo"},  # a virtual key is not an admin token
        {"x-api-key": ADMIN_TOKEN},
    ],
)
def test_a_wrong_admin_token_is_a_401(gw: GatewayProc, headers: dict[str, str]) -> None:
    for method, path in [("GET", "/admin/keys"), ("POST", "/admin/keys"), ("DELETE", "/admin/keys/demo")]:
        status, err, _ = http_json(method, gw.url + path, {"team": "demo"}, headers)
        assert status == 401, (method, path, err)
        assert err["error"]["type"] == "authentication_error"
    assert chat_status(gw, "sk-demo") == 200  # nothing was revoked by the attempts


def test_create_use_list_revoke(gw: GatewayProc) -> None:
    created = create_key(gw, "demo", "ci-bot")
    key = created["key"]
    assert key.startswith("sk-gw-") and len(key) > 40
    assert created["team"] == "demo" and created["name"] == "ci-bot" and created["source"] == "admin"
    assert created["id"].startswith("key_")
    assert chat_status(gw, key) == 200

    listed = {k["id"]: k for k in list_keys(gw)}
    assert listed[created["id"]] == {k: v for k, v in created.items() if k != "key"}
    assert listed["demo"]["source"] == "config" and listed["other"]["team"] == "other"
    raw = orjson.dumps(list_keys(gw))
    assert key.encode() not in raw and hashlib.sha256(key.encode()).hexdigest().encode() not in raw
    assert b'"key"' not in raw and b"sk-demo" not in raw

    status, body = revoke(gw, created["id"])
    assert (status, body) == (200, {"id": created["id"], "revoked": True})
    assert chat_status(gw, key) == 401  # the process that revoked applies it at once
    assert created["id"] not in {k["id"] for k in list_keys(gw)}
    assert revoke(gw, created["id"])[0] == 200  # idempotent
    assert chat_status(gw, "sk-demo") == 200


def test_each_created_key_is_distinct_and_team_bound(gw: GatewayProc) -> None:
    a, b = create_key(gw, "other", "a"), create_key(gw, "other", "b")
    assert a["key"] != b["key"] and a["id"] != b["id"]
    status, err, _ = http_json(
        "POST", gw.url + "/v1/chat/completions", CHAT, {"authorization": f"Bearer {a['key']}"}
    )
    assert status == 404 and err["error"]["param"] == "model"  # team `other` may not use gpt-4o
    mini = {**CHAT, "model": "gpt-4o-mini"}
    status, _, _ = http_json(
        "POST", gw.url + "/v1/chat/completions", mini, {"authorization": f"Bearer {b['key']}"}
    )
    assert status == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"team": "nope", "name": "x"}, "team"),
        ({"name": "x"}, "team"),
        ({"team": 5}, "team"),
        ({"team": "demo", "name": 5}, "name"),
        ({"team": "demo", "name": "x" * 201}, "name"),
    ],
)
def test_create_key_rejects_bad_bodies(gw: GatewayProc, body: dict[str, Any], param: str) -> None:
    status, err, _ = http_json("POST", gw.url + "/admin/keys", body, ADMIN)
    assert status == 400, err
    assert err["error"]["param"] == param


def test_create_key_rejects_malformed_json(gw: GatewayProc) -> None:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(gw.url + "/admin/keys", data=b"{nope", method="POST", headers=ADMIN)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 400
    assert orjson.loads(info.value.read())["error"]["type"] == "invalid_request_error"


def test_revoking_an_unknown_id_is_a_404_and_revokes_nothing(gw: GatewayProc) -> None:
    status, err = revoke(gw, "future-yaml-key")
    assert status == 404, err
    assert "future-yaml-key" in err["error"]["message"]


def test_keys_are_stored_only_as_sha256_in_the_embedded_store(gw: GatewayProc, mem_dir: Path) -> None:
    created = create_key(gw, "demo", "hash-check")
    digest = hashlib.sha256(created["key"].encode()).hexdigest()
    assert chat_status(gw, created["key"]) == 200
    files = [p for p in (mem_dir / "state").rglob("*") if p.is_file()]
    assert files, "the embedded store wrote no state"
    blob = b"".join(p.read_bytes() for p in files)
    assert digest.encode() in blob  # it is there, as a digest
    secret = created["key"].encode()
    assert secret not in blob
    assert secret[6:] not in blob  # not even without its prefix
    assert secret not in gw.proc.log().encode()  # nor in the logs


def test_the_cli_wraps_the_admin_api(gw: GatewayProc) -> None:
    env = {**os.environ, "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}

    def start(*args: str, env: dict[str, str] = env) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "keys", *args, "--url", gw.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )

    def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
        out, err = proc.communicate(timeout=60)
        return proc.returncode, out, err

    def cli(*args: str) -> tuple[int, str, str]:
        return finish(start(*args))

    # The failure cases need no shared state: they run alongside the happy path (each CLI start
    # costs about a second of imports).
    failures = [
        start("list", env={k: v for k, v in env.items() if k != "GATEWAY_ADMIN_TOKEN"}),
        start("list", env={**env, "GATEWAY_ADMIN_TOKEN": "wrong"}),
        start("revoke", "no-such-key"),
    ]

    code, out, err = cli("create", "--team", "demo", "--name", "from-cli")
    assert code == 0, err
    created = orjson.loads(out)
    assert created["team"] == "demo" and created["name"] == "from-cli"
    assert "shown only once" in err
    assert chat_status(gw, created["key"]) == 200

    code, out, err = cli("list")
    assert code == 0, err
    rows = [line.split("\t") for line in out.splitlines()]
    assert [created["id"], "demo", "from-cli", "admin"] in rows
    assert ["demo", "demo", "", "config"] in rows
    assert created["key"] not in out

    code, out, err = cli("revoke", created["id"])
    assert code == 0, err
    assert orjson.loads(out) == {"id": created["id"], "revoked": True}
    assert chat_status(gw, created["key"]) == 401
    assert created["id"] not in {k["id"] for k in list_keys(gw)}

    (no_token, _, no_token_err), (wrong, _, wrong_err), (missing, _, missing_err) = map(finish, failures)
    assert no_token != 0 and "GATEWAY_ADMIN_TOKEN" in no_token_err
    assert wrong != 0 and "401" in wrong_err
    assert missing != 0 and "404" in missing_err


# ---------------------------------------------------------------- two gateways, one Redis


@dataclass
class Pair:
    a: GatewayProc
    b: GatewayProc
    redis: RedisServer


@pytest.fixture(scope="module")
def pair(mock: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("admin-redis")
    server = RedisServer(tmp / "redis")
    config = write_config(tmp, base_config(mock.url))
    a = b = None
    try:
        a = GatewayProc(config, redis_url=server.url)
        b = GatewayProc(config, redis_url=server.url)
        yield Pair(a, b, server)
    finally:
        for proc in (a, b):
            if proc is not None:
                proc.stop()
        server.stop()


def test_a_key_created_on_one_gateway_works_on_another_and_revocation_spreads(pair: Pair) -> None:
    created = create_key(pair.a, "demo", "shared")
    assert chat_status(pair.b, created["key"]) == 200
    assert created["id"] in {k["id"] for k in list_keys(pair.b)}

    assert revoke(pair.a, created["id"])[0] == 200
    assert chat_status(pair.a, created["key"]) == 401
    elapsed = wait_for_401(pair.b, created["key"])
    assert elapsed < REVOCATION_DEADLINE_S, elapsed
    assert created["id"] not in {k["id"] for k in list_keys(pair.b)}
    assert chat_status(pair.b, "sk-demo") == 200


def test_revoking_a_yaml_key_spreads_too(pair: Pair) -> None:
    assert chat_status(pair.b, "sk-other", "gpt-4o-mini") == 200
    assert revoke(pair.a, "other")[0] == 200
    elapsed = wait_for_401(pair.b, "sk-other", "gpt-4o-mini")
    assert elapsed < REVOCATION_DEADLINE_S, elapsed
    assert chat_status(pair.a, "sk-other", "gpt-4o-mini") == 401
    assert "other" not in {k["id"] for k in list_keys(pair.b)}
    assert chat_status(pair.b, "sk-demo") == 200  # only that key


def test_a_new_gateway_starts_with_the_revocations(pair: Pair, mock: MockProvider, tmp_path: Path) -> None:
    created = create_key(pair.a, "demo", "before-start")
    assert revoke(pair.a, created["id"])[0] == 200
    late = GatewayProc(write_config(tmp_path, base_config(mock.url)), redis_url=pair.redis.url)
    try:
        assert chat_status(late, created["key"]) == 401
    finally:
        late.stop()


def test_keys_are_stored_only_as_sha256_in_redis(pair: Pair) -> None:
    created = create_key(pair.a, "demo", "redis-hash-check")
    assert chat_status(pair.b, created["key"]) == 200
    digest = hashlib.sha256(created["key"].encode()).hexdigest().encode()
    client = redis.Redis.from_url(pair.redis.url)
    try:
        blob = b"\n".join(_dump(client, name) for name in client.scan_iter(count=1000))
    finally:
        client.close()
    assert digest in blob
    assert created["key"].encode() not in blob
    assert created["key"][6:].encode() not in blob
    for proc in (pair.a, pair.b):
        assert created["key"] not in proc.proc.log()


def _dump(client: redis.Redis, name: bytes) -> bytes:
    """A key's name and every byte of its value, whatever its type."""
    kind = client.type(name)
    if kind == b"string":
        value: Any = client.get(name)
    elif kind == b"hash":
        value = client.hgetall(name)
    elif kind == b"set":
        value = client.smembers(name)
    elif kind == b"zset":
        value = client.zrange(name, 0, -1, withscores=True)
    elif kind == b"list":
        value = client.lrange(name, 0, -1)
    elif kind == b"stream":
        value = client.xrange(name)
    else:
        raise AssertionError(f"unexpected Redis type {kind!r} for {name!r}")
    return name + b" " + repr(value).encode()
