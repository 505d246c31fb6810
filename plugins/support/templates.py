"""Jinja2 for prompts: a sandbox, and a check of a template before any item is stored.

Every template renders in :class:`PromptSandbox`, Jinja's
``ImmutableSandboxedEnvironment`` (no attribute starting with ``_``, no
mutating methods, ``str.format`` checked too) with ``StrictUndefined`` and no
autoescape (prompts are plain text), and with huge repetition (``'x' * 10**9``,
``9 ** 9 ** 9``) refused. :func:`template_problem` is what a job type runs
when a job is loaded: syntax, unknown filters, attributes the sandbox would
refuse, and names the item's context cannot provide.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

__all__ = ["PromptSandbox", "SecurityError", "compiled", "template_problem"]

#: The longest string or list one ``*`` may make, and the largest ``**`` exponent.
MAX_REPEAT = 1_000_000
MAX_EXPONENT = 100


class PromptSandbox(ImmutableSandboxedEnvironment):
    """The sandbox every prompt template renders in."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options: Any) -> None:
        options.setdefault("undefined", jinja2.StrictUndefined)  # a missing name is a mistake, not a blank
        options.setdefault("keep_trailing_newline", True)
        options.setdefault("autoescape", False)  # prompts are plain text, not HTML
        super().__init__(**options)

    # Jinja's sandbox answers an unsafe attribute with an Undefined, whose error
    # then reads "no attribute"; here it is an error that says why, at once.
    def getattr(self, obj: Any, attribute: str) -> Any:
        _refuse_private(obj, attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _refuse_private(obj, argument)
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"the exponent {right} is too large (unsafe in a template)")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_REPEAT:
                    raise SecurityError(f"repeating {len(seq)} characters or items {times} times is too much "
                                        "(unsafe in a template)")
        return super().call_binop(context, operator, left, right)


def _refuse_private(obj: Any, name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise SecurityError(f"access to attribute {name!r} of {type(obj).__name__!r} object is unsafe")


_SANDBOX = PromptSandbox()


@lru_cache(maxsize=1024)
def compiled(text: str) -> jinja2.Template:
    """``text`` compiled in the shared sandbox (cached: items often share a prompt).

    :raises jinja2.TemplateSyntaxError: also for an unknown filter or test.
    """
    return _SANDBOX.from_string(text)


@dataclass(frozen=True)
class _Shape:
    """What a template's source says about itself, whatever the context."""

    problem: str  # syntax or an unsafe attribute; "" if none
    names: frozenset[str]  # top-level names it reads and does not set or test with `is defined`
    vars_keys: frozenset[str]  # keys it reads as vars.KEY


def template_problem(text: str, names: Collection[str], vars_keys: Collection[str] | None = None) -> str:
    """What is wrong with the template ``text`` for a context holding
    ``names`` (``vars_keys``: the keys of its ``vars`` mapping, checked in
    ``vars.KEY``), or "" if nothing is. Jinja's own globals (``range``,
    ``loop``...) are always there."""
    shape = _shape(text)
    if shape.problem:
        return shape.problem
    missing = sorted(shape.names - set(names) - set(_SANDBOX.globals))
    if missing:
        return (f"the template uses {', '.join(repr(n) for n in missing)}, which neither the item's vars nor "
                f"the job's give (it has: {', '.join(sorted(names))})")
    if vars_keys is not None:
        missing = sorted(shape.vars_keys - set(vars_keys))
        if missing:
            return (f"the template uses {', '.join(repr('vars.' + n) for n in missing)}, which neither the "
                    f"item's vars nor the job's give")
    return ""


@lru_cache(maxsize=1024)
def _shape(text: str) -> _Shape:
    try:
        compiled(text)
        tree = _SANDBOX.parse(text)
    except jinja2.TemplateSyntaxError as err:
        return _Shape(f"template syntax error (template line {err.lineno}): {err.message}", frozenset(), frozenset())
    unsafe = _unsafe_attribute(tree)
    if unsafe:
        return _Shape(f"the template reads {unsafe!r}, which is unsafe: the sandbox refuses attributes that "
                      "start with '_'", frozenset(), frozenset())
    tested = {test.node.name for test in tree.find_all(nodes.Test)
              if test.name in ("defined", "undefined") and isinstance(test.node, nodes.Name)}
    vars_keys = {node.attr for node in tree.find_all(nodes.Getattr)
                 if isinstance(node.node, nodes.Name) and node.node.name == "vars"}
    return _Shape("", frozenset(meta.find_undeclared_variables(tree) - tested), frozenset(vars_keys))


def _unsafe_attribute(tree: nodes.Template) -> str:
    """The first ``_``-prefixed attribute the source names (``x.__class__``,
    ``x['__init__']``, ``x|attr('__globals__')``, ``{% set ns._y %}``), or ""."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.NSRef, nodes.Filter)):
        if isinstance(node, (nodes.Getattr, nodes.NSRef)):
            name = node.attr
        elif isinstance(node, nodes.Getitem):
            name = node.arg.value if isinstance(node.arg, nodes.Const) else None
        else:
            name = node.args[0].value if node.name == "attr" and node.args and isinstance(node.args[0], nodes.Const) \
                else None
        if isinstance(name, str) and name.startswith("_"):
            return name
    return ""
