"""Bundled store backends: one module per backend, each registering its URL
scheme through ``loom_register_stores``."""
