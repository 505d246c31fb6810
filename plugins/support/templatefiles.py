"""The studio's prompt templates, found by name and language, rendered in the sandbox.

Bundled templates are ``plugins/templates/<name>.<language>.j2``, in English
(``en``) and Thai (``th``) for the five studio job types and the chapter
summary: ``character_generation``, ``plot_outlining``, ``chapter_writing``,
``chapter_summary``, ``qc_processing``, ``export``. A ``templates/`` folder
beside ``storyloom.yaml`` overrides any of them by file name (write
``templates/chapter_writing.th.j2`` to change the Thai chapter prompt); it may
also hold languages the bundle lacks (``chapter_writing.lo.j2``).

:func:`render_template` picks, in order, ``<name>.<tag>.j2`` for the full
tag (``en-gb``, lower-cased), ``<name>.<language>.j2`` for its primary
subtag (``en``), then ``<name>.en.j2``; at each step the studio's folder
wins over the bundle. A ``name`` ending in ``.j2`` is that file exactly (the
job types' older single-language templates keep working this way, and can be
overridden the same way).

Templates render in :class:`~storyloom.plugins.support.templates.PromptSandbox`
(sandboxed, bounded) with ``trim_blocks`` and ``lstrip_blocks``. Every name
in :data:`STUDIO_VARIABLES` is defined (None or empty unless the caller gives
it; None prints as nothing), so a template can say ``{% if previous_summary %}``;
a missing key is false in a test (``{% if beat.hook %}``) and an error when
printed (:class:`OptionalUndefined`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from storyloom.errors import ConfigError, Location

from .templates import PromptSandbox

__all__ = ["STUDIO_VARIABLES", "TEMPLATES_DIR", "render_template", "template_candidates", "templates_dir"]

#: The folder beside storyloom.yaml whose files override bundled templates by name.
TEMPLATES_DIR = "templates"

#: The variables every studio template may read, with what they are when the
#: caller gives nothing. What a job type passes (pipe10 refines the set):
STUDIO_VARIABLES: dict[str, Any] = {
    "project": {},             # the project file: title, genre, language, chapters, chapter_length, notes...
    "language": None,          # the language tag the template was chosen for
    "premise": None,
    "style": None,             # {tone, pov, tense, voice}
    "characters": [],          # sheets ({name, role, goals, traits, voice, relationships, arc}): of those present
    "outline": [],             # beats written by hand (plot_outlining keeps them)
    "beat": None,              # this chapter's {chapter, title, pov, characters, events, hook}
    "chapter_num": None,
    "chapter_length": None,    # the target: words, or characters for Thai
    "previous_summary": None,  # the previous chapter's summary
    "last_paragraphs": None,   # the previous chapter's last paragraphs
    "character_state": None,   # where the characters stand after the previous chapter
    "feedback": [],            # rewrite: QC findings and fixes; QC: the code checks' findings
    "chapter_text": None,      # QC and summary: the chapter read
    "rubric": [],              # QC: criteria, each {name, description}
    "notes": None,             # the project's notes
    "prompt": None,            # the item's own instructions
}

class OptionalUndefined(jinja2.StrictUndefined):
    """A missing name or key is false in a test (``{% if c.goals %}``: sheets
    and beats have optional fields) and an error anywhere else: printing it is
    still a mistake to see."""

    def __bool__(self) -> bool:
        return False


_BUNDLED = jinja2.PackageLoader("storyloom.plugins", "templates")
_ENVIRONMENTS: dict[str | None, PromptSandbox] = {}


def templates_dir(config: Any) -> Path | None:
    """``templates/`` beside the settings file of ``config`` (a
    :class:`storyloom.config.Config`, or anything with ``settings.path``), else
    in the working folder; None with no config (bundled templates only)."""
    if config is None:
        return None
    path = getattr(getattr(config, "settings", None), "path", None)
    # Absolute: the environments are cached by folder, and the working folder may change.
    return ((Path(path).parent if path else Path(".")) / TEMPLATES_DIR).absolute()


def _environment(folder: Path | None) -> PromptSandbox:
    key = str(folder) if folder is not None else None
    env = _ENVIRONMENTS.get(key)
    if env is None:
        loaders: list[jinja2.BaseLoader] = [_BUNDLED]
        if folder is not None:
            loaders.insert(0, jinja2.FileSystemLoader(str(folder)))
        env = _ENVIRONMENTS[key] = PromptSandbox(
            loader=jinja2.ChoiceLoader(loaders),
            trim_blocks=True, lstrip_blocks=True, undefined=OptionalUndefined,
            finalize=lambda value: "" if value is None else value,  # a variable not given prints as nothing
            auto_reload=folder is not None,  # the studio may edit its templates between runs of one worker
        )
    return env


def template_candidates(name: str, language: str | None) -> list[str]:
    """The file names :func:`render_template` tries, in order."""
    if name.endswith(".j2"):
        return [name]
    tag = (language or "en").strip().lower() or "en"
    primary = tag.split("-")[0]
    return list(dict.fromkeys([f"{name}.{tag}.j2", f"{name}.{primary}.j2", f"{name}.en.j2"]))


def render_template(name: str, language: str | None, variables: Mapping[str, Any], config: Any = None) -> str:
    """Render the studio template ``name`` (a job type's, e.g. ``chapter_writing``)
    for ``language`` with ``variables`` over :data:`STUDIO_VARIABLES`.

    :raises ConfigError: the studio's template has a syntax error (at its file:line), or no template has the name.
    :raises jinja2.TemplateError: rendering failed (a name no variable gives, a
        sandbox refusal): the caller decides what that is (a job type: INVALID_INPUT).
    """
    folder = templates_dir(config)
    env = _environment(folder)
    candidates = template_candidates(name, language)
    try:
        template = env.select_template(candidates)
    except jinja2.TemplatesNotFound:
        where = f" or {folder}" if folder is not None else ""
        raise ConfigError(Location(TEMPLATES_DIR), "", f"no template {' or '.join(candidates)} in the bundle"
                                                       f"{where}") from None
    except jinja2.TemplateSyntaxError as err:
        raise ConfigError(Location(err.filename or err.name or name, err.lineno, 1), "",
                          f"template syntax error: {err.message}") from None
    return template.render({**STUDIO_VARIABLES, "language": language, **variables})
