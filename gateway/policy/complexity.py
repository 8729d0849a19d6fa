"""A cheap prompt-complexity score in [0, 1] for ``auto`` routing between a strong and a weak model.

RouteLLM trains a router on preference data; we cannot ship a model, so this is a transparent
heuristic in the same spirit, computed over the tail of the last user turn with substring counts
(C-speed ``str.count``, no regular expressions, tens of microseconds):

    score = 0.35 * length      (chars / 2000, capped at 1: long asks tend to be harder)
          + 0.25 * reasoning   (words such as "prove", "analyze", "step by step", "why")
          + 0.20 * code        (code fences, definitions, braces and arrows)
          + 0.10 * math        (operators, LaTeX, equations)
          + 0.10 * multi_part  (several questions or numbered items)

Each feature is in [0, 1]. With the default threshold 0.5, short chit-chat and lookups go to the
weak tier; long, analytical, code or math requests go to the strong tier. Tune the threshold per
rule; ``gateway policy explain --prompt TEXT`` prints the score.
"""

from __future__ import annotations

_REASONING = (
    "prove",
    "proof",
    "derive",
    "analyze",
    "analyse",
    "explain why",
    "why ",
    "step by step",
    "step-by-step",
    "reason",
    "compare",
    "trade-off",
    "tradeoff",
    "design",
    "architect",
    "optimize",
    "optimise",
    "debug",
    "refactor",
    "evaluate",
    "critique",
    "plan ",
)
_CODE = ("```", "def ", "class ", "function", "=>", "};", "{\n", "return ", "import ")
_MATH = ("\\frac", "\\sum", "\\int", "$$", " = ", " + ", " * ", "^2", "equation", "integral")
_PARTS = ("?", "\n1.", "\n2.", "\n3.", "\n- ")
_SAMPLE = 4000


def _hits(text: str, needles: tuple[str, ...]) -> int:
    return sum(text.count(n) for n in needles)


def complexity_score(text: str) -> float:
    if not text:
        return 0.0
    sample = text[-_SAMPLE:].lower()  # the tail carries the ask; bounds the cost on huge prompts
    length = min(1.0, len(text) / 2000)
    reasoning = min(1.0, _hits(sample, _REASONING) / 3)
    code = min(1.0, _hits(sample, _CODE) / 4)
    math = min(1.0, _hits(sample, _MATH) / 4)
    parts = min(1.0, max(0, _hits(sample, _PARTS) - 1) / 3)
    return round(0.35 * length + 0.25 * reasoning + 0.20 * code + 0.10 * math + 0.10 * parts, 4)
