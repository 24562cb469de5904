"""Operator API keys.

A key reads ``stgm_<id>_<secret>``: ``id`` (12 hex digits) is public and used for
lookup; ``secret`` is 32 random bytes in base64url.  Only HMAC-SHA256(pepper, key) is
stored.  The pepper lives outside the database (a 0600 file beside it, or
``STIGMEM_API_KEY_PEPPER``) and is versioned so that it can rotate: each stored key
remembers the pepper version that hashed it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stigmem_node.clock import Clock, parse_rfc3339
from stigmem_node.errors import ConfigError, NotFound, Unauthorized, ValidationError
from stigmem_node.store.apikeys import ApiKeyRecord, ApiKeyRepo
from stigmem_node.store.files import make_private
from stigmem_node.store.meta import MetaRepo
from stigmem_node.vocabulary import PERMISSIONS

PREFIX = "stgm"
_KEY_RE = re.compile(r"^stgm_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_TOUCH_EVERY_S = 60


class Peppers:
    """Versioned server peppers.  The newest version hashes new keys."""

    def __init__(self, versions: dict[int, bytes]) -> None:
        if not versions:
            raise ConfigError(message="no API key pepper configured")
        self.versions = versions
        self.current = max(versions)

    @classmethod
    def load(cls, path: Path, env_value: str | None, *, create: bool = True, shared: bool = False) -> Peppers:
        """From ``STIGMEM_API_KEY_PEPPER`` (``secret`` or ``1:secret,2:secret``), else the pepper file,
        created (mode 0600) with one random pepper on first use if ``create``, else required.
        An existing pepper file readable by other users is made private (0600).  ``shared``
        (a PostgreSQL node, which replicas share): never create one, as each replica would
        make its own."""
        if env_value:
            return cls(_parse_peppers(env_value, "STIGMEM_API_KEY_PEPPER"))
        if not path.exists():
            if shared:
                raise ConfigError("pepper_missing", "a node on PostgreSQL takes its API key pepper from "
                                  "STIGMEM_API_KEY_PEPPER (the same on every replica), or from an existing pepper "
                                  f"file at {path}; neither is there")
            if not create:
                raise ConfigError("pepper_missing", f"the API key pepper file {path} is missing (restore it from the "
                                                    "backup of this node, or set STIGMEM_API_KEY_PEPPER)")
            _create_pepper_file(path)
        make_private(path)
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(message=f"cannot read the API key pepper file {path}: {exc}") from None
        return cls(_parse_peppers(text, str(path)))


PEPPER_CHECK = b"stigmem-node pepper check"


def check_peppers(peppers: Peppers, meta: MetaRepo) -> None:
    """Refuse peppers that differ from those the node's keys were hashed with.

    The node keeps, per pepper version, HMAC(pepper, a constant) in ``node_meta`` (the first
    process to see a version records it).  A replica, or a restored node, started with
    another pepper under the same version is refused at start (``pepper_mismatch``) instead
    of answering 401 to every valid key.  The value reveals nothing usable: the peppers are
    256-bit random secrets."""
    for version, secret in sorted(peppers.versions.items()):
        check = hmac.new(secret, PEPPER_CHECK, hashlib.sha256).hexdigest()[:32]
        if meta.set_if_absent(f"pepper_check:{version}", check) != check:
            raise ConfigError("pepper_mismatch", f"API key pepper version {version} is not the one this node's keys "
                              "were hashed with: give every process of the node the same pepper "
                              "(STIGMEM_API_KEY_PEPPER or the pepper file)")


def _create_pepper_file(path: Path) -> None:
    """Write a first pepper atomically: a complete 0600 file appears under ``path`` or nothing
    does; when two processes race, the first link wins and both read the same pepper."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(f"1:{secrets.token_hex(32)}\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def _parse_peppers(text: str, where: str) -> dict[int, bytes]:
    items = [p.strip() for p in re.split(r"[,\n]", text) if p.strip()]
    if len(items) == 1 and ":" not in items[0]:
        items = [f"1:{items[0]}"]
    versions: dict[int, bytes] = {}
    for item in items:
        version, _, secret = item.partition(":")
        if not version.isdigit() or len(secret) < 16:
            raise ConfigError(message=f"{where}: each pepper is VERSION:SECRET with a secret of 16+ characters")
        versions[int(version)] = secret.encode("utf-8")
    return versions


@dataclass(frozen=True)
class Principal:
    """Who made an authenticated request."""

    key_id: str
    permissions: frozenset[str]

    @property
    def actor(self) -> str:
        return f"apikey:{self.key_id}"


def parse_permissions(raw: str | list[str]) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    perms = {p.strip() for p in items if p.strip()}
    if "all" in perms:
        return PERMISSIONS
    bad = sorted(perms - set(PERMISSIONS))
    if bad or not perms:
        raise ValidationError(
            "invalid_permissions",
            f"unknown permission {bad[0]!r}; choose from {', '.join(PERMISSIONS)} or all" if bad
            else "at least one permission is required",
            field="permissions",
        )
    return tuple(p for p in PERMISSIONS if p in perms)


