"""What a model provider is: a registered factory and the objects it builds.

A plugin registers a **provider factory** by name through
``loom_register_providers`` (``register(name, factory)``); ``provider:`` on a
model entry chooses it. The factory, normally a class, is a
:class:`ProviderFactory`:

* ``factory(spec)`` builds the :class:`Provider` for one model
  (a :class:`storyloom.settings.ModelSpec`), once per model per worker; the
  kernel owns its lifetime (``aclose``).
* ``factory.default_price(model_id)`` is the provider's own list price for
  one of its model ids, or None if it has none. It is asked when the settings
  are loaded, before any provider exists, for every model entry without
  ``price:``; None means the model is free (a local or simulated one).
* ``factory.check_spec(spec)`` (optional) checks a model entry's provider
  options without building anything; raise :func:`spec_error` (a
  ConfigError at the option's file:line:col). Asked for every model entry
  when a job is loaded (``validate``, ``submit``, ``run``).
* ``factory.required_env(spec)`` (optional) names the environment variables
  the provider needs set to send anything (its API key). Asked, when a job
  is planned, for the models that job would use; an unset or empty one is a
  ConfigError naming the model, the variable and the model entry, before
  anything is stored. The value is never read into a message.
* ``factory.expected_output_tokens(spec, request)`` (optional) is the reply
  length to expect, for ``--dry-run``'s expected cost
  (:mod:`storyloom.estimate`); without it half of ``max_tokens`` is assumed.

What a provider knows about its vendor -- list prices, rate-limit headers,
wire formats -- stays in its plugin: the kernel only sees the members below.
Subclass :class:`BaseProvider` for the defaults, so that a third-party
provider is a ``complete`` method and a ``register`` call. The kernel checks
both contracts once (:func:`check_factory` when the settings are resolved,
:func:`check_provider` when it builds a provider) and names the provider in a
:class:`storyloom.UsageError` if one does not conform.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol, runtime_checkable

from .document import PathKey, locate
from .errors import ConfigError, ErrorKind, Location, ProviderError, UsageError
from .pricing import lookup_price
from .settings import Price
from .validation import compile_schema, format_path

if TYPE_CHECKING:
    from .settings import ModelSpec

__all__ = ["NO_DATA", "BaseProvider", "Provider", "ProviderFactory", "RateLimitFeedback", "Request", "Response",
           "check_factory", "check_provider", "check_spec", "merge_options", "missing_env", "spec_error",
           "structured_data"]


@dataclass(frozen=True)
class Request:
    """One chat request. ``messages`` are ``{"role", "content"}`` dicts (roles
    ``system``, ``user``, ``assistant``); each provider translates them into
    its API's own format."""

    messages: tuple[dict[str, str], ...]
    max_tokens: int = 1024
    temperature: float | None = None
    stream: bool = False
    #: Free-form hints a provider may use (language, item_id, ...); never sent as-is.
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Ask for structured data: a JSON Schema the reply must satisfy. Each
    #: provider uses its API's native feature (OpenAI ``response_format``,
    #: Anthropic a forced tool, Gemini ``responseJsonSchema``) and checks the
    #: reply with :func:`structured_data`; ``Response.data`` holds the object.
    response_schema: Mapping[str, Any] | None = None
    #: The schema's name where an API wants one (OpenAI's json_schema name,
    #: Anthropic's tool name): letters, digits, ``_`` and ``-``, at most 64.
    schema_name: str = "result"
    #: The language to write in (BCP 47: ``th``, ``en``); None: the item's or
    #: job's, which the kernel also puts in ``metadata["language"]``.
    language: str | None = None


@dataclass(frozen=True)
class Response:
    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str = "stop"
    model: str | None = None  # the provider's model id that answered
    #: The parsed, schema-checked object when the request had a response_schema.
    data: Any = None


#: Longest piece of a model's reply quoted in an INVALID_OUTPUT message.
QUOTED_REPLY = 120
#: :func:`structured_data`'s "the API handed no object over": the text is the JSON.
NO_DATA: Any = object()


