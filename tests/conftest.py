"""Fixtures shared by the test modules.

``loom`` (a scratch studio folder that runs jobs) comes from storyloom's own
pytest plugin, ``storyloom.testing``; ``fake_provider`` (real HTTP on
127.0.0.1 speaking the OpenAI, Anthropic and Gemini formats) from
``tests/fakeprovider.py``; ``postgres_database`` and ``pg_url`` (a fresh
database per session on a real PostgreSQL server, an empty store per test)
from ``tests/pgserver.py``.
"""

from fakeprovider import fake_provider  # noqa: F401
from pgserver import pg_admin, pg_url, postgres_database  # noqa: F401
