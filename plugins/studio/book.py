"""What a book holds, read from its project file and its stored artifacts.

The studio's artifact kinds and their content (each version kept, newest last):

==================  =======================  ==========================================
kind                key                      content
==================  =======================  ==========================================
``characters``      ``""``                   ``{"characters": [sheet, ...]}``
``outline``         ``""``                   ``{"arcs": [...], "beats": [beat, ...]}``
``chapter``         chapter number as text   ``{"title", "text", "rewrite"}``
``summary``         chapter number           the chapter's summary (text)
``character_state`` chapter number           ``{name: state}`` after that chapter
``qc``              chapter number           the QC report (:func:`qc_report` shape)
``approval``        ``outline`` or number    ``{"approved": true}``
==================  =======================  ==========================================

A sheet is ``{name, role, goals, traits: [..], voice, relationships: {name:
relation}, arc}`` and a beat ``{chapter, title, pov, characters: [names],
events, hook}``, as in ``schemas/project.schema.json``. What the project file
holds by hand (``characters``, ``outline``) wins over what was generated.

Everything here reads a :class:`storyloom.artifacts.ProjectContext`; nothing
writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: The QC verdicts; ``needs_review`` after ``max_rewrites`` failed rewrites.
PASSED, FAILED, NEEDS_REVIEW = "passed", "failed", "needs_review"
#: How many paragraphs of the previous chapter a chapter request carries.
LAST_PARAGRAPHS = 2


def project_of(context: Any) -> dict[str, Any]:
    """The project file's values, or ``{}`` when there is none."""
    project = getattr(context, "project", None)
    return dict(project) if isinstance(project, Mapping) else {}


def artifacts_of(context: Any) -> list[Any]:
    return list(getattr(context, "artifacts", None) or ())


def latest(context: Any, kind: str, key: str | None = None, *, item_id: str | None = None) -> Any:
    """The newest artifact of ``kind`` (and ``key``; made by ``item_id`` if given), or None."""
    found = None
    for artifact in artifacts_of(context):  # oldest first
        if artifact.kind == kind and (key is None or artifact.key == key) and (
                item_id is None or artifact.item_id == item_id):
            found = artifact
    return found


def versions(context: Any, kind: str, key: str) -> list[Any]:
    """Every stored version of ``(kind, key)``, oldest first."""
    return [a for a in artifacts_of(context) if a.kind == kind and a.key == key]


