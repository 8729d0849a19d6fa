"""Micro-benchmark of gateway.metering.tokens; prints a Markdown table (µs per call).

.venv/bin/python loadtests/bench_tokens.py
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from gateway.metering.tokens import TokenCounter, byte_upper_bound_chat, preload

MODEL = "gpt-4o"
SAMPLE = (
    "the budget gateway routes each request to a cheaper model when the policy allows it and records "
    "spend in the ledger so that virtual keys never exceed their limits while latency stays low "
    "def return self None import async await 42 3.14 {} [] () -> == != https://example.com/path?q=1"
)
WORDS = SAMPLE.split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def small_chat(rng: random.Random) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": _text(rng, 40)},
        {"role": "user", "content": _text(rng, 80)},
        {"role": "assistant", "content": _text(rng, 80)},
        {"role": "user", "content": _text(rng, 40)},
    ]


def conversation(rng: random.Random, turns: int = 20) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": _text(rng, 100)}]
    for _ in range(turns):
        messages.append({"role": "user", "content": _text(rng, 200)})
        messages.append({"role": "assistant", "content": _text(rng, 900)})
    return messages


def per_call_us(fn: Callable[[], object], iterations: int) -> float:
    fn()  # warm-up (and, for cached counters, fill the cache)
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - start) / iterations * 1e6


def growing_us(history: list[dict[str, Any]], cache_size: int, iterations: int) -> float:
    """Average per request over a whole conversation: request k resends messages 0..2k+1."""
    ends = range(2, len(history) + 1, 2)

    def one_conversation() -> None:
        counter = TokenCounter(cache_size=cache_size)
        for end in ends:
            counter.count_chat(history[:end], MODEL)

    return per_call_us(one_conversation, iterations) / len(ends)


def main() -> None:
    used = preload([MODEL], timeout=5.0)[MODEL]
    rng = random.Random(7)
    small, big = small_chat(rng), conversation(rng)
    exact = TokenCounter(cache_size=0)
    cached = TokenCounter()
    small_tokens, big_tokens = exact.count_chat(small, MODEL), exact.count_chat(big, MODEL)
    cases: list[tuple[str, int, Callable[[], object], int]] = [
        ("count_chat ~300 tok, no cache", small_tokens, lambda: exact.count_chat(small, MODEL), 2000),
        ("count_chat ~300 tok, warm cache", small_tokens, lambda: cached.count_chat(small, MODEL), 2000),
        ("byte bound ~300 tok", byte_upper_bound_chat(small), lambda: byte_upper_bound_chat(small), 2000),
        ("count_chat ~30k tok, no cache", big_tokens, lambda: exact.count_chat(big, MODEL), 30),
        ("count_chat ~30k tok, warm cache", big_tokens, lambda: cached.count_chat(big, MODEL), 300),
        ("byte bound ~30k tok", byte_upper_bound_chat(big), lambda: byte_upper_bound_chat(big), 300),
    ]
    rows = [(case, count, per_call_us(fn, n)) for case, count, fn, n in cases]
    rows.append(("20-turn growing history, no cache (avg/request)", big_tokens, growing_us(big, 0, 5)))
    rows.append(("20-turn growing history, cache (avg/request)", big_tokens, growing_us(big, 8192, 5)))
    print(f"encoding used for {MODEL}: {used}\n")
    print("| case | tokens (final prompt) | µs per call |")
    print("|---|---:|---:|")
    for case, count, micros in rows:
        print(f"| {case} | {count} | {micros:,.1f} |")


if __name__ == "__main__":
    main()
