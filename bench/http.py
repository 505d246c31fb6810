"""The HTTP path at high request rates: storyloom's openai provider next to a bare client.

    .venv/bin/python bench/http.py                       # 3,000 requests at 8, 32, 64, 128 connections
    .venv/bin/python bench/http.py -n 5000 -c 64 -c 128  # other sizes
    .venv/bin/python bench/http.py --options             # also the candidate clients measured for issue 14

N zero-latency chat requests go to the fake provider (``tests/fakeprovider.py``,
real HTTP on 127.0.0.1), which runs in a child process here so that its
threads neither share the GIL with the client nor count in the client's CPU
time. Each client runs in its own ``trio.run`` with C tasks, each sending its
share of the N requests one after another, so C requests are in flight at
once:

* ``bare``: the reference, a raw h11 loop on trio streams, one connection per
  task, no pool at all: about the least a trio client can spend a request.
* ``storyloom``: the real ``openai`` provider (``OpenAIProvider.complete``,
  the call the kernel makes for an attempt) built from a model entry with
  ``max_parallel: C``, parsing the reply into a ``Response``.

``--options`` adds the clients issue 14 asked to compare, each a plain loop
of ``client.post`` and ``json.loads`` (what the provider does besides its own
bookkeeping): ``httpx`` (one ``AsyncClient``, one pool of C connections),
``httpx-shards`` (C/8 clients of 8 connections, each task keeps to one),
``httpx2`` and ``httpx2-shards`` (the fork, if it is installed).

Each client first runs an untimed round of 100 requests, so that imports
and first-call caches are not charged to the first row. Printed per client
and connection count: wall seconds, requests/s, the
client process's CPU ms per request (``time.process_time``), and for
storyloom its makespan over the bare client's in the same run. Targets
(issue 14): makespan at most 3x the bare client's; CPU per request within
+-25% from 8 to 128 connections.
"""

from __future__ import annotations

import sys

if __name__ == "http":
    # A script in bench/ has this folder first on sys.path, so its ``import
    # http`` (http.server, httpx's http.cookiejar) finds this file: hand the
    # name over to the standard library's package.
    import importlib.util
    import os
    import sysconfig

    _folder = os.path.join(sysconfig.get_paths()["stdlib"], "http")
    _spec = importlib.util.spec_from_file_location("http", os.path.join(_folder, "__init__.py"),
                                                   submodule_search_locations=[_folder])
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["http"] = _module
    _spec.loader.exec_module(_module)

if __name__ == "__main__":
    from httpbench import main

    main()
