"""Typed domain errors.

Every error the core raises carries a stable snake_case ``code`` and a one-sentence
``message``.  Only the HTTP layer (``stigmem_node.http.errors``) maps codes to status
codes, and only the CLI turns them into exit codes.
"""

from __future__ import annotations

from typing import Any


class StigmemError(Exception):
    """Base class of every expected error: a stable code plus one sentence."""

    code: str = "error"

    def __init__(self, code: str | None = None, message: str | None = None, **extra: Any) -> None:
        if code is not None:
            self.code = code
        self.message = message or self.code.replace("_", " ")
        self.extra = extra
        super().__init__(self.message)


class ConfigError(StigmemError):
    """A setting is missing or has an invalid value."""

    code = "invalid_config"


class ValidationError(StigmemError):
    """Input does not have the required shape (422)."""

    code = "invalid_request"

    def __init__(self, code: str | None = None, message: str | None = None, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(code, message, **extra)
        self.field = field


class InternalValidationError(ValidationError):
    """A check itself failed unexpectedly (a bug in this node, logged with its traceback):
    the input was neither accepted nor rejected on its merits.  Kept apart from
    ``invalid_fact`` so that fuzzing can tell a crash from a rejection."""

    code = "internal_validation_error"


class NotFound(StigmemError):
    code = "not_found"


class Conflict(StigmemError):
    code = "conflict"


class Forbidden(StigmemError):
    code = "forbidden"


class Unauthorized(StigmemError):
    code = "unauthorized"


class OutboundError(StigmemError):
    """A fetch from another node failed (unreachable, timeout, too large, refused)."""

    code = "fetch_failed"
