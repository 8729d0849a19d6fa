"""A cheap prompt-complexity score in [0, 1] for ``auto`` routing between a strong and a weak model.

RouteLLM trains a router on preference data; we cannot ship a model, so this is a transparent
heuristic in the same spirit, computed in microseconds over the last user turn:

    score = 0.35 * length      (chars / 2000, capped at 1: long asks tend to be harder)
          + 0.25 * reasoning   (words such as "prove", "analyze", "step by step", "why")
          + 0.20 * code        (code fences, or code-like punctuation density)
          + 0.10 * math        (digits and operators, LaTeX)
          + 0.10 * multi_part  (several questions or numbered items)

Each feature is in [0, 1]. With the default threshold 0.5, short chit-chat and lookups go to the
weak tier; long, analytical, code or math requests go to the strong tier. Tune the threshold per
rule; ``gateway policy explain`` prints the score.
"""

from __future__ import annotations

import re

_REASONING = re.compile(
    r"\b(prove|proof|derive|analy[sz]e|explain why|why|step[- ]by[- ]step|reason|compare|trade-?offs?|"
    r"design|architect|optimi[sz]e|debug|refactor|evaluate|critique|plan)\b",
    re.IGNORECASE,
)
_CODE = re.compile(r"```|\bdef |\bclass |\bfunction\b|=>|;\s*$|\{\s*$", re.MULTILINE)
_MATH = re.compile(r"\\frac|\\sum|\\int|\$[^$]+\$|\d+\s*[-+*/^=]\s*\d+")
_PARTS = re.compile(r"\?|^\s*\d+[.)]\s", re.MULTILINE)


def complexity_score(text: str) -> float:
    if not text:
        return 0.0
    sample = text[-8000:]  # the tail carries the ask; bounds the cost on huge prompts
    length = min(1.0, len(text) / 2000)
    reasoning = min(1.0, len(_REASONING.findall(sample)) / 3)
    code = min(1.0, len(_CODE.findall(sample)) / 4)
    math = min(1.0, len(_MATH.findall(sample)) / 4)
    parts = min(1.0, max(0, len(_PARTS.findall(sample)) - 1) / 3)
    return round(0.35 * length + 0.25 * reasoning + 0.20 * code + 0.10 * math + 0.10 * parts, 4)
