"""Jinja2 for prompts: a sandbox, and a check of a template before any item is stored.

Every template renders in :class:`PromptSandbox`, Jinja's
``ImmutableSandboxedEnvironment`` (no attribute starting with ``_``, no
mutating methods, ``str.format`` checked too) with ``StrictUndefined`` and no
autoescape (prompts are plain text), and bounded: huge repetition
(``'x' * 10**9``), powers and products (``9 ** 9 ** 9``, ``((10**100)**100)**100``),
widths (``center``, ``indent``, ``wordwrap``, ``truncate``, ``replace``, ``'%0Nd'``,
``'{:>N}'``, ``ljust``...) are refused, and one render stops after
:data:`MAX_STEPS` loop steps or :data:`MAX_OUTPUT` characters. Rendering is
synchronous, so no timeout could stop it: these bounds are what does. :func:`template_problem` is what a job type runs
when a job is loaded: syntax, unknown filters, attributes the sandbox would
refuse, and names the item's context cannot provide.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import string
from collections.abc import Callable, Collection, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.filters
from jinja2 import meta, nodes
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment, SecurityError

__all__ = ["PromptSandbox", "SecurityError", "compiled", "template_problem"]

#: The longest string or list one ``*`` may make, and the largest ``**`` exponent.
MAX_REPEAT = 1_000_000
MAX_EXPONENT = 100
#: The largest integer (in bits) ``*`` or ``**`` may make: well under the
#: 4300 digits Python will still turn into text.
MAX_INT_BITS = 10_000
#: The widest padding or fill a filter or format spec may ask for
#: (``center``, ``indent``, ``wordwrap``, ``'%0Nd'``, ``'{:>N}'``, ``ljust``...).
MAX_WIDTH = 10_000
#: The most characters one render may produce.
MAX_OUTPUT = 2_000_000
#: The most work one render may do: one step per loop iteration, per number
#: a ``range`` holds, and per thousand characters a repetition or filter makes.
MAX_STEPS = 100_000

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


class _Budget:
    """The work left to one render (see :data:`MAX_STEPS`)."""

    def __init__(self) -> None:
        self.steps = 0


_budget: ContextVar[_Budget | None] = ContextVar("storyloom_template_budget", default=None)


def _charge(steps: int) -> None:
    budget = _budget.get()
    if budget is None:  # outside a render (a filter called from Python): nothing to bound
        return
    budget.steps += steps
    if budget.steps > MAX_STEPS:
        raise SecurityError(f"the template does too much work (more than {MAX_STEPS} loop steps; "
                            "unsafe in a template)")


def _check_size(size: int, what: str) -> None:
    if size > MAX_REPEAT:
        raise SecurityError(f"{what} would make {size} characters, too many (unsafe in a template)")
    _charge(size // 1000)


def _check_width(value: Any, what: str, most: int = MAX_WIDTH) -> None:
    width = len(value) if isinstance(value, str) else value
    if isinstance(width, (int, float)) and not isinstance(width, bool) and width > most:
        raise SecurityError(f"{what} of {width} is too large (unsafe in a template)")


def _check_percent_format(text: Any) -> None:
    """Refuse a ``%`` format with a huge (or a ``*``) width or precision."""
    if not isinstance(text, str):
        return
    for spec in _PERCENT_SPEC.finditer(text):
        for number in spec.groups():
            if number == "*":
                raise SecurityError("a '*' width in a % format is unsafe in a template")
            _check_width(int(number) if number else 0, "a % format width")


def _check_brace_format(text: str) -> None:
    """Refuse a ``str.format`` spec with a huge or a nested width."""
    for _literal, field, spec, _conversion in string.Formatter().parse(text):
        if field is None or not spec:
            continue
        if "{" in spec:
            raise SecurityError("a nested {} in a format spec is unsafe in a template")
        for number in _DIGITS.findall(spec):
            _check_width(int(number), "a format width")


def _replaced_size(s: Any, old: Any, new: Any, count: Any) -> int:
    s, old, new = str(s), str(old), str(new)
    found = len(s) + 1 if old == "" else s.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(s) + found * (len(new) - len(old))


def _guarded_filter(name: str, check: Callable[[Mapping[str, Any]], None]) -> Callable[..., Any]:
    original = jinja2.filters.FILTERS[name]
    signature = inspect.signature(original)

    @functools.wraps(original)  # keeps Jinja's pass_context/pass_environment marks
    def guarded(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        check(bound.arguments)
        return original(*args, **kwargs)

    return guarded


def _check_replace(a: Mapping[str, Any]) -> None:
    _check_size(_replaced_size(a["s"], a["old"], a["new"], a["count"]), "replace")


def _check_indent(a: Mapping[str, Any]) -> None:
    _check_width(a["width"], "indent width")
    width = len(a["width"]) if isinstance(a["width"], str) else a["width"]
    if isinstance(width, int):
        _check_size(len(str(a["s"])) + str(a["s"]).count("\n") * max(width, 0), "indent")


_GUARDED_FILTERS = {
    "center": lambda a: _check_width(a["width"], "center width"),
    "format": lambda a: _check_percent_format(a["value"]),
    "indent": _check_indent,
    "wordwrap": lambda a: (_check_width(a["width"], "wordwrap width"), _charge(len(str(a["s"])) // 100)),
    "replace": _check_replace,
    "truncate": lambda a: (_check_width(a["length"], "truncate length", MAX_REPEAT),
                           _check_width(a["leeway"], "truncate leeway", MAX_REPEAT)),
}
#: str methods whose first argument is a width.
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _counted(iterable: Any) -> Iterator[Any]:
    """What every ``{% for %}`` iterates: the items, each one a step."""
    for value in iterable:
        _charge(1)
        yield value


def _range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise SecurityError(f"range too big: the sandbox refuses ranges over {MAX_RANGE} numbers (unsafe)")
    _charge(len(numbers))
    return numbers


class _GuardedTemplate(jinja2.Template):
    """A template whose render is bounded: :data:`MAX_STEPS` of work and
    :data:`MAX_OUTPUT` characters."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        token = _budget.set(_Budget())
        try:
            out, size = [], 0
            for chunk in self.generate(*args, **kwargs):  # counted as it comes: stop a huge output early
                size += len(chunk)
                if size > MAX_OUTPUT:
                    raise SecurityError(f"the template's output passed {MAX_OUTPUT} characters "
                                        "(unsafe in a template)")
                out.append(chunk)
            return "".join(out)
        finally:
            _budget.reset(token)


