"""Upstream provider adapters and the pure wire-format translators they use."""
