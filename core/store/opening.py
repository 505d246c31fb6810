"""The one place a store is opened: from a URL whose scheme names a backend.

Which store: ``--store URL`` (``Options.store``), else ``$STORYLOOM_STORE``,
else ``store:`` in ``storyloom.yaml``, else ``sqlite`` (the SQLite backend in
the state folder). See ``Config.store_url`` and docs/store.md.

A store URL is ``SCHEME:REST``, or a bare ``SCHEME`` for that backend's
default place. The scheme chooses a backend registered through
``loom_register_stores``; the backend parses the rest.
"""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import trio

from ..errors import UsageError
from .protocol import Store

if TYPE_CHECKING:
    from ..contracts import HookConfig
    from ..settings import Settings

#: Used when neither ``--store``, ``$STORYLOOM_STORE`` nor ``store:`` names one.
DEFAULT_STORE = "sqlite"
STORE_ENV = "STORYLOOM_STORE"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)(?::|$)")
#: A query key holding any of these (case-insensitively) is masked: ``api_key``, ``sslpassword``, ...
_SECRET_KEY_PARTS = ("pass", "secret", "token", "key", "auth")
MASK = "***"


def url_scheme(url: str) -> str:
    """The lower-cased scheme of a store URL; a UsageError if it has none."""
    match = _SCHEME.match(url.strip()) if isinstance(url, str) else None
    if not match:
        raise UsageError(f"store URL {mask_url(url)!r} is not a URL: expected SCHEME:..., such as "
                         "sqlite:///abs/folder or sqlite:relative/folder")
    return match.group(1).lower()


def mask_url(url: Any) -> str:
    """``url`` with any password (``user:pass@``, ``?password=``, ``?api_key=``, ...)
    replaced by ``***``: what messages may show. An unparseable URL shows only
    what follows its last ``@``, without its query."""
    text = str(url)
    try:
        parts = urlsplit(text)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:{MASK}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(_secret_key(key) for key, _ in pairs):
                query = urlencode([(k, MASK if _secret_key(k) else v) for k, v in pairs], safe="*")
        if (netloc, query) != (parts.netloc, parts.query):
            return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:  # unparseable (a bad port, say): show only what cannot hold a password
        return text.rsplit("@", 1)[-1].split("?", 1)[0]
    return text


def _secret_key(key: str) -> bool:
    return any(part in key.lower() for part in _SECRET_KEY_PARTS)


async def open_store_url(url: str, *, stores: Mapping[str, Any], state_dir: Path, settings: "Settings",
                         create: bool = True) -> Store:
    """Open the store ``url`` names with the backend registered for its scheme.

    ``stores`` is ``config.registries.stores``. An unknown scheme is a
    UsageError listing the registered ones. Close the store with ``aclose()``.
    """
    scheme = url_scheme(url)
    opener = stores.get(scheme)
    if opener is None:
        known = ", ".join(sorted(stores)) or "none"
        raise UsageError(f"unknown store scheme {scheme!r} in {mask_url(url)!r} (registered: {known})")
    return await opener(url.strip(), state_dir=Path(state_dir), settings=settings, create=create)


@asynccontextmanager
async def open_store(config: "HookConfig", *, create: bool = True) -> AsyncIterator[Store]:
    """The store ``config`` chooses (``config.store_url``), open, closed after.

    ``create=False`` opens only an existing store: where there is none it
    raises :class:`storyloom.store.StoreNotFound` (a UsageError) and creates
    nothing. The config need not be configured: only its registries,
    settings and options are read.
    """
    store = await open_store_url(config.store_url, stores=config.registries.stores, state_dir=config.state_dir,
                                 settings=config.settings, create=create)
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
