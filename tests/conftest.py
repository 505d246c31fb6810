"""Fixtures shared by the test modules.

``loom`` (a scratch studio folder that runs jobs) comes from storyloom's own
pytest plugin, ``storyloom.testing``; ``fake_provider`` (real HTTP on
127.0.0.1 speaking the OpenAI, Anthropic and Gemini formats) from
``tests/fakeprovider.py``.
"""

from fakeprovider import fake_provider  # noqa: F401
