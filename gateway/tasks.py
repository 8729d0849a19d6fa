"""Background tasks that are never garbage-collected mid-flight and never fail silently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("gateway.tasks")


class TaskGroup:
    """Keeps a strong reference to fire-and-forget tasks and logs their failures.

    asyncio only keeps weak references to tasks, so an unreferenced task can vanish
    before it finishes; ledger and settle writes must never vanish.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float) -> None:
        """Wait for outstanding tasks (graceful shutdown), cancelling what is left at the deadline."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()


async def cancel_and_wait(tasks: list[asyncio.Task[Any]], timeout: float = 2.0) -> None:
    """Cancel long-lived tasks and wait until they end. A library may swallow a cancellation that
    lands inside one of its calls (redis-py 8 did, and shutdown then waited forever on a periodic
    job that simply went on): such a task is cancelled again, up to ``timeout``, then left behind
    with an error in the log rather than hanging the process."""
    pending = {task for task in tasks if not task.done()}
    deadline = asyncio.get_running_loop().time() + timeout
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            names = ", ".join(sorted(task.get_name() for task in pending))
            log.error("tasks still running after %.1fs of cancellation, left behind: %s", timeout, names)
            return
        _done, pending = await asyncio.wait(pending, timeout=min(left, 0.5))
