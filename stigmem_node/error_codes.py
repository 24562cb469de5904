"""Every stable error code the node emits, in one table: where it is used, its HTTP status
and one line of meaning.  Pure: imports nothing of the node.

``status`` is the HTTP status the node answers when an error with this code ends a request;
``None`` means the code is never an HTTP answer (it is reported by the command line, the
subscriber, a registration or an audit row).  Should such an error reach the HTTP edge
anyway, the edge answers 500 and logs it, as it does for a code missing from this table.

``docs/protocol.md`` (Error codes) lists the same codes in one table per ``Use``;
``tests/test_error_codes.py`` keeps the two equal, both ways, and checks that every code
the source can raise is here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final


class Use(Enum):
    """Where a code appears; one table of docs/protocol.md's Error codes per member."""

    HTTP = "http"  # an HTTP error answer
    REGISTRATION = "registration"  # the reason of a rejected registration (201 body, audit, `peers add`)
    REPLICATION = "replication"  # a subscriber failure (`pull` output, `last_error`)
    FACT_REJECTION = "fact_rejection"  # the reason of a `fact_rejected` audit row
    OUTBOUND = "outbound"  # a failed fetch of another node's well-known
    KEY_REFRESH = "key_refresh"  # the outcome of `peers refresh`
    CLI = "cli"  # the command line only
    INTERNAL = "internal"  # raised and absorbed inside the node


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    status: int | None  # HTTP status; None: never an HTTP answer
    meaning: str
    uses: frozenset[Use]
    exit_status: int | None = None  # the command line's exit status, where the code is its outcome
    retry_after: int | None = None  # a fixed Retry-After (seconds) sent with this code


def _e(code: str, status: int | None, meaning: str, *uses: Use, exit_status: int | None = None,
       retry_after: int | None = None) -> ErrorCode:
    return ErrorCode(code, status, meaning, frozenset(uses), exit_status, retry_after)


_H, _REG, _REP, _FR, _OUT, _KR, _CLI, _INT = (Use.HTTP, Use.REGISTRATION, Use.REPLICATION, Use.FACT_REJECTION,
                                          Use.OUTBOUND, Use.KEY_REFRESH, Use.CLI, Use.INTERNAL)

