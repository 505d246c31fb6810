"""Bundled plugins: the behaviour of storyloom, one module per plugin."""
