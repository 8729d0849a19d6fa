"""LLM inference cost-optimizing gateway."""

__version__ = "0.1.0"
