"""Cost per request of evaluating the routing policy (issue: 50 compiled rules).

    python loadtests/bench_rules.py            # prints a Markdown table (µs per decision)

Uses loadtests/configs/full.yaml: 50 rules, none of which match the load's requests, so every
decision walks all 50 (the worst case), plus a matching request and an `auto` request.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

from gateway.config.load import load_config
from gateway.policy.engine import Facts

HERE = Path(__file__).resolve().parent


def bench(label: str, make_facts, decide, n: int = 50_000) -> tuple[str, float, str]:  # type: ignore[no-untyped-def]
    facts = make_facts()
    decision = decide(facts)
    start = time.perf_counter()
    for _ in range(n):
        decide(make_facts())
    per_call = (time.perf_counter() - start) / n * 1e6
    return label, per_call, decision.rule


def main() -> None:
    os.environ.setdefault("LOADTEST_UPSTREAM_URL", "http://127.0.0.1:9")
    cfg = load_config(HERE / "configs" / "full.yaml")
    rules = cfg.rules
    now = datetime.now(UTC)
    text = (
        "Summarize the following text in one sentence: "
        + "The quick brown fox jumps over the lazy dog. " * 20
    )

    def facts(model: str, team: str = "demo", tags: dict[str, str] | None = None) -> Facts:
        return Facts(
            team=team,
            model=model,
            tags=tags or {},
            max_tokens=256,
            now=now,
            prompt_tokens_fn=lambda: 300,
            prompt_text_fn=lambda: text,
        )

    rows = [
        bench("no rule matches (all 50 evaluated)", lambda: facts("gpt-4o"), rules.decide),
        bench("tag rule matches (rule 25)", lambda: facts("gpt-4o", tags={"feature": "f0"}), rules.decide),
        bench("auto routing (rule 50, complexity score)", lambda: facts("auto"), rules.decide),
        bench(
            "team-0 request: its budget-tier rule checked, not matched",
            lambda: facts("gpt-4o", team="team-0"),
            rules.decide,
        ),
    ]
    print(
        f"{len(rules.rules)} compiled rules, {time.strftime('%Y-%m-%d')}, one core, Python "
        f"{os.sys.version.split()[0]}\n"
    )  # type: ignore[attr-defined]
    print("| case | µs per decision | rule that fired |")
    print("|---|---:|---|")
    for label, micros, rule in rows:
        print(f"| {label} | {micros:.2f} | {rule} |")


if __name__ == "__main__":
    main()
