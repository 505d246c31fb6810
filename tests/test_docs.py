"""Docs are tested against the code: every schema key is documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DOC = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")


def keys(schema_name: str) -> list[str]:
    schema = json.loads((ROOT / "schemas" / schema_name).read_text(encoding="utf-8"))
    found = list(schema["properties"])
    for definition in ("config", "item", "retryConfig", "model"):
        found += list(schema.get("$defs", {}).get(definition, {}).get("properties", {}))
    return sorted(set(found))


@pytest.mark.parametrize("key", keys("job.schema.json") + keys("settings.schema.json"))
def test_every_schema_key_is_in_configuration_md(key):
    assert re.search(rf"`{re.escape(key)}`", CONFIG_DOC), f"docs/configuration.md does not mention `{key}`"


def test_default_limits_table_matches_the_job_types():
    from storyloom.plugins.jobtypes import JOB_TYPES

    for job_type in JOB_TYPES:
        row = f"| {job_type.name} | {job_type.max_parallel} | {job_type.timeout_per_item:g} s |"
        assert row in CONFIG_DOC, row


def test_every_error_kind_is_documented():
    from storyloom import ErrorKind

    for kind in ErrorKind:
        assert f"`{kind.value}`" in CONFIG_DOC, kind
