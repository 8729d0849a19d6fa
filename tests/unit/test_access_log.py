"""The access log's byte-spliced line is the same JSON object as the plain dict it replaces."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import jsonutil
from gateway.observability.logging import AccessLog

FIXED = {"level": "info", "logger": "gateway.access", "msg": "request"}
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(),
    st.floats(allow_nan=False, allow_infinity=False),
)
fields = st.dictionaries(st.text().filter(lambda k: k not in FIXED and k != "ts"), values, max_size=6)


def written(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    read_end, write_end = os.pipe()

    async def run() -> None:
        log = AccessLog(write_end)
        for f in batches:
            log.write(f)
        log.flush()

    try:
        asyncio.run(run())
        os.close(write_end)
        data = b""
        while chunk := os.read(read_end, 65536):
            data += chunk
    finally:
        os.close(read_end)
    return [jsonutil.loads(line) for line in data.splitlines()]


@settings(max_examples=60, deadline=None)
@given(st.lists(fields, min_size=1, max_size=4))
def test_each_line_is_the_fixed_fields_plus_the_request_fields(batches: list[dict[str, Any]]) -> None:
    lines = written(batches)
    assert len(lines) == len(batches)
    for line, f in zip(lines, batches, strict=True):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line.pop("ts"))
        assert line == {**FIXED, **f}


def test_an_empty_field_set_is_still_a_line() -> None:
    [line] = written([{}])
    line.pop("ts")
    assert line == FIXED
