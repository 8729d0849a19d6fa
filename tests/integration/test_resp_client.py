"""The pipelined RESP client of the budget hot path, against a real redis-server."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.store.base import StoreError
from gateway.store.resp import ReplyError, RespClient, _pack_python, pack
from tests.harness import RedisServer, free_port


def test_pack_encodes_every_argument_type() -> None:
    assert pack(("SET", b"k", 3, 1.5)) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n3\r\n$3\r\n1.5\r\n"
    assert pack(["SET", "é", True]) == b"*3\r\n$3\r\nSET\r\n$2\r\n\xc3\xa9\r\n$4\r\nTrue\r\n"


@given(
    st.lists(
        st.one_of(st.text(), st.binary(), st.integers(), st.floats(allow_nan=False, allow_infinity=False)),
        min_size=1,
        max_size=20,
    )
)
def test_the_c_and_python_encoders_agree(args: list[object]) -> None:
    assert pack(tuple(args)) == _pack_python(args)


async def test_pipelined_commands_answer_in_order(redis_server: RedisServer) -> None:
    client = RespClient(redis_server.url, 1.0)
    try:
        key = "resp-test:order"
        replies = await client.execute_many([("DEL", key)] + [("INCR", key)] * 50)
        assert replies[1:] == list(range(1, 51))
        # Many concurrent callers share one connection; each gets its own answer.
        results = await asyncio.gather(*(client.execute("INCRBY", key, 0) for _ in range(100)))
        assert set(results) == {50}
        assert isinstance(await client.execute("NOSUCHCOMMAND"), ReplyError)
    finally:
        await client.close()


async def test_scripts_load_on_noscript_through_the_store(redis_server: RedisServer) -> None:
    from gateway.store.redis import RedisStore

    store = RedisStore(redis_server.url)
    try:
        await store.fast.execute("SCRIPT", "FLUSH")
        assert await store.expire_leases("resp-noscript-team", 0) == 0  # NOSCRIPT, loaded, re-run
        await store.fast.execute("SCRIPT", "FLUSH")
        assert await store.expire_leases("resp-noscript-team", 0) == 0
    finally:
        await store.close()


async def test_connection_loss_fails_in_flight_commands_and_reconnects(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r")
    client = RespClient(server.url, 1.0)
    try:
        assert await client.execute("PING") == b"PONG"
        server.restart()
        with pytest.raises(StoreError):  # the old socket is gone: a StoreError, not a hang
            for _ in range(5):
                await client.execute("PING")
                await asyncio.sleep(0.05)
        assert await client.execute("PING") == b"PONG"  # and the next command reconnects
    finally:
        await client.close()
        server.stop()


async def test_a_silent_server_times_out(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r")
    client = RespClient(server.url, 0.3)
    try:
        assert await client.execute("PING") == b"PONG"
        server.proc.popen.send_signal(19)  # SIGSTOP: the socket stays open, nothing answers
        with pytest.raises(StoreError, match="no answer"):
            await client.execute("PING")
        server.proc.popen.send_signal(18)  # SIGCONT
        assert await client.execute("PING") == b"PONG"
    finally:
        await client.close()
        server.stop()


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            "s3cret",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        yield f"redis://:s3cret@127.0.0.1:{port}/2"
    finally:
        proc.terminate()
        proc.wait()


async def test_auth_and_database_selection(password_redis: str) -> None:
    client = RespClient(password_redis, 1.0)
    try:
        for _ in range(50):  # the server may still be starting
            try:
                await client.execute("PING")
                break
            except StoreError:
                await asyncio.sleep(0.05)
        await client.execute("SET", "resp:db", "two")
        info = await client.execute("CLIENT", "INFO")
        assert b"db=2" in info
        wrong = RespClient(password_redis.replace("s3cret", "wrong"), 1.0)
        with pytest.raises(StoreError):
            await wrong.execute("PING")
        await wrong.close()
    finally:
        await client.close()