def sheet(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A character sheet in the one shape the prompts use (relationships as a mapping)."""
    relationships = raw.get("relationships") or {}
    if isinstance(relationships, list):  # the structured reply's list of {name, relation}
        relationships = {str(r.get("name", "")): str(r.get("relation", "")) for r in relationships
                         if isinstance(r, Mapping)}
    return {
        "name": str(raw.get("name", "")),
        "role": str(raw.get("role", "") or ""),
        "goals": str(raw.get("goals", "") or ""),
        "traits": [str(t) for t in raw.get("traits") or ()],
        "voice": str(raw.get("voice", "") or ""),
        "relationships": {str(k): str(v) for k, v in dict(relationships).items()},
        "arc": str(raw.get("arc", "") or ""),
    }


def characters(context: Any) -> list[dict[str, Any]]:
    """The book's character sheets: the project file's, else the newest generated ones."""
    written = project_of(context).get("characters")
    if written:
        return [sheet(c) for c in written]
    generated = latest(context, "characters")
    if generated is None or not isinstance(generated.content, Mapping):
        return []
    return [sheet(c) for c in generated.content.get("characters", ())]


def characters_written_by_hand(context: Any) -> bool:
    return bool(project_of(context).get("characters"))


def outline(context: Any) -> dict[str, Any]:
    """``{"arcs": [...], "beats": {n: beat}}``: the project file's outline, else the newest generated one."""
    written = project_of(context).get("outline")
    generated = latest(context, "outline")
    content = generated.content if generated is not None and isinstance(generated.content, Mapping) else {}
    beats_source = written if written else content.get("beats", ())
    beats = {}
    for beat in beats_source:
        number = int(beat["chapter"])
        beats[number] = {"chapter": number, "title": str(beat.get("title", "")), "pov": str(beat.get("pov", "") or ""),
                         "characters": [str(c) for c in beat.get("characters") or ()],
                         "events": str(beat.get("events", "") or ""), "hook": str(beat.get("hook", "") or "")}
    return {"arcs": list(content.get("arcs", ())), "beats": dict(sorted(beats.items()))}


def planned_chapters(context: Any) -> int:
    """The planned chapter count: the project's ``chapters``, else the outline's beats."""
    project = project_of(context)
    if project.get("chapters"):
        return int(project["chapters"])
    beats = outline(context)["beats"]
    return max(beats) if beats else 0


def present(context: Any, beat: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The sheets of the characters a beat names (all of them if it names none)."""
    sheets = characters(context)
    names = [n.casefold() for n in (beat or {}).get("characters", ())]
    if not names:
        return sheets
    return [s for s in sheets if s["name"].casefold() in names]


def chapter(context: Any, number: int, *, item_id: str | None = None) -> Any:
    """The newest ``chapter`` artifact of chapter ``number`` (the one ``item_id`` wrote, if given)."""
    return latest(context, "chapter", str(number), item_id=item_id)


def chapter_text(artifact: Any) -> str:
    if artifact is None:
        return ""
    content = artifact.content
    return str(content.get("text", "")) if isinstance(content, Mapping) else str(content)


def last_paragraphs(text: str, count: int = LAST_PARAGRAPHS) -> str:
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    return "\n\n".join(paragraphs[-count:])


def character_state(context: Any, before: int) -> dict[str, str]:
    """Each character's state after the newest chapter before ``before`` that has one."""
    best = None
    for artifact in artifacts_of(context):
        if artifact.kind != "character_state" or not artifact.key.isdigit() or int(artifact.key) >= before:
            continue
        if best is None or int(artifact.key) >= int(best.key):
            best = artifact  # later versions of the same chapter come later: the newest wins
    if best is None or not isinstance(best.content, Mapping):
        return {}
    return {str(k): str(v) for k, v in best.content.items()}


def approved(context: Any, key: str) -> bool:
    found = latest(context, "approval", key)
    return found is not None and isinstance(found.content, Mapping) and bool(found.content.get("approved"))


def chapter_row(context: Any, number: int) -> dict[str, Any]:
    """One chapter's state for ``storyloom book`` and for export."""
    written = chapter(context, number)
    report = latest(context, "qc", str(number))
    qc = report.content if report is not None and isinstance(report.content, Mapping) else {}
    approval = latest(context, "approval", str(number))
    ok_by_hand = (written is not None and approval is not None and isinstance(approval.content, Mapping)
                  and approval.content.get("chapter_item") in (None, written.item_id))
    # The newest QC report counts only for the newest version of the chapter.
    current = bool(qc) and written is not None and qc.get("chapter_item") == written.item_id
    verdict = qc.get("verdict") if current else None
    if written is None:
        state = "not written"
    elif ok_by_hand:
        state = "approved"
    elif verdict is None:
        state = "written"  # QC to come
    elif verdict == FAILED:
        state = "rewriting"
    else:
        state = verdict
    beat = outline(context)["beats"].get(number, {})
    title = ""
    if written is not None and isinstance(written.content, Mapping):
        title = str(written.content.get("title") or "")
    return {
        "chapter": number,
        "title": beat.get("title") or title or "",
        "state": state,
        "version": written.version if written is not None else 0,
        "versions": len(versions(context, "chapter", str(number))),
        "qc_verdict": verdict,
        "qc_score": qc.get("score") if current else None,
        "findings": len(qc.get("findings", ())) if current else 0,
        "ready": state in (PASSED, "approved"),
    }


def chapters(context: Any) -> list[dict[str, Any]]:
    return [chapter_row(context, n) for n in range(1, planned_chapters(context) + 1)]


def blocking(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """What keeps an export from running: ``"3 (needs_review)"`` per chapter not passed or approved."""
    return [f"{row['chapter']} ({row['state']})" for row in rows if not row["ready"]]


def book_view(context: Any, project_id: str, opened_gates: Iterable[str] = ()) -> dict[str, Any]:
    """The whole book as ``storyloom book --json`` prints it."""
    project = project_of(context)
    return {
        "project_id": project_id,
        "project_file": bool(project),
        "title": project.get("title"),
        "language": project.get("language"),
        "genre": project.get("genre"),
        "premise": project.get("premise"),
        "style": project.get("style") or {},
        "characters": characters(context),
        "characters_source": "project file" if characters_written_by_hand(context)
        else ("generated" if latest(context, "characters") else None),
        "outline": [beat for _, beat in outline(context)["beats"].items()],
        "outline_source": "project file" if project.get("outline")
        else ("generated" if latest(context, "outline") else None),
        "outline_review": "outline" in (project.get("review") or ()),
        "outline_approved": f"{project_id}:outline" in set(opened_gates),
        "chapters": chapters(context),
        "artifacts": len(artifacts_of(context)),
    }


def view_text(view: Mapping[str, Any]) -> list[str]:
    """The lines ``storyloom book`` prints (text from files and models, shown as text)."""
    title = view.get("title") or view["project_id"]
    lines = [f"{title} ({view['project_id']}, {view.get('language') or '?'})"
             + (f" - {view['genre']}" if view.get("genre") else "")]
    if view.get("premise"):
        lines.append(f"  premise: {view['premise']}")
    style = view.get("style") or {}
    if style:
        lines.append("  style: " + "; ".join(f"{k} {v}" for k, v in style.items()))
    sheets = view.get("characters") or []
    lines.append(f"  characters ({view.get('characters_source') or 'none yet'}): "
                 + (", ".join(f"{c['name']} ({c['role']})" if c.get("role") else c["name"] for c in sheets) or "-"))
    gate = ""
    if view.get("outline_review"):
        gate = ", approved" if view.get("outline_approved") else ", waiting for `storyloom approve " \
               f"{view['project_id']} outline`"
    lines.append(f"  outline ({view.get('outline_source') or 'none yet'}{gate}):")
    for beat in view.get("outline") or ():
        lines.append(f"    {beat['chapter']:>3}. {beat['title']}")
    lines.append("  chapters:")
    lines.append(f"    {'ch':>3}  {'state':<12} {'version':>7}  {'QC':<12} {'score':>5}  title")
    for row in view.get("chapters") or ():
        score = f"{row['qc_score']:g}" if row.get("qc_score") is not None else "-"
        lines.append(f"    {row['chapter']:>3}  {row['state']:<12} {row['version']:>7}  "
                     f"{row['qc_verdict'] or '-':<12} {score:>5}  {row['title']}")
    waiting = [row["chapter"] for row in view.get("chapters") or () if row["state"] == NEEDS_REVIEW]
    for number in waiting:
        lines.append(f"  chapter {number} needs review: `storyloom approve {view['project_id']} chapter {number}`")
    return lines
