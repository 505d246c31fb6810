"""Hypothesis strategies for a studio's own tests of its configuration.

Each strategy draws plain documents (dicts and lists, as a YAML or JSON file
holds them) that storyloom's own loader accepts; :func:`to_yaml` and
:func:`to_jsonl` write them as files. :func:`invalid_job_documents` draws
job files (as text) that the loader must refuse with a
:class:`storyloom.ConfigError` saying where and what::

    from hypothesis import given
    from storyloom.testing.strategies import job_documents, to_yaml

    @given(job=job_documents(job_type="chapter_writing", models=["house-a", "house-b"]))
    def test_our_settings_take_any_chapter_job(loom_factory, job):
        with loom_factory() as loom:
            loom.write("storyloom.yaml", OUR_SETTINGS)
            loom.validate(to_yaml(job))

``models`` are names of models the settings define; the bundled job types,
routing strategies, retry policies, progress sinks and report renderers are
the defaults for the other names. docs/testing.md has a whole example.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Sequence

import yaml
from hypothesis import strategies as st

from ..errors import ErrorKind

__all__ = ["STORY_JOB_TYPES", "batch_lines", "durations", "identifiers", "invalid_job_documents",
           "job_documents", "project_documents", "prose", "settings_documents", "to_jsonl", "to_yaml"]

#: The studio's job types (their items: schemas/story-item.schema.json); ``prompts`` is the other bundled one.
STORY_JOB_TYPES = ("character_generation", "plot_outlining", "chapter_writing", "qc_processing", "export")
JOB_TYPES = (*STORY_JOB_TYPES, "prompts")
PRIORITIES = ("critical", "high", "normal", "low")
#: Routing strategies whose options need nothing but the job's models.
STRATEGIES = ("round_robin", "least_loaded", "cheapest", "genre")
SINKS = ("terminal", "plain", "eventlog", "webhook")
RENDERERS = ("md", "json", "html")
ERROR_KINDS = tuple(kind.value for kind in ErrorKind)
#: The seed's six kinds (the first of ErrorKind), which the simulated provider can inject.
SIMULATED_ERRORS = ERROR_KINDS[:6]
GENRES = ("romantic-comedy", "fantasy", "mystery", "นิยายรัก", "สยองขวัญ")
LANGUAGES = ("th", "en", "en-GB")

THAI = ("ฝนตกที่เชียงใหม่", "เรือนไม้หอม", "นักเดินทางยามค่ำคืน", "หญิงสาวผู้เก็บดวงดาว",
        "เมื่อสายลมพัดผ่านทุ่งนา เด็กชายคนหนึ่งก็ได้พบกับความลับของหมู่บ้าน", "บทที่หนึ่ง: การเริ่มต้น")
ENGLISH = ("The Lantern Keeper", "Salt and Signal", "A Quiet Harbour",
           "A lighthouse keeper finds letters that were never sent.", "Chapter one, in which nothing goes to plan.")


@functools.cache
def identifiers(max_size: int = 40) -> st.SearchStrategy[str]:
    """Safe names (``$defs/identifier``): job, item and project ids."""
    return st.from_regex(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{max_size - 1}}}", fullmatch=True)


@functools.cache
def prose(max_size: int = 60) -> st.SearchStrategy[str]:
    """Thai and English titles and paragraphs, or any printable text without
    braces (so that no field reads as a Jinja2 template)."""
    drawn = st.text(st.characters(categories=("L", "M", "N", "P", "S", "Zs"), exclude_characters="{}%#"),
                    min_size=1, max_size=max_size)
    return st.one_of(st.sampled_from(THAI), st.sampled_from(ENGLISH), drawn)


@functools.cache
def durations(*, positive: bool = False, max_seconds: int = 3600) -> st.SearchStrategy[Any]:
    """A number of seconds or a string with units (``120s``, ``250ms``, ``5m``, ``1h30m``)."""
    low = 1 if positive else 0
    return st.one_of(
        st.integers(low, max_seconds),
        st.integers(low, max_seconds).map(lambda s: f"{s}s"),
        st.integers(max(low, 1), 1000).map(lambda ms: f"{ms}ms"),
        st.integers(max(low, 1), max(1, max_seconds // 60)).map(lambda m: f"{m}m"),
        st.tuples(st.integers(1, 3), st.integers(1, 59)).map(lambda hm: f"{hm[0]}h{hm[1]}m"),
    )


@functools.cache
def _moments() -> st.SearchStrategy[str]:
    """ISO 8601 date-times (with an offset or Z) and dates."""
    offsets = st.sampled_from([timezone.utc, timezone(timedelta(hours=7)), timezone(timedelta(hours=-5))])
    times = st.builds(lambda when, tz: when.replace(tzinfo=tz, microsecond=0).isoformat(),
                      st.datetimes(datetime(2020, 1, 1), datetime(2035, 12, 31)), offsets)
    return st.one_of(times, times.map(lambda text: text.replace("+00:00", "Z")),
                     st.dates().filter(lambda d: 2020 <= d.year <= 2035).map(lambda d: d.isoformat()))


def _subset(names: Sequence[str], min_size: int = 1) -> st.SearchStrategy[list[str]]:
    return _subset_of(tuple(names), min_size)


@functools.cache  # strategies are built once: building them is much of a draw's time
def _subset_of(names: tuple[str, ...], min_size: int) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(names), min_size=min_size, max_size=len(names), unique=True)


@functools.cache
def _vars() -> st.SearchStrategy[dict[str, Any]]:
    keys = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True).filter(lambda k: k not in ("system", "vars"))
    values = st.one_of(prose(30), st.integers(-1000, 1000), st.booleans())
    return st.dictionaries(keys, values, max_size=3)


# -- settings -------------------------------------------------------------------


@st.composite
def _model_entry(draw: st.DrawFn, provider: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"provider": provider}
    if provider == "simulated":
        entry["latency_ms"] = draw(st.integers(0, 20))
        entry["output_tokens"] = draw(st.integers(1, 400))
        entry["seed"] = draw(st.integers(0, 1000))
        if draw(st.booleans()):
            entry["errors"] = draw(st.dictionaries(st.sampled_from(SIMULATED_ERRORS),
                                                   st.sampled_from([0.0, 0.01, 0.05, 0.2]), max_size=3))
    else:
        entry["api_key_env"] = draw(st.from_regex(r"[A-Z][A-Z0-9_]{2,20}", fullmatch=True))
        if draw(st.booleans()):
            entry["base_url"] = draw(st.sampled_from(["http://127.0.0.1:8080/v1", "https://llm.studio.example/v1"]))
    optional = {
        "model": st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
        "rpm": st.integers(1, 10_000),
        "tpm": st.integers(1, 10_000_000),
        "max_parallel": st.integers(1, 64),
        "max_spend_usd": st.floats(0.01, 10_000, allow_nan=False),
        "price": st.fixed_dictionaries({}, optional={"input": st.floats(0, 100, allow_nan=False),
                                                     "output": st.floats(0, 100, allow_nan=False)}),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            entry[key] = draw(strategy)
    return entry


@st.composite
def settings_documents(draw: st.DrawFn, *, model_names: Sequence[str] | None = None,
                       providers: Sequence[str] = ("simulated",)) -> dict[str, Any]:
    """``storyloom.yaml`` documents: models (``model_names``, else 1-4 drawn
    names) with their providers, ids, rpm/tpm, parallel and spend limits and
    prices; default_models, batch_limits, retry_config, routing,
    failure_policy, progress, reports and the durations. Left out: store,
    webhooks, plugins and input_roots, which point outside the test."""
    names = list(model_names) if model_names is not None else draw(
        st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True), min_size=1, max_size=4, unique=True))
    models = {name: draw(_model_entry(draw(st.sampled_from(list(providers))))) for name in names}
    doc: dict[str, Any] = {"models": models, "default_models": draw(_subset(names))}
    retryable = draw(st.lists(st.sampled_from(ERROR_KINDS), unique=True, max_size=4))
    retry = st.fixed_dictionaries({}, optional={
        "max_retries": st.integers(0, 10),
        "retry_delay": _retry_delay(),
        "retryable_errors": st.just(retryable),
        "non_retryable_errors": _subset([k for k in ERROR_KINDS if k not in retryable], min_size=0),
        "policy": st.just("exponential"),
        "invalid_output_retries": st.integers(0, 5),
        "rate_limit_timeout": durations(positive=True),
    })
    optional = {
        "batch_limits": st.dictionaries(st.sampled_from(JOB_TYPES), st.fixed_dictionaries({}, optional={
            "max_parallel": st.integers(1, 50), "timeout_per_item": durations(positive=True)}), max_size=3),
        "retry_config": retry,
        "routing": st.sampled_from(["round_robin", "least_loaded", "cheapest"]).map(lambda s: {"strategy": s}),
        "failure_policy": _failure_policy(),
        "progress": _subset(SINKS, min_size=0),
        "reports": _subset(RENDERERS, min_size=0),
        "grace_period": durations(max_seconds=60),
        "aging": durations(positive=True),
        "queue": st.fixed_dictionaries({"lease": st.integers(1, 300).map(lambda s: f"{s}s")}),
        "synchronous": st.sampled_from(["NORMAL", "FULL"]),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            doc[key] = draw(strategy)
    return doc


@functools.cache
def _seconds(seconds: int) -> st.SearchStrategy[Any]:
    """``seconds`` written any way a duration may be."""
    ways: list[Any] = [seconds, f"{seconds}s", f"{seconds * 1000}ms"]
    if seconds and seconds % 60 == 0:
        ways.append(f"{seconds // 60}m")
    return st.sampled_from(ways)


@st.composite
def _retry_delay(draw: st.DrawFn) -> dict[str, Any]:
    """initial never above max (the defaults: 10s and 120s)."""
    initial = draw(st.integers(0, 60))
    delay = {"initial": draw(_seconds(initial)), "max": draw(_seconds(draw(st.integers(initial, 600))))}
    if draw(st.booleans()):
        delay["multiplier"] = draw(st.floats(1, 4, allow_nan=False))
    return delay


@st.composite
def _failure_policy(draw: st.DrawFn) -> dict[str, Any]:
    """notify_from never above pause_above."""
    low, high = sorted(draw(st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=2)))
    policy: dict[str, Any] = {"notify_from": low, "pause_above": high}
    if draw(st.booleans()):
        policy["min_items"] = draw(st.integers(1, 100))
    return policy


# -- jobs -----------------------------------------------------------------------


def _routing(models: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.sampled_from(STRATEGIES).flatmap(lambda name: {
        "round_robin": st.just({"strategy": "round_robin"}),
        "least_loaded": st.just({"strategy": "least_loaded"}),
        "cheapest": st.fixed_dictionaries({"strategy": st.just("cheapest")},
                                          optional={"output_tokens": st.integers(1, 8000)}),
        "genre": st.fixed_dictionaries({"strategy": st.just("genre"),
                                        "table": st.dictionaries(st.sampled_from(GENRES), st.sampled_from(models),
                                                                 min_size=1, max_size=3)},
                                       optional={"default": st.sampled_from(models)}),
    }[name])


@functools.cache
def _config() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={
        "max_parallel": st.integers(1, 50),
        "retry_on_failure": st.booleans(),
        "max_retries": st.integers(0, 10),
        "model_rotation": st.booleans(),
        "timeout_per_item": durations(positive=True),
        "max_tokens": st.integers(1, 100_000),
        "stream": st.booleans(),
    })


@functools.cache
def _item_keys(prompts: bool) -> dict[str, st.SearchStrategy[Any]]:
    """The optional keys of an item entry that do not depend on the job."""
    keys = {
        "status": st.sampled_from(["pending", "skipped", "completed"]),
        "priority": st.sampled_from(PRIORITIES),
        "deadline": _moments(),
        "language": st.sampled_from(LANGUAGES),
        "vars": _vars(),
    }
    if not prompts:
        keys.update(genre=st.sampled_from(GENRES), title=prose(), prompt=prose())
    return keys


@st.composite
def _item(draw: st.DrawFn, item_id: str, job_type: str, models: list[str], projects: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"item_id": item_id}
    generic = {"project_id": st.sampled_from(projects), "model": st.sampled_from(models),
               **_item_keys(job_type == "prompts")}
    if job_type == "prompts":
        if draw(st.booleans()):
            entry["prompt"] = draw(prose())
        else:
            entry["messages"] = draw(_messages())
    else:
        chapters = draw(st.sampled_from(["none", "chapter_num", "chapters"]))
        if chapters == "chapter_num":
            entry["chapter_num"] = draw(st.integers(0, 200))
        elif chapters == "chapters":
            first = draw(st.integers(1, 30))
            entry["chapters"] = draw(st.one_of(st.just(first), st.integers(first, first + 5).map(
                lambda last: f"{first}-{last}")))
    for key, strategy in generic.items():
        if draw(st.integers(0, 3)) == 0:
            entry[key] = draw(strategy)
    return entry


def _item_ids(entry: dict[str, Any]) -> list[str]:
    """The ids a story job type expands an entry into (``{item_id}-ch{n}``)."""
    chapters = entry.get("chapters")
    if chapters is None:
        return [entry["item_id"]]
    first, _, last = str(chapters).partition("-")
    return [f"{entry['item_id']}-ch{n}" for n in range(int(first), int(last or first) + 1)]


@st.composite
def job_documents(draw: st.DrawFn, *, job_type: str | None = None, models: Sequence[str] = ("simulated",),
                  max_items: int = 6, budgets: st.SearchStrategy[float] | None = None,
                  input: str | None = None) -> dict[str, Any]:
    """Job files that load against settings defining ``models``: ``job_type``
    (default: any bundled one) with 1..``max_items`` entries (story job types:
    ``chapter_num`` or ``chapters`` ranges, genre, title; prompts: a prompt or
    messages), each maybe with its own project, status, priority, deadline,
    pinned model, language and vars; and the job's priority, deadline,
    created_at, language, vars, description, models, routing (round_robin,
    least_loaded, cheapest, genre), budget_usd, config (max_parallel,
    max_retries, timeout_per_item, ...) and, for the story job types,
    ``then:`` stages of the other story job types.

    With ``input`` (a file name), a ``prompts`` job that reads its requests
    from that Batch API file instead of ``items:``, with ``input_model:``
    match or job; write the file with :func:`batch_lines` and
    :func:`to_jsonl` (for ``match``, naming the provider model ids of the
    job's ``models``).

    ``budgets`` draws ``budget_usd`` (default: $100 to $10,000). A job loads
    only if its budget covers one attempt's worst case at the dearest of its
    models, so with dear models or small budgets pass your own."""
    if input is not None and job_type not in (None, "prompts"):
        raise ValueError(f"input: is read by the prompts job type, not {job_type!r}")
    kind = "prompts" if input is not None else job_type or draw(st.sampled_from(JOB_TYPES))
    names = draw(_subset(list(models)))
    doc: dict[str, Any] = {"job_id": draw(identifiers()), "job_type": kind, "models": names}
    if input is not None:
        doc["input"] = input
        if draw(st.booleans()):
            doc["input_model"] = draw(st.sampled_from(["match", "job"]))
    else:
        projects = draw(st.lists(identifiers(24), min_size=1, max_size=3, unique=True))
        ids = draw(st.lists(identifiers(24), min_size=1, max_size=max_items, unique=True))
        items = [draw(_item(item_id, kind, names, projects)) for item_id in ids]
        expanded = [item_id for entry in items for item_id in _item_ids(entry)]
        if len(set(expanded)) < len(expanded):  # "a-ch1" written as an id and as chapter 1 of "a"
            items = [{key: value for key, value in entry.items() if key != "chapters"} for entry in items]
        doc["items"] = items
    optional = {
        "priority": st.sampled_from(PRIORITIES),
        "deadline": _moments(),
        "created_at": _moments(),
        "language": st.sampled_from(LANGUAGES),
        "vars": _vars(),
        "description": prose(),
        "routing": _routing(names),
        "budget_usd": budgets if budgets is not None else st.floats(100, 10_000, allow_nan=False),
        "config": _config(),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            doc[key] = draw(strategy)
    if "config" not in doc or "timeout_per_item" not in doc["config"]:
        if draw(st.integers(0, 4)) == 0:
            doc["timeout_per_item"] = draw(durations(positive=True))
    if kind in STORY_JOB_TYPES and draw(st.booleans()):
        later = draw(st.lists(st.sampled_from([t for t in STORY_JOB_TYPES if t != kind]), unique=True,
                              min_size=1, max_size=3))
        own_routing = st.sampled_from([{"strategy": "round_robin"}, {"strategy": "least_loaded"}])
        doc["then"] = [draw(st.fixed_dictionaries({"job_type": st.just(stage)}, optional={
            "models": _subset(names), "routing": own_routing, "config": _config()})) for stage in later]
        if doc.get("routing", {}).get("strategy") == "genre":
            for stage in doc["then"]:  # the job's genre table may name a model a stage of its own models lacks
                if "models" in stage and "routing" not in stage:
                    stage["routing"] = draw(own_routing)
    return doc


# -- projects -------------------------------------------------------------------


@st.composite
def project_documents(draw: st.DrawFn, *, project_id: str | None = None,
                      language: str | None = None) -> dict[str, Any]:
    """Book projects (``projects/<project_id>.yaml``, valid against
    schemas/project.schema.json and the loader's own checks): Thai or English
    title and premise, style, chapters and their length, characters with
    unique names, an outline of unique chapters within the planned ones."""
    lang = language or draw(st.sampled_from(LANGUAGES))
    words = THAI if lang == "th" else ENGLISH
    text = st.one_of(st.sampled_from(words), prose())
    doc: dict[str, Any] = {"project_id": project_id or draw(identifiers()), "title": draw(text), "language": lang}
    chapters = draw(st.integers(1, 40))
    names = draw(st.lists(text, max_size=4, unique=True))
    optional = {
        "genre": st.sampled_from(GENRES),
        "premise": text,
        "style": st.fixed_dictionaries({}, optional={key: text for key in ("tone", "pov", "tense", "voice")}),
        "chapters": st.just(chapters),
        "chapter_length": st.integers(1, 20_000),
        "characters": st.just([draw(st.fixed_dictionaries({"name": st.just(name)}, optional={
            "role": text, "goals": text, "traits": st.lists(text, max_size=3), "voice": text, "arc": text,
            "relationships": st.dictionaries(st.sampled_from(names), text, max_size=2)})) for name in names]),
        "outline": st.lists(st.integers(1, chapters), unique=True, max_size=5).flatmap(lambda numbers: st.tuples(
            *[st.fixed_dictionaries({"chapter": st.just(n), "title": text}, optional={
                "pov": text, "characters": st.lists(text, max_size=2), "events": text, "hook": text})
              for n in sorted(numbers)]).map(list)),
        "notes": text,
        "review": st.just(["outline"]),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            doc[key] = draw(strategy)
    return doc


# -- Batch API input files ----------------------------------------------------------


@functools.cache
def _custom_ids() -> st.SearchStrategy[str]:
    """Any non-empty string a Batch API file may hold as a custom_id: spaces,
    ``/``, any script, quotes, control characters (JSON escapes them)."""
    anything = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)
    return st.one_of(identifiers(), anything, st.sampled_from(
        ["request 1", "batch/2025/ch-01", "บทที่ 1", "章节 7", "a\"quoted\" id", "tab\there", " leading space"]))


@functools.cache
def _messages() -> st.SearchStrategy[list[dict[str, Any]]]:
    roles = st.sampled_from(["system", "developer", "user", "assistant"])
    content = st.one_of(prose(), st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": prose()}),
                                          min_size=1, max_size=2))
    return st.lists(st.fixed_dictionaries({"role": roles, "content": content}), min_size=1, max_size=3)


@functools.cache
def _body_options() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={
        "max_tokens": st.integers(1, 4096), "temperature": st.floats(0, 2, allow_nan=False),
        "top_p": st.floats(0, 1, allow_nan=False), "seed": st.integers(0, 2**31 - 1)})


@st.composite
def batch_lines(draw: st.DrawFn, *, model_ids: Sequence[str] = ("gpt-4o-mini",), min_size: int = 1,
                max_size: int = 8) -> list[dict[str, Any]]:
    """The requests of one OpenAI Batch API input file (``{custom_id, method:
    POST, url: /v1/chat/completions, body}`` per line, custom_ids unique), as
    a ``prompts`` job reads with ``input:``. Each body names one of
    ``model_ids`` (provider model ids: the ``model:`` of a settings entry),
    with messages, and maybe a token cap and sampling options."""
    custom_ids = draw(st.lists(_custom_ids(), min_size=min_size, max_size=max_size, unique=True))
    lines = []
    for custom_id in custom_ids:
        body: dict[str, Any] = {"model": draw(st.sampled_from(tuple(model_ids))), "messages": draw(_messages())}
        body.update(draw(_body_options()))
        lines.append({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})
    return lines


# -- documents that must fail ---------------------------------------------------------


def _broken(doc: dict[str, Any], models: Sequence[str]) -> st.SearchStrategy[str]:
    """One mistake in an otherwise valid job document, as YAML text."""
    item = doc["items"][0]

    def change(**updates: Any) -> str:
        changed = {**doc, **updates}
        return to_yaml({key: value for key, value in changed.items() if value is not _GONE})

    def item_change(**updates: Any) -> str:
        return change(items=[{**item, **updates}, *doc["items"][1:]])

    unknown_model = "no-such-model"
    while unknown_model in models:
        unknown_model += "-x"
    in_job: list[tuple[str, Any]] = [
        ("job_id", _GONE), ("job_type", _GONE), ("items", _GONE), ("job_type", "no_such_job_type"), ("items", []),
        ("input", "requests.jsonl"), ("colour", "blue"), ("priority", "urgent"), ("deadline", "next tuesday"),
        ("budget_usd", 0), ("budget_usd", -5), ("models", [unknown_model]), ("routing", {}),
        ("routing", {"strategy": "no_such_strategy"}), ("config", {"max_parallel": 0}),
        ("config", {"max_retries": -1}), ("config", {"parallel": 4}), ("config", {"timeout_per_item": "soon"}),
        ("timeout_per_item", 0), ("then", [{"job_type": doc["job_type"]}]), ("items", [item, dict(item)]),
    ]
    in_item: list[tuple[str, Any]] = [
        ("item_id", "two words"), ("item_id", "../escape"), ("item_id", ""), ("priority", "asap"),
        ("model", unknown_model), ("deadline", "2025-13-45"), ("not_a_field", 1),
    ]
    in_text: list[Callable[[str], str]] = [
        lambda text: text + "job_id: twice\n",  # a duplicate key
        lambda text: text.replace("job_type:", "job_type: [unclosed", 1),  # a YAML syntax error
        lambda text: "\t" + text,  # a tab where YAML wants spaces
        lambda text: "- " + text.replace("\n", "\n  "),  # a list, not a mapping
        lambda text: "",  # nothing at all
    ]
    return st.one_of(st.sampled_from(in_job).map(lambda kv: change(**{kv[0]: kv[1]})),
                     st.sampled_from(in_item).map(lambda kv: item_change(**{kv[0]: kv[1]})),
                     st.sampled_from(in_text).map(lambda mistake: mistake(to_yaml(doc))))


_GONE = object()


def invalid_job_documents(*, job_type: str | None = None,
                          models: Sequence[str] = ("simulated",)) -> st.SearchStrategy[str]:
    """Job files (YAML text, since some are broken below the level of a
    mapping) with one mistake each: a missing or unknown key, a wrong value,
    an unknown name, a duplicate, a YAML syntax error, a tab, a list or
    nothing where a mapping goes. Loading each against settings that define
    ``models`` must raise :class:`storyloom.ConfigError`, never another exception."""
    return job_documents(job_type=job_type, models=models).flatmap(lambda doc: _broken(doc, models))


# -- writing them -------------------------------------------------------------------


def to_yaml(document: Any) -> str:
    """A document as YAML text, any script written as itself."""
    return yaml.safe_dump(document, allow_unicode=True, sort_keys=False)


def to_jsonl(lines: Sequence[Any]) -> str:
    """Lines of a JSONL file (a Batch API input file), non-ASCII written as itself."""
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