_CODES: Final[tuple[ErrorCode, ...]] = (
    # -- request and authentication ----------------------------------------------------
    _e("bad_request", 400, "Content-Length is not a number, or another framework-level bad request", _H),
    _e("invalid_json", 400, "The body is missing where required, not JSON, or not UTF-8", _H),
    _e("invalid_request", 422, "The body or a query parameter has the wrong shape or range (see field)", _H),
    _e("body_too_large", 413, "The request body is over 1 MiB", _H),
    _e("request_timeout", 408, "The whole request did not arrive within the request deadline", _H),
    _e("server_busy", 503, "The node already has its maximum of open connections", _H, retry_after=1),
    _e("not_found", 404, "No such endpoint", _H),
    _e("method_not_allowed", 405, "The endpoint exists, not for this method", _H),
    _e("http_error", None, "Any other framework-level HTTP error, with the framework's status", _H),
    _e("internal_error", 500, "An unexpected failure, logged with its traceback", _H, _REP),
    _e("database_busy", 503, "Another connection held the database's write lock past the busy timeout", _H, _REP,
       retry_after=1),
    _e("database_unavailable", 503, "The database cannot be opened, read or reached (readiness, a request, "
       "a command)", _H, _REP, _CLI, exit_status=2, retry_after=1),
    _e("invalid_api_key", 401, "Missing, malformed, unknown, wrong, revoked or expired API key", _H),
    _e("permission_required", 403, "The API key lacks the endpoint's permission", _H),
    _e("too_many_failed_attempts", 429, "Too many failed authentications from this address; retry later", _H),
    _e("too_many_waiting", 429, "A long-poll pull (wait=S) beyond the bound per peer or in all; retry later", _H,
       retry_after=1),
    _e("session_required", 401, "A status page action without a live session (sign in on /status)", _H),
    _e("csrf_failed", 403, "A status page form's CSRF token is missing or wrong, or its Origin is not this node", _H),
    _e("metrics_not_allowed", 403, "GET /metrics from an address that is neither loopback nor in "
       "STIGMEM_METRICS_ALLOW, without an API key", _H),
    # -- peers -------------------------------------------------------------------------
    _e("malformed_declaration", 422, "A declaration field is missing, of the wrong type, empty or too long", _H),
    _e("invalid_node_id", 422, "Not a valid node id", _H, _CLI, exit_status=2),
    _e("invalid_node_url", 422, "Not a valid node URL", _H, _CLI, exit_status=2),
    _e("invalid_scope", 422, "An unknown scope", _H),
    _e("cannot_peer_with_self", 422, "The declaration is this node's own", _H),
    _e("no_shared_scopes", 422, "No federatable scope is both declared and allowed", _H),
    _e("peer_already_registered", 409, "A non-rejected peer with this node id exists", _H),
    _e("peer_not_found", 404, "No peer with this peer_id or node_id", _H),
    _e("invalid_fingerprint", 422, "pubkey_fingerprint is missing, not a string, or empty", _H),
    _e("fingerprint_mismatch", 400, "Not the fingerprint of the peer's key", _H),
    _e("peer_not_pending", 409, "Approval of a peer that is not pending approval", _H),
    _e("peer_status_conflict", 409, "The action is not allowed from the peer's current status", _H),
    _e("invalid_cursor", 422, "A cursor this endpoint did not return", _H),
    # -- the admin key API ---------------------------------------------------------------
    _e("permission_escalation", 403, "A key asked to create a key with a permission it does not hold", _H),
    _e("last_admin_key", 409, "Revoking the last active key holding admin:keys over HTTP", _H),
    # -- registration outcomes (a 201 whose status is rejected) ------------------------------
    _e("invalid_pubkey", None, "federation_pubkey is not a usable Ed25519 public key", _REG),
    _e("declaration_in_future", None, "signed_at is later than now + leeway", _REG),
    _e("declaration_stale", None, "signed_at is older than the maximum age", _REG),
    _e("well_known_unreachable", None, "The peer's live well-known could not be fetched", _REG, _KR, exit_status=1),
    _e("well_known_node_id_mismatch", None, "The peer's live well-known names another node", _REG, _KR, exit_status=1),
    _e("well_known_pubkey_mismatch", None, "The peer's live well-known shows another key", _REG),
    # -- peer tokens ---------------------------------------------------------------------
    _e("peer_token_required", 401, "No bearer token", _H),
    _e("malformed_token", 401, "Not a well-formed peer token", _H),
    _e("invalid_token", 401, "An algorithm other than EdDSA, a wrong typ, or a crit/b64 header", _H),
    _e("peer_not_registered", 401, "The token's (or notification's) issuer is not a registered peer", _H),
    _e("peer_not_active", 403, "The peer is not active", _H, _REP),
    _e("invalid_signature", 401, "A signature does not verify (token, notification, or declaration at "
       "registration)", _H, _REG),
    _e("invalid_sub", 401, "The token (or notification) is addressed to another node", _H),
    _e("token_expired", 401, "The token is past exp + leeway", _H),
    _e("iat_in_future", 401, "The token's iat is later than now + leeway (a notification's: now + 300 s)", _H),
    _e("token_lifetime_exceeded", 401, "The token's exp - iat is over the longest lifetime", _H),
    _e("nbf_in_future", 401, "The token's nbf is later than now + leeway", _H),
    _e("missing_nonce", 401, "The token has no nonce", _H),
    _e("token_binding_mismatch", 401, "The token's htm/htu name another method or path", _H),
    _e("nonce_already_seen", 401, "A replayed token or notification", _H),
    # -- notifications (POST /v1/federation/notify) -----------------------------------------
    _e("notification_signature_required", 401, "A notification without its Stigmem-Signature header", _H),
    _e("malformed_notification", 400, "Not a well-formed notification (body, signature or key id header)", _H),
    _e("notification_expired", 401, "The notification's iat is more than 300 s old", _H),
    # -- serving facts --------------------------------------------------------------------
    _e("scope_not_permitted", 403, "A pull of a scope outside the permitted scopes", _H),
    _e("no_permitted_scopes", 403, "No scope is both granted to the peer and shared by this node", _H),
    _e("invalid_fact", 422, "A fact, entry or origin block is malformed (see field)", _H, _FR),
    _e("internal_validation_error", 422, "Checking a fact failed unexpectedly: a bug in the node, logged; "
       "the fact was neither accepted nor judged", _H, _FR),
    _e("value_too_large", 422, "A value's text is over 256 KiB as UTF-8", _H, _FR),
    _e("batch_too_large", 422, "More than 500 facts in one request", _H),
    _e("fact_not_found", 404, "No fact with this id", _H),
    # -- erasure -----------------------------------------------------------------------------
    _e("fact_erased", 410, "The fact was erased (GET); as a fact rejection: the fact or its entity is tombstoned",
       _H, _FR),
    _e("invalid_erasure_reason", 422, "reason is not one of the erasure reasons", _H, _CLI, exit_status=2),
    _e("invalid_tombstone", None, "A wire tombstone does not parse (see field)", _INT),
    # -- replication (the subscriber) ------------------------------------------------------
    _e("peer_unreachable", None, "The connection to the peer failed, after retries", _REP),
    _e("peer_timeout", None, "A page request took longer than the pull timeout, after retries", _REP),
    _e("peer_http_429", None, "The peer answered 429 on every attempt", _REP),
    _e("peer_http_5xx", None, "The peer answered a 5xx on every attempt (peer_http_503, ...)", _REP),
    _e("peer_refused", None, "The peer gave another non-200 answer (not retried)", _REP),
    _e("invalid_page", None, "The peer's page is not a valid v2 page", _REP),
    _e("page_too_large", None, "A page over the page size cap even at limit=1", _REP),
    _e("cursor_stuck", None, "The peer said has_more without moving its cursor", _REP),
    _e("pull_failed", None, "The pass ended without a more specific result for the peer", _REP),
    # -- fact rejection reasons -------------------------------------------------------------
    _e("cid_mismatch", None, "The CID does not match the fact's content", _FR),
    _e("origin_not_sender", None, "The fact's origin is not the peer that sent it", _FR),
    _e("scope_not_granted", None, "The fact's scope was not granted, not declared by its origin, or local", _FR),
    _e("instruction_not_accepted", None, "An instruction fact while federating instructions is off", _FR),
    _e("invalid_origin_signature", None, "The origin signature fails under the peer's pinned keys", _FR),
    _e("id_collision", None, "A stored fact has this id with another CID", _FR),
    _e("valid_until_extension", None, "The fact would extend a stored valid_until", _FR),
    # -- outbound fetches ---------------------------------------------------------------------
    _e("invalid_peer_url", None, "Not a valid node URL, or not a strictly parsable http(s) URL", _OUT, _REP,
       exit_status=1),
    _e("insecure_peer_url", None, "Plain http to a non-loopback host, not allowed", _OUT, _REP, exit_status=1),
    _e("redirect_refused", None, "A redirect elsewhere, too many, or to an unparsable Location", _OUT, _REP,
       exit_status=1),
    _e("fetch_failed", None, "The connection failed, or a status other than 200", _OUT, exit_status=1),
    _e("fetch_timeout", None, "No answer within the outbound timeout", _OUT, exit_status=1),
    _e("unexpected_content_encoding", None, "A Content-Encoding other than identity", _OUT, _REP, exit_status=1),
    _e("response_too_large", None, "The document is over the size cap", _OUT, exit_status=1),
    _e("invalid_response", None, "Not JSON, or not a JSON object", _OUT, exit_status=1),
    # -- key refresh outcomes -------------------------------------------------------------------
    _e("key_rotated", None, "The peer's new key is pinned", _KR, exit_status=0),
    _e("key_unchanged", None, "The peer's well-known shows a key already pinned", _KR, exit_status=0),
    _e("rotation_not_endorsed", None, "No endorsement chain links the new key to a pinned one", _KR, exit_status=1),
    # -- command line only ----------------------------------------------------------------------
    _e("invalid_config", None, "A setting (environment variable or flag) is invalid", _CLI, exit_status=2),
    _e("database_missing", None, "No database at the path", _CLI, exit_status=2),
    _e("invalid_database_url", None, "STIGMEM_DATABASE_URL / --database-url is not a postgresql:// URL", _CLI,
       exit_status=2),
    _e("postgresql_unsupported", None, "A PostgreSQL URL, but the postgresql extra (psycopg) is not installed",
       _CLI, exit_status=2),
    _e("migration_refused", None, "migrate --to: the target is not empty, or the copy did not verify", _CLI,
       exit_status=1),
    _e("not_a_stigmem_database", None, "The file is not a node's database", _CLI, exit_status=2),
    _e("node_identity_missing", None, "A node database without node id or key", _CLI, exit_status=2),
    _e("insecure_file_mode", None, "A private file is readable by other users and cannot be made private",
       _CLI, exit_status=2),
    _e("pepper_missing", None, "No API key pepper file and no pepper in the environment", _CLI, exit_status=2),
    _e("pepper_mismatch", None, "The pepper differs from the one the node's API keys were hashed with", _CLI,
       exit_status=2),
    _e("schema_too_new", None, "The database was written by a newer version", _CLI, exit_status=2),
    _e("schema_missing", None, "The installation lacks schema.sql", _CLI, exit_status=2),
    _e("invalid_declaration_file", None, "peers add --declaration FILE cannot read JSON from FILE", _CLI,
       exit_status=2),
    _e("host_unresolvable", None, "serve: the host to listen on does not resolve", _CLI, exit_status=2),
    _e("address_unavailable", None, "serve: an address of the host cannot be listened on", _CLI, exit_status=2),
    _e("http_parser_missing", None, "serve: the HTTP parser (httptools) is not installed", _CLI, exit_status=2),
    _e("no_published_declaration", None, "peers add URL: that node publishes no declaration", _CLI, exit_status=1),
    _e("api_key_not_found", 404, "No API key with this id (apikey revoke, the admin key API)", _H, _CLI, exit_status=1),
    _e("backup_refused", None, "backup: FILE exists (without --force), is the database itself, or its directory is "
       "missing or not writable", _CLI, exit_status=2),
    _e("backup_unsupported", None, "backup of a node on PostgreSQL (use pg_dump)", _CLI, exit_status=2),
    _e("invalid_permissions", 422, "An unknown or empty permission list (apikey create, the admin key API)", _H, _CLI,
       exit_status=1),
    _e("usage_error", None, "A command line that does not parse: unknown option, missing argument, ...", _CLI,
       exit_status=2),
    _e("interrupted", None, "The command was interrupted (Ctrl-C)", _CLI, exit_status=130),
    # -- internal -----------------------------------------------------------------------------------
    _e("invalid_hlc", None, "A remote HLC does not parse (absorbed by the subscriber)", _INT),
    _e("hlc_skew", None, "A remote HLC is too far ahead of the wall clock (absorbed by the subscriber)", _INT),
)

REGISTRY: Final[dict[str, ErrorCode]] = {e.code: e for e in _CODES}
if len(REGISTRY) != len(_CODES):  # pragma: no cover - a duplicate in the table above
    raise AssertionError("duplicate error code in the registry")

# The subscriber reports any 5xx as peer_http_<status>: one entry stands for them all.
_PEER_HTTP_5XX = re.compile(r"peer_http_5[0-9][0-9]")


def lookup(code: str) -> ErrorCode | None:
    """The registry's entry for ``code``, or None for a code the node does not define."""
    entry = REGISTRY.get(code)
    if entry is None and _PEER_HTTP_5XX.fullmatch(code):
        return REGISTRY["peer_http_5xx"]
    return entry


def http_status(code: str) -> int:
    """The HTTP status of a code the edges answer with themselves (KeyError otherwise)."""
    status = REGISTRY[code].status
    if status is None:
        raise KeyError(f"{code} is not an HTTP error code")
    return status