class DeferredTouches:
    """``last_used_at`` updates waiting to be written, coalesced per key (thread-safe).

    A serving node authenticates in the read lane and must never wait for a write there:
    it queues the touch here, and a background writer (``background.write_touches``)
    stores the queued touches together, or drops them when the database is busy."""

    def __init__(self) -> None:
        self._pending: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, key_id: str, when: str) -> None:
        with self._lock:
            if len(self._pending) < 10_000:
                self._pending[key_id] = when

    def take(self) -> dict[str, str]:
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending


class ApiKeys:
    def __init__(self, repo: ApiKeyRepo, peppers: Peppers | Callable[[], Peppers], clock: Clock) -> None:
        """``peppers``: the peppers, or a function that loads them when a key is first hashed
        (so that commands which hash no key never read or create a pepper file)."""
        self.repo = repo
        self._peppers = peppers
        self.clock = clock
        self._decoy: ApiKeyRecord | None = None
        # A serving node's queue of touches (``defer_touches``); None: touch at once.
        self.touches: DeferredTouches | None = None

    def defer_touches(self, touches: DeferredTouches | None) -> None:
        """Queue ``last_used_at`` updates in ``touches`` (so that authenticating only reads),
        or write them at once again (None)."""
        self.touches = touches

    @property
    def peppers(self) -> Peppers:
        if not isinstance(self._peppers, Peppers):
            self._peppers = self._peppers()
        return self._peppers

    @property
    def decoy(self) -> ApiKeyRecord:
        """Stands in for the record of an unknown key id, so that an unknown id and a known
        one with a wrong secret do the same work (one HMAC with the real pepper, one
        constant-time comparison, the same expiry checks) and take the same time."""
        if self._decoy is None:
            self._decoy = ApiKeyRecord("", secrets.token_hex(32), self.peppers.current, (), None, "",
                                       "9999-12-31T23:59:59.999999Z", None, None)
        return self._decoy

    def _hash(self, key: str, version: int) -> str:
        data = key.encode("utf-8", "replace")
        return hmac.new(self.peppers.versions[version], data, hashlib.sha256).hexdigest()

    def create(self, permissions: tuple[str, ...], *, label: str | None = None,
               expires_at: str | None = None) -> tuple[str, ApiKeyRecord]:
        key_id = secrets.token_hex(6)
        key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        rec = ApiKeyRecord(key_id, self._hash(key, self.peppers.current), self.peppers.current,
                           tuple(permissions), label, self.clock.now_iso(), expires_at, None, None)
        self.repo.insert(rec)
        return key, rec

    def authenticate(self, key: str | None) -> Principal:
        """Return the principal, or raise ``Unauthorized`` (one code for every failure).

        Every failure takes the same path: a key whose id is unknown (or malformed, or hashed
        under a pepper version no longer configured) is checked against a decoy record, so
        that the time of a 401 does not tell whether a key id exists.
        """
        key = key or ""
        match = _KEY_RE.match(key)
        found = self.repo.get(match.group(1) if match else "")
        decoy = self.decoy
        rec = found if found is not None and found.pepper_version in self.peppers.versions else decoy
        ok = hmac.compare_digest(self._hash(key, rec.pepper_version), rec.key_hash)
        now = self.clock.now()
        live = rec.revoked_at is None and (rec.expires_at is None or parse_rfc3339(rec.expires_at) > now)
        if not (ok and live) or rec is decoy:
            raise Unauthorized("invalid_api_key", "a valid API key is required")
        if rec.last_used_at is None or (now - parse_rfc3339(rec.last_used_at)).total_seconds() > _TOUCH_EVERY_S:
            touches = self.touches
            if touches is not None:
                touches.add(rec.id, self.clock.now_iso())
            else:
                self.repo.touch(rec.id, self.clock.now_iso())
        return Principal(rec.id, frozenset(rec.permissions))

    def revoke(self, key_id: str) -> tuple[ApiKeyRecord, bool]:
        """Revoke a key by id (or by the whole key); returns the record and whether it changed."""
        key_id = key_id.split("_")[1] if key_id.startswith(PREFIX + "_") and key_id.count("_") >= 2 else key_id
        rec = self.repo.get(key_id)
        if rec is None:
            raise NotFound("api_key_not_found", f"no API key with id {key_id[:24]!r}")
        changed = self.repo.revoke(key_id, self.clock.now_iso())
        return self.repo.get(key_id), changed  # type: ignore[return-value]

    def list_keys(self) -> list[ApiKeyRecord]:
        return self.repo.list_keys()

    def count(self) -> int:
        return self.repo.count()


def key_public_dict(rec: ApiKeyRecord) -> dict[str, Any]:
    return {
        "id": rec.id, "prefix": f"{PREFIX}_{rec.id}_", "permissions": list(rec.permissions), "label": rec.label,
        "created_at": rec.created_at, "expires_at": rec.expires_at, "revoked_at": rec.revoked_at,
        "last_used_at": rec.last_used_at,
    }