def structured_data(request: Request, text: str, data: Any = NO_DATA, *, who: str = "",
                    input_tokens: int = 0, output_tokens: int = 0) -> Any:
    """The reply's object for a request with a ``response_schema``: ``data``
    if the API handed an object over (Anthropic's ``tool_use.input``), else
    ``text`` parsed as JSON; checked against the schema.

    :raises ProviderError: ``INVALID_OUTPUT`` (with the tokens the reply cost)
        if the text is not JSON or the object fails the schema; the message
        says where, quoting at most :data:`QUOTED_REPLY` characters of the reply.
    """
    prefix = f"{who}: " if who else ""

    def invalid(message: str) -> ProviderError:
        return ProviderError(ErrorKind.INVALID_OUTPUT, prefix + message, input_tokens=input_tokens,
                             output_tokens=output_tokens)

    if data is NO_DATA:
        try:
            data = json.loads(text)
        except ValueError as err:
            quoted = text.strip()[:QUOTED_REPLY]
            raise invalid(f"the reply is not JSON ({err.msg} at character {err.pos}): {quoted!r}") from None
    schema = request.response_schema
    if schema is None:
        return data
    # A job type's schema is one dict for all its requests: compiled once (a copy would be compiled each time).
    validator = compile_schema(schema if isinstance(schema, dict) else dict(schema),
                               f"response_schema {request.schema_name!r}")
    error = next(iter(sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        where = format_path(tuple(error.absolute_path)) or "the top"
        raise invalid(f"the reply fails the schema {request.schema_name!r} at {where}: {error.message[:200]}")
    return data


def spec_error(spec: "ModelSpec", key: PathKey, message: str, *, at_key: bool = False) -> ConfigError:
    """A ConfigError about option ``key`` (``("errors", "TIMEOUT")``) of the
    model entry ``spec``: ``storyloom.yaml:12:5: at models.NAME.errors.TIMEOUT: ...``
    (``at_key``: where the key is written, for an unknown option). The
    settings file is re-read for the position: raise it, don't build it in a loop."""
    path = ("models", spec.name, *key)
    where = locate(spec.source, path, key=at_key) if spec.source else Location("<built-in settings>")
    return ConfigError(where, format_path(path), message)


def well_formed(response: Response) -> Response:
    """``response`` with any lone surrogate in its text (a JSON reply may
    escape half a pair) replaced by U+FFFD: text the store and files can hold."""
    text = response.text
    if isinstance(text, str) and not text.isascii():
        fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        if fixed != text:
            return replace(response, text=fixed)
    return response


def merge_options(spec: "ModelSpec", defaults: Mapping[str, Any], provider: str) -> dict[str, Any]:
    """A model entry's provider options over ``defaults``; an unknown option is
    a ConfigError (:func:`spec_error`) that suggests the close one."""
    for key in spec.options:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(defaults)})"
            raise spec_error(spec, (key,), f"unknown option {key!r} for the {provider} provider{hint}", at_key=True)
    return {**defaults, **spec.options}


def check_spec(factory: Any, spec: "ModelSpec") -> None:
    """Ask ``factory`` to check the entry's options, if it can (``check_spec``).

    :raises ConfigError: located in the settings file.
    """
    checker = getattr(factory, "check_spec", None)
    if callable(checker):
        checker(spec)


def missing_env(factory: Any, spec: "ModelSpec") -> ConfigError | None:
    """The error for the first variable of ``factory.required_env(spec)`` that
    is unset or empty, or None. Names the model, the variable and the model
    entry's place in the settings; never the value."""
    required = getattr(factory, "required_env", None)
    for variable in (required(spec) if callable(required) else ()):
        if not os.environ.get(variable):
            state = "empty" if variable in os.environ else "not set"
            where = ("api_key_env",) if spec.api_key_env == variable else ()
            return spec_error(spec, where, f"model {spec.name!r} needs the environment variable {variable} "
                                           f"(its API key), which is {state}; set it, or use another model")
    return None


@runtime_checkable
class RateLimitFeedback(Protocol):
    """What a provider may tell the kernel about its model's rate limits.

    The kernel hands one to each provider (:meth:`Provider.bind_rate_limits`);
    it is the model's limiter, shared by every job the worker runs. A 429 needs
    no feedback: the kernel cools the model down from the error's
    ``retry_after`` itself.
    """

    def exhausted(self, reset_in: float | None) -> None:
        """The server says one of the model's budgets (requests, tokens, ...)
        has nothing left: send nothing more to this model for ``reset_in``
        seconds from now. None: the server did not say when it resets (the
        limiter then waits one burst slice). Call it from ``complete`` as
        replies arrive, successful or not; it never blocks."""


@runtime_checkable
class Provider(Protocol):
    """One model's connection to its vendor, built by a :class:`ProviderFactory`."""

    #: True if the vendor counts ``max_tokens`` against a token-per-minute
    #: budget when a request arrives and gives back the unused part when the
    #: reply ends; the model's limiter then refunds the difference too. False
    #: (the usual case) if unused tokens stay charged.
    refunds_unused_tokens: bool

    def bind_rate_limits(self, feedback: RateLimitFeedback) -> None:
        """Receive the model's rate-limit feedback. Called once by the kernel,
        right after the provider is built and before any ``complete``. A
        provider that reads rate-limit signals from its replies (headers) keeps
        it and calls :meth:`RateLimitFeedback.exhausted`; others ignore it."""

    async def complete(self, request: Request) -> Response:
        """Send one request. Raise :class:`storyloom.ProviderError` with an
        :class:`storyloom.ErrorKind` on failure. Must not apply its own overall
        timeout: the kernel wraps each attempt in ``trio.fail_after``."""

    async def aclose(self) -> None:
        """Release connections. Called once when the batch ends."""


