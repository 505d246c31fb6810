"""A distribution "installed" for one test: a module and its dist-info on a
folder prepended to ``sys.path``, declaring an entry point in group
``storyloom``, as ``pip install`` of a plugin package would leave them."""

from __future__ import annotations

from pathlib import Path

import pytest


def install_plugin(site: Path, monkeypatch: pytest.MonkeyPatch, module: str, source: str, entry: str) -> None:
    """Write ``module`` (``source``) and its dist-info to ``site`` and put
    ``site`` on ``sys.path`` for the test (the fixture forgets the imported
    module after it: ``sys.modules.pop(module, None)``)."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    name = module.replace("_", "-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[storyloom]\n{entry} = {module}\n")
    monkeypatch.syspath_prepend(str(site))
