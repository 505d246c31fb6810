"""Error kinds shared by every plugin, and the exceptions the kernel understands."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorKind(enum.StrEnum):
    """Why an attempt failed. The first six are the seed's; the policy plugins
    decide from the kind alone whether another attempt can succeed."""

    API_RATE_LIMIT = "API_RATE_LIMIT"
    TIMEOUT = "TIMEOUT"
    TEMPORARY_ERROR = "TEMPORARY_ERROR"
    INVALID_INPUT = "INVALID_INPUT"
    AUTH_ERROR = "AUTH_ERROR"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    #: The reply hit max_tokens; a job type may retry with more room.
    OUTPUT_TRUNCATED = "OUTPUT_TRUNCATED"
    #: The reply was asked for as structured data (``Request.response_schema``)
    #: and is not JSON or fails the schema; retried ``invalid_output_retries`` times.
    INVALID_OUTPUT = "INVALID_OUTPUT"
    #: A plugin raised something that is not a ProviderError: a bug, never retried.
    INTERNAL_ERROR = "INTERNAL_ERROR"


class ProviderError(Exception):
    """Raised by a provider (or a job type) when an attempt fails.

    ``retry_after`` is the server's hint in seconds, if it gave one; ``input_tokens``
    and ``output_tokens`` are what the failed attempt still consumed (and costs).
    ``billed`` says whether the provider may have billed a request that failed
    with no token counts: False only when it surely did not (a 4xx rejection,
    a request never sent); None (the default) means maybe, and the kernel then
    counts the attempt's worst case as "sent, outcome unknown".
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        retry_after: float | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        billed: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = ErrorKind(kind)
        self.message = message
        self.retry_after = retry_after
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.billed = billed

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class UsageError(Exception):
    """Bad input or usage: the CLI prints the message alone and exits 2."""


@dataclass(frozen=True)
class Location:
    file: str
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based

    def __str__(self) -> str:
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.column}"


class ConfigError(UsageError):
    """A job or settings file is wrong. Says where (file:line:column and the path
    inside the document) and what was expected."""

    def __init__(self, location: Location | str, path: str, message: str) -> None:
        self.location = location if isinstance(location, Location) else Location(location)
        self.path = path
        self.message = message
        where = f" at {path}" if path else ""
        super().__init__(f"{self.location}:{where}: {message}" if where else f"{self.location}: {message}")


class ConfigErrors(ConfigError):
    """Several problems in one file (``storyloom validate`` lists them all).

    It is the first of them as a :class:`ConfigError` (its location, path
    and message), so code that reports one error keeps working; ``errors``
    holds every one reported, in file order, and ``more`` counts those left
    out past the cap."""

    def __init__(self, errors: "list[ConfigError]", more: int = 0) -> None:
        first = errors[0]
        super().__init__(first.location, first.path, first.message)
        self.errors = list(errors)
        self.more = more
