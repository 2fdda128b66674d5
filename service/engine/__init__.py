"""Loads a pipeline and runs a generation; knows nothing of HTTP or Redis."""