@runtime_checkable
class ProviderFactory(Protocol):
    """What ``loom_register_providers`` registers (normally a :class:`Provider` class)."""

    def __call__(self, spec: "ModelSpec") -> Provider:
        """Build the provider of one model entry; may raise ConfigError for bad options."""

    def default_price(self, model_id: str) -> Price | None:
        """The list price (USD per million tokens) for one of the provider's
        model ids, or None if it knows none. Called before any provider exists."""

    # Optional (BaseProvider has both): without them nothing is checked early.

    def check_spec(self, spec: "ModelSpec") -> None:
        """Check the entry's provider options (no client, no network). Called
        when a job is loaded, for every model entry; raise :func:`spec_error`."""

    def required_env(self, spec: "ModelSpec") -> tuple[str, ...]:
        """The environment variables that must be set (non-empty) for the
        provider to send anything, e.g. its API key's. Called when a job is
        planned, for the models it would use; must not raise."""


class BaseProvider:
    """The defaults of both contracts; subclass it and write ``complete``.

    ``SubClass(spec)`` is the factory to register. Set ``default_prices`` to a
    table of ``model id or family -> Price`` (matched by
    :func:`storyloom.pricing.lookup_price`: dated and tagged ids of a family
    share its price) and ``refunds_unused_tokens`` if the vendor gives unused
    tokens back. The rate-limit feedback is kept as ``self.rate_limits``.
    """

    #: See :attr:`Provider.refunds_unused_tokens`.
    refunds_unused_tokens: bool = False
    #: Lower-case model ids or families -> list price; empty: every model is free.
    default_prices: ClassVar[Mapping[str, Price]] = {}

    def __init__(self, spec: "ModelSpec") -> None:
        self.spec = spec
        self.rate_limits: RateLimitFeedback | None = None

    @classmethod
    def default_price(cls, model_id: str) -> Price | None:
        """See :meth:`ProviderFactory.default_price`: looked up in ``default_prices``."""
        return lookup_price(cls.default_prices, model_id)

    @classmethod
    def check_spec(cls, spec: "ModelSpec") -> None:
        """See :meth:`ProviderFactory.check_spec`: no options, nothing to check."""

    @classmethod
    def required_env(cls, spec: "ModelSpec") -> tuple[str, ...]:
        """See :meth:`ProviderFactory.required_env`: none."""
        return ()

    def bind_rate_limits(self, feedback: RateLimitFeedback) -> None:
        self.rate_limits = feedback

    async def complete(self, request: Request) -> Response:
        raise NotImplementedError(f"{type(self).__name__}.complete")

    async def aclose(self) -> None:
        pass


#: The members :class:`Provider` requires, in the order an error lists them.
PROVIDER_MEMBERS = ("refunds_unused_tokens", "bind_rate_limits", "complete", "aclose")
_HINT = "subclass storyloom.provider.BaseProvider for the defaults (see docs/providers.md)"


def check_factory(factory: Any, name: str, plugin: str | None = None) -> None:
    """Raise UsageError unless ``factory`` (registered as provider ``name``,
    by ``plugin``) is a :class:`ProviderFactory`."""
    missing = [what for what, ok in (("a factory(spec) call", callable(factory)),
                                     ("default_price(model_id)", callable(getattr(factory, "default_price", None))))
               if not ok]
    if missing:
        raise UsageError(f"provider {name!r}{_by(plugin)} is not a provider factory: it lacks "
                         f"{' and '.join(missing)}; {_HINT}")


def check_provider(provider: Any, name: str, model: str, plugin: str | None = None) -> None:
    """Raise UsageError unless ``provider`` (built by provider ``name`` for
    ``model``) has every :class:`Provider` member."""
    missing = [member for member in PROVIDER_MEMBERS if not hasattr(provider, member)]
    if missing:
        raise UsageError(f"provider {name!r}{_by(plugin)} built a {type(provider).__name__} for model "
                         f"{model!r} that lacks {', '.join(missing)}; {_HINT}")
    if not isinstance(provider.refunds_unused_tokens, bool):
        raise UsageError(f"provider {name!r}{_by(plugin)}: refunds_unused_tokens must be True or False, "
                         f"got {provider.refunds_unused_tokens!r}")


def _by(plugin: str | None) -> str:
    return f" (registered by plugin {plugin!r})" if plugin else ""
