"""Errors raised by the pure native layer. The HTTP layer maps them; nothing here knows about HTTP.

NativeError
├── NativeValidationError   the client's request is invalid (maps to 400 invalid_request_error)
└── TranslationError        a provider's answer cannot be turned into the unified shape (maps to 500/502)
    └── StreamError         a stream failed part-way; `code` goes into the SSE error event
                            (`parse_error`, `connection_closed`, or the provider's own error type)
"""

from __future__ import annotations


class NativeError(Exception):
    """Base of every error raised by `sentinel.native`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NativeValidationError(NativeError):
    """The request is invalid. `param` is the dotted path of the offending field (e.g. `messages.2.role`)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def invalid(param: str, why: str) -> NativeValidationError:
    """The request's field `param` (a dotted path) is invalid, `why` saying how: "`param`: `why`"."""
    return NativeValidationError(f"{param}: {why}", param)


class TranslationError(NativeError):
    """An upstream body does not have the shape its wire format promises."""

    def __init__(self, message: str, *, provider: str | None = None) -> None:
        super().__init__(message)
        self.provider = provider


class StreamError(TranslationError):
    """A stream cannot be continued or finished cleanly; `code` is what the client's error event carries.
    `kind` is what it is counted as: `code`, or `upstream_error` when `code` is the provider's own
    (`providers_code`: any string a provider sends, never a metric label)."""

    def __init__(self, message: str, *, code: str, provider: str | None = None, providers_code: bool = False) -> None:
        super().__init__(message, provider=provider)
        self.code = code
        self.kind = "upstream_error" if providers_code else code