class PromptSandbox(ImmutableSandboxedEnvironment):
    """The sandbox every prompt template renders in."""

    intercepted_binops = frozenset({"*", "**", "%"})
    template_class = _GuardedTemplate
    #: What every ``{% for %}`` iterates through (reached as ``environment.loom_counted``,
    #: which a template cannot rebind).
    loom_counted = staticmethod(_counted)

    def __init__(self, **options: Any) -> None:
        options.setdefault("undefined", jinja2.StrictUndefined)  # a missing name is a mistake, not a blank
        options.setdefault("keep_trailing_newline", True)
        options.setdefault("autoescape", False)  # prompts are plain text, not HTML
        super().__init__(**options)
        self.globals["range"] = _range
        for name, check in _GUARDED_FILTERS.items():
            self.filters[name] = _guarded_filter(name, check)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        # Every loop counts its iterations (the bound on nested loops).
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.EnvironmentAttribute("loom_counted"), [loop.iter], [], None, None,
                                   lineno=loop.lineno)
        return tree

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's names)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            if name in _WIDTH_METHODS and args:
                _check_width(args[0], f"str.{name} width")
            elif name == "replace" and len(args) >= 2:
                _check_size(_replaced_size(owner, args[0], args[1], args[2] if len(args) > 2 else -1), "replace")
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_brace_format(value.__self__)
        return wrapped

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
        if operator == "**" and _is_number(right):
            if abs(right) > MAX_EXPONENT:
                raise SecurityError(f"the exponent {right} is too large (unsafe in a template)")
            # The left operand counts too: ((10**100)**100)**100 has small exponents.
            if _is_number(left) and abs(left) > 1 and right > 0 and right * math.log2(abs(left)) > MAX_INT_BITS:
                raise SecurityError(f"a power over {MAX_INT_BITS} bits is too large (unsafe in a template)")
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int) and \
                    left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise SecurityError(f"a product over {MAX_INT_BITS} bits is too large (unsafe in a template)")
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                    if len(seq) * times > MAX_REPEAT:
                        raise SecurityError(f"repeating {len(seq)} characters or items {times} times is too "
                                            "much (unsafe in a template)")
                    _charge(len(seq) * times // 1000)
        if operator == "%":
            _check_percent_format(left)
        return super().call_binop(context, operator, left, right)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
    names: frozenset[str]  # top-level names it reads and does not set, test with `is defined` or `|default`
    vars_keys: frozenset[str]  # keys it reads as vars.KEY


def template_problem(text: str, names: Collection[str], vars_keys: Collection[str] | None = None) -> str:
    """What is wrong with the template ``text`` for a context holding
    ``names`` (``vars_keys``: the keys of its ``vars`` mapping, checked in
    ``vars.KEY``), or "" if nothing is. Jinja's own globals (``range``,
    ``loop``...) are always there. A name or ``vars.KEY`` may be missing where
    ``|default`` (``|d``) is applied to it directly, and a name tested once with
    ``is defined`` may be missing anywhere in the template. ``vars.get(...)``,
    ``vars.items()`` and the other dict methods are not keys."""
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
    # A name tested once with `is defined` is taken as optional everywhere in
    # the template (the check does not follow which branch reads it).
    tested = {test.node.name for test in tree.find_all(nodes.Test)
              if test.name in ("defined", "undefined") and isinstance(test.node, nodes.Name)}
    # What `|default` (`|d`) is applied to directly may be missing: it renders the default.
    defaulted = [f.node for f in tree.find_all(nodes.Filter) if f.name in ("default", "d") and f.node is not None]
    tested |= {node.name for node in defaulted if isinstance(node, nodes.Name)}
    skipped = {id(node) for node in defaulted} | {id(call.node) for call in tree.find_all(nodes.Call)}
    vars_keys = {node.attr for node in tree.find_all(nodes.Getattr)
                 if isinstance(node.node, nodes.Name) and node.node.name == "vars"
                 and id(node) not in skipped and node.attr not in _DICT_METHODS}  # vars.get(...), vars.items()
    return _Shape("", frozenset(meta.find_undeclared_variables(tree) - tested), frozenset(vars_keys))


_DICT_METHODS = frozenset(name for name in dir(dict) if not name.startswith("_"))


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
