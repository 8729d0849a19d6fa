"""The in-flight cap: a counter that refuses past the cap and never counts what it refused."""

from __future__ import annotations

import pytest

from gateway.errors import Overloaded
from gateway.http.errors import render
from gateway.overload import InFlightLimit


def test_refuses_past_the_cap_and_frees_a_place_on_leave() -> None:
    limit = InFlightLimit(2)
    limit.enter()
    limit.enter()
    with pytest.raises(Overloaded) as refused:
        limit.enter()
    assert (limit.count, limit.shed, limit.peak) == (2, 1, 2), "a refused request is not counted"
    assert refused.value.headers["retry-after"] == "1"
    limit.leave()
    limit.enter()
    assert limit.count == 2


def test_zero_means_no_cap() -> None:
    limit = InFlightLimit(0)
    for _ in range(10_000):
        limit.enter()
    assert (limit.count, limit.shed) == (10_000, 0)


def test_each_wire_gets_its_own_overload_status() -> None:
    err = Overloaded("busy")
    status, body, _ = render(err, "openai", "req-1")
    assert status == 503 and b'"code":"overloaded"' in body
    status, body, _ = render(err, "anthropic", "req-1")
    assert status == 529 and b'"type":"overloaded_error"' in body
