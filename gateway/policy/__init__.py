"""Routing policy: rule compilation, evaluation, complexity scoring, schema export."""
