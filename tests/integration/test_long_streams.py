"""A stream that outlives its lease is still charged what it used, on both stores.

A lease lives ``total_s + lease_grace_s`` (1.5 s here). The stream below runs about 3.5 s, and a
second request from the same team lands 2.5 s into it: on both stores a reservation sweeps the team's
due leases, so an unrenewed lease would expire into spend there (the whole 1,000-token reservation
charged, the actual cost dropped at settle). The gateway renews a stream's lease every half TTL.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.harness import (
    ADMIN_TOKEN,
    GatewayProc,
    MockProvider,
    RedisServer,
    base_config,
    http_json,
    write_config,
)

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
CHUNKS, CHUNK_DELAY_MS = 10, 350


@pytest.fixture(params=["memory", "redis"])
def gw(request: pytest.FixtureRequest, tmp_path: Path, mock: MockProvider) -> Iterator[GatewayProc]:
    server = RedisServer(tmp_path / "redis") if request.param == "redis" else None
    cfg = base_config(mock.url)
    cfg["server"]["timeouts"] = {"connect_s": 2, "first_byte_s": 5, "idle_s": 5, "total_s": 1}
    cfg["store"]["lease_grace_s"] = 0.5
    cfg["teams"] = {
        "long": {
            "cache": {"mode": "off"},
            "budget": {"usd": "10", "period": "daily"},
            "keys": [{"id": "long", "key": "sk-long"}],
        }
    }
    proc = GatewayProc(write_config(tmp_path, cfg), redis_url=server.url if server else None)
    yield proc
    proc.stop()
    if server is not None:
        server.stop()


def _stream(gw: GatewayProc, out: dict[str, Any]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "a long answer, please"}],
        "max_tokens": 1000,
        "stream": True,
    }
    headers = {
        "authorization": "Bearer sk-long",
        "content-type": "application/json",
        "x-mock-completion-tokens": str(CHUNKS),
        "x-mock-chunk-delay-ms": str(CHUNK_DELAY_MS),
    }
    conn.request("POST", "/v1/chat/completions", orjson.dumps(body), headers)
    resp = conn.getresponse()
    out["status"], out["text"] = resp.status, resp.read().decode()
    conn.close()


def _spent(gw: GatewayProc) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        status, body, _ = http_json("GET", gw.url + "/admin/budgets", headers=ADMIN)
        assert status == 200, body
        scope = next(s for t in body["data"] if t["team"] == "long" for s in t["scopes"])
        if scope["reserved_usd"] in ("0.000000000", None):
            return scope
        assert time.monotonic() < deadline, scope
        time.sleep(0.05)


def test_a_stream_longer_than_its_lease_is_charged_its_actual_cost(gw: GatewayProc) -> None:
    answer: dict[str, Any] = {}
    streaming = threading.Thread(target=_stream, args=(gw, answer))
    started = time.monotonic()
    streaming.start()
    time.sleep(2.5)  # past the lease's 1.5 s TTL, before the stream ends: this reservation sweeps it
    status, body, headers = http_json(
        "POST",
        gw.url + "/v1/chat/completions",
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        {"authorization": "Bearer sk-long"},
    )
    assert status == 200, body
    streaming.join(30)
    assert time.monotonic() - started > 3.0, "the stream must outlive the lease's TTL"
    assert answer["status"] == 200 and "[DONE]" in answer["text"], answer
    stream_cost = Decimal(answer["text"].rsplit("x-gateway-cost-usd=", 1)[1].split()[0])
    short_cost = Decimal(headers["x-gateway-cost-usd"])

    scope = _spent(gw)
    assert Decimal(scope["spent_usd"]) == stream_cost + short_cost, (scope, stream_cost, short_cost)
    # The ledger agrees: two records, both metered (an expired lease's record is marked estimated).
    until = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")  # the default is now, to the second
    status, spend, _ = http_json("GET", gw.url + f"/admin/spend?team=long&until={until}", headers=ADMIN)
    assert status == 200, spend
    totals = spend["totals"]
    assert totals["requests"] == 2 and not float(totals["estimated_share"]), totals
    assert Decimal(totals["cost_usd"]) == stream_cost + short_cost, totals
