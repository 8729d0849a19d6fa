"""``GET /admin/spend``'s time window against a real gateway (embedded store).

- Without ``until``, the window ends now: a request recorded this very second is counted. (It used to
  end at the start of the current second, so a report asked for right after a request missed it.)
- A window that cannot be represented in UTC is the caller's 400 in the API's error shape, never
  aiohttp's plain-text 500 (``since=0001-01-01T00:00:00+23:59`` lies before year 1 in UTC).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import ADMIN_TOKEN, GatewayProc, MockProvider, base_config, http_json, write_config

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def gw(mock: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    proc = GatewayProc(write_config(tmp_path_factory.mktemp("spend-window"), base_config(mock.url)))
    yield proc
    proc.stop()


def spend(gw: GatewayProc, **query: str) -> tuple[int, Any]:
    status, body, _ = http_json("GET", f"{gw.url}/admin/spend?{urllib.parse.urlencode(query)}", None, ADMIN)
    return status, body


def test_the_default_window_counts_this_seconds_requests(gw: GatewayProc) -> None:
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "count me"}]}
    status, _, _ = http_json(
        "POST", gw.url + "/v1/chat/completions", chat, {"authorization": "Bearer sk-demo"}
    )
    assert status == 200
    # The ledger is written after the answer: wait until a window that surely holds it sees it.
    deadline = time.monotonic() + 10
    while True:
        status, body = spend(gw, since="2000-01-01", until="9999-01-01")
        assert status == 200, body
        if body["totals"]["requests"] == 1:
            break
        assert time.monotonic() < deadline, "the request never reached the ledger"
        time.sleep(0.02)
    # At once, in (almost always) the same second as the record: the default window must hold it.
    status, body = spend(gw, since="2000-01-01")
    assert status == 200, body
    assert body["totals"]["requests"] == 1


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"since": "0001-01-01T00:00:00+23:59"}, "since"),  # before year 1 once moved to UTC
        ({"since": "2026-01-01", "until": "9999-12-31T23:59:59-23:59"}, "until"),  # after year 9999 in UTC
        ({"since": "10000-01-01"}, "since"),
        ({"since": "2026-12-01", "until": "2026-11-01"}, "until"),
        ({"since": "soon"}, "since"),
        ({"since": "2026-11-01", "until": "later"}, "until"),
    ],
)
def test_an_unrepresentable_window_is_a_400(gw: GatewayProc, query: dict[str, str], param: str) -> None:
    status, body = spend(gw, **query)
    assert status == 400, body
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param  # the one at fault, never `since` for a bad `until`
