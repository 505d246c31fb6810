"""Bundled model providers over HTTP (httpx): one module per API."""
