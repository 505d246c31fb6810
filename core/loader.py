"""Load job files and ``storyloom.yaml``: parse, validate, build.

Every problem is a :class:`~storyloom.errors.ConfigError` that says where
(``file:line:column``, then the path inside the document) and what was
expected, for the CLI to print as ``error: {err}``::

    jobs/x.yaml:12:5: at items[3].chapter_num: expected integer, got string 'five'

This module only gathers the public names; each stage is a module of its own:

1. :mod:`storyloom.document` reads YAML or JSON into plain values and
   remembers where each value sits (syntax, encoding, duplicate keys, limits);
2. :mod:`storyloom.validation` checks them against JSON Schemas, with human
   messages;
3. :mod:`storyloom.names` holds the names the plugins registered;
   :mod:`storyloom.settingsfile` builds :class:`~storyloom.settings.Settings`;
   :mod:`storyloom.jobfile` builds a :class:`~storyloom.job.Job`, with the
   job type's own item schema and expansion (:mod:`storyloom.jobtype`).
"""

from __future__ import annotations

from .document import Document, parse_document
from .durations import parse_duration
from .jobfile import load_job, load_job_document
from .names import KnownNames, peek_plugins
from .settingsfile import check_settings, find_settings, load_settings, settings_from_document
from .validation import describe, format_path, schema, unknown_name

__all__ = [
    "Document",
    "KnownNames",
    "check_settings",
    "describe",
    "find_settings",
    "format_path",
    "load_job",
    "load_job_document",
    "load_settings",
    "parse_document",
    "parse_duration",
    "peek_plugins",
    "schema",
    "settings_from_document",
    "unknown_name",
]
