"""Load shedding: a cap on the LLM requests one worker has in flight.

Each request in flight holds its upstream call, its buffers and its reservation; without a cap a burst
grows all of them with the burst. Past the cap a request is answered as soon as its body is in and it
carries a key (a slow or anonymous sender holds no place), before the key is checked or any budget work,
with the provider's own "overloaded" answer (OpenAI: 503, Anthropic: 529, both with ``Retry-After``),
which the official SDKs retry with backoff. Nothing was reserved, so nothing is charged or ledgered.
"""

from __future__ import annotations

from gateway.errors import Overloaded


class InFlightLimit:
    """A counter, not a semaphore: a request over the cap is refused, never queued (a queue would
    hold the same memory and add its wait to every answer)."""

    __slots__ = ("cap", "count", "peak", "shed")

    def __init__(self, cap: int) -> None:
        self.cap = cap  # 0: no cap
        self.count = 0
        self.peak = 0
        self.shed = 0

    def enter(self) -> None:
        """Count one more request in flight, or raise ``Overloaded`` (then it was not counted)."""
        if self.cap and self.count >= self.cap:
            self.shed += 1
            raise Overloaded(
                f"the gateway is at capacity ({self.cap} requests in flight); retry shortly",
                headers={"retry-after": "1", "x-should-retry": "true"},
            )
        self.count += 1
        self.peak = max(self.peak, self.count)

    def leave(self) -> None:
        self.count -= 1
