"""Typed configuration: YAML with line tracking, ${ENV} interpolation, validation at load time."""
