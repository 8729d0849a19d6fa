"""Stopping long-lived tasks at shutdown, including one whose library swallows the cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.tasks import cancel_and_wait


async def periodic(swallow: int, ran: list[int]) -> None:
    """A periodic job whose first ``swallow`` cancellations are lost inside a 'library call'."""
    while True:
        try:
            await asyncio.sleep(0.01)
            ran.append(1)
        except asyncio.CancelledError:
            if swallow > 0:
                swallow -= 1
                continue
            raise


async def test_a_task_that_swallows_its_cancellation_is_cancelled_again() -> None:
    ran: list[int] = []
    task = asyncio.get_running_loop().create_task(periodic(2, ran), name="gauges")
    await asyncio.sleep(0.03)
    started = time.monotonic()
    await cancel_and_wait([task], timeout=5)
    assert task.cancelled()
    assert time.monotonic() - started < 2.5


async def test_a_task_that_never_stops_is_left_behind_at_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[int] = []
    task = asyncio.get_running_loop().create_task(periodic(10**9, ran), name="stubborn")
    await asyncio.sleep(0.03)  # running: a task cancelled before its first step never gets to swallow
    started = time.monotonic()
    await cancel_and_wait([task], timeout=0.3)
    assert time.monotonic() - started < 1.5
    assert not task.done()
    assert "stubborn" in caplog.text
    task.get_coro().close()  # type: ignore[union-attr]


async def test_finished_and_plain_tasks_end_at_once() -> None:
    done = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    await done
    plain = asyncio.get_running_loop().create_task(asyncio.sleep(60))
    started = time.monotonic()
    await cancel_and_wait([done, plain])
    assert plain.cancelled() and time.monotonic() - started < 0.5
