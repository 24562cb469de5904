"""Typed domain errors.

Every error the core raises carries a stable snake_case ``code`` (one of
``stigmem_node.error_codes.REGISTRY``) and a one-sentence ``message``.  Errors carry no
HTTP: only the HTTP layer (``stigmem_node.http.errors``) maps codes to status codes and
headers, and only the CLI turns them into exit codes.
"""

from __future__ import annotations

from typing import Any


class StigmemError(Exception):
    """Base class of every expected error: a stable code plus one sentence.

    ``retry_after``: seconds after which the same request may succeed (a rate limit); the
    HTTP edge sends it as ``Retry-After`` and in the body.  ``extra``: context fields for
    the error body (``peer_id``, ``status``, ...).
    """

    # The class's default code; the categories below (Conflict, Forbidden, Unauthorized)
    # have none, so each error raised from them names its own.
    code: str

    def __init__(self, code: str | None = None, message: str | None = None, *, retry_after: int | None = None,
                 **extra: Any) -> None:
        if code is not None:
            self.code = code
        elif not hasattr(self, "code"):
            raise TypeError(f"{type(self).__name__} needs a code")
        self.message = message or self.code.replace("_", " ")
        self.retry_after = retry_after
        self.extra = extra
        super().__init__(self.message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its class and attributes (a checked page comes back from a check worker
        # process with its rejections): the default, ``cls(*args)``, would take the message
        # for the code.
        return _restore, (type(self), self.message, self.__dict__)


def _restore(cls: type[StigmemError], message: str, state: dict[str, Any]) -> StigmemError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class ConfigError(StigmemError):
    """A setting is missing or has an invalid value."""

    code = "invalid_config"


class ValidationError(StigmemError):
    """Input does not have the required shape."""

    code = "invalid_request"

    def __init__(self, code: str | None = None, message: str | None = None, *, field: str | None = None,
                 **extra: Any) -> None:
        super().__init__(code, message, **extra)
        self.field = field


class InternalValidationError(ValidationError):
    """A check itself failed unexpectedly (a bug in this node, logged with its traceback):
    the input was neither accepted nor rejected on its merits.  Kept apart from
    ``invalid_fact`` so that fuzzing can tell a crash from a rejection."""

    code = "internal_validation_error"


class NotFound(StigmemError):
    code = "not_found"


class Erased(StigmemError):
    """The thing asked for was erased (a tombstone remains)."""

    code = "fact_erased"


class Conflict(StigmemError):
    pass


class Forbidden(StigmemError):
    pass


class Unauthorized(StigmemError):
    pass


class OutboundError(StigmemError):
    """A fetch from another node failed (unreachable, timeout, too large, refused)."""

    code = "fetch_failed"
