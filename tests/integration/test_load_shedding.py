"""Past ``server.max_in_flight`` a request is refused at once, in the caller's own overload format.

Two slow requests (one a stream) hold a cap of two; the next ones are refused before anything is
reserved (the budget shows no reservation and no spend for them, the mock never sees them), with the
status each official SDK knows as "overloaded"; once the slow ones end, requests pass again.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.harness import ADMIN_TOKEN, GatewayProc, MockProvider, base_config, http_json, write_config

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, mock: MockProvider) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("shedding")
    cfg = base_config(mock.url)
    cfg["server"]["max_in_flight"] = 2
    cfg["teams"] = {
        "busy": {
            "cache": {"mode": "off"},
            "budget": {"usd": "10", "period": "daily"},
            "keys": [{"id": "busy", "key": "sk-busy"}],
        }
    }
    proc = GatewayProc(write_config(tmp, cfg))
    yield proc
    proc.stop()


def _slow(gw: GatewayProc, stream: bool, out: list[int]) -> None:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": HI, "max_tokens": 5, "stream": stream}
    headers = {"authorization": "Bearer sk-busy"}
    headers.update({"x-mock-chunk-delay-ms": "400"} if stream else {"x-mock-latency-ms": "2000"})
    status, _body, _ = http_json("POST", gw.url + "/v1/chat/completions", body, headers)
    out.append(status)


def _mock_in_flight(mock: MockProvider) -> int:
    return int(http_json("GET", mock.url + "/_mock/stats")[1]["in_flight"])


def _mock_requests(mock: MockProvider) -> int:
    return int(http_json("GET", mock.url + "/_mock/stats")[1]["requests"])


def _metric(gw: GatewayProc, name: str) -> float:
    status, text, _ = http_json("GET", gw.url + "/metrics")
    assert status == 200
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def _scope(gw: GatewayProc) -> dict[str, Any]:
    status, body, _ = http_json("GET", gw.url + "/admin/budgets", headers=ADMIN)
    assert status == 200, body
    return next(s for t in body["data"] if t["team"] == "busy" for s in t["scopes"])


def test_requests_past_the_cap_are_refused_in_each_wire_format(gw: GatewayProc, mock: MockProvider) -> None:
    served_before = _mock_requests(mock)
    statuses: list[int] = []
    slow = [threading.Thread(target=_slow, args=(gw, stream, statuses)) for stream in (False, True)]
    for thread in slow:
        thread.start()
    deadline = time.monotonic() + 10
    while _mock_in_flight(mock) < 2:  # both hold their place now
        assert time.monotonic() < deadline, "the slow requests never reached the mock"
        time.sleep(0.02)
    reserved_while_full = _scope(gw)["reserved_usd"]

    status, body, headers = http_json(
        "POST",
        gw.url + "/v1/chat/completions",
        {"model": "gpt-4o", "messages": HI},
        {"authorization": "Bearer sk-busy", "x-request-id": "shed-1"},
    )
    assert status == 503, body
    assert body["error"]["type"] == "service_unavailable" and body["error"]["code"] == "overloaded", body
    assert headers["retry-after"] == "1" and headers["x-request-id"] == "shed-1"

    claude = anthropic.Anthropic(api_key="sk-busy", base_url=gw.url, max_retries=0)
    with claude, pytest.raises(anthropic.OverloadedError) as overloaded:
        claude.messages.create(model="claude-sonnet", max_tokens=5, messages=HI)  # type: ignore[arg-type]
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]

    oai = openai.OpenAI(api_key="sk-busy", base_url=gw.url + "/v1", max_retries=0)
    with oai, pytest.raises(openai.InternalServerError) as unavailable:
        oai.chat.completions.create(model="gpt-4o", messages=HI)  # type: ignore[arg-type]
    assert unavailable.value.status_code == 503

    assert _scope(gw)["reserved_usd"] == reserved_while_full, "a refused request reserves nothing"
    assert _metric(gw, 'llm_gateway_shed_requests_total{wire="openai"}') == 2
    assert _metric(gw, 'llm_gateway_shed_requests_total{wire="anthropic"}') == 1
    assert _metric(gw, "llm_gateway_inflight_requests") == 2  # both slow ones

    for thread in slow:
        thread.join(15)
    assert sorted(statuses) == [200, 200], statuses
    assert _mock_requests(mock) == served_before + 2, "the refused requests never reached the provider"

    # The places are free again.
    with openai.OpenAI(api_key="sk-busy", base_url=gw.url + "/v1", max_retries=0) as oai:
        answer = oai.chat.completions.create(model="gpt-4o", messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
