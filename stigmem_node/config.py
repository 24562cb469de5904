"""Settings: environment variables (reference-compatible names) overridden by CLI flags.

Invalid values raise ``ConfigError`` with one clear sentence; the CLI prints it and exits 2.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from stigmem_node import node_id as node_ids
from stigmem_node import node_url as node_urls
from stigmem_node.errors import ConfigError
from stigmem_node.logs import ACCESS_LOG_MODES, LOG_FORMATS
from stigmem_node.tokens import MAX_LEEWAY_MS
from stigmem_node.vocabulary import DEFAULT_SHARED_SCOPES, SCOPES

DEFAULT_PORT = 8765
DEFAULT_HOST = "127.0.0.1"
DEFAULT_DB = "stigmem.db"
REQUEST_TIMEOUT_RANGE = (0.1, 3600.0)
MAX_CONNECTIONS_RANGE = (1, 100_000)
BUSY_TIMEOUT_MS_RANGE = (0, 600_000)
LANE_RANGE = (1, 1024)
LONG_POLL_RANGE = (0, 100_000)
MAX_PULL_WAIT_S = 30  # the longest long-poll a publisher holds (new_facts.MAX_WAIT_S)  # 0: long-polls are refused


@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    db_path: Path = Path(DEFAULT_DB)
    database_url: str | None = None  # postgresql://...: PostgreSQL instead of the SQLite file
    db_pool_size: int = 20  # PostgreSQL: most connections one process opens
    node_url: str | None = None  # None: http://host:port
    node_id: str | None = None  # None: generated on first start
    synchronous: str = "NORMAL"
    shared_scopes: tuple[str, ...] = DEFAULT_SHARED_SCOPES
    clock_leeway_s: int = 30
    declaration_max_age_s: int = 7 * 24 * 3600
    allow_insecure_http: bool = False
    outbound_timeout_s: float = 5.0
    pepper: str | None = None
    pull_interval_s: float = 0.0  # 0: no in-server schedule
    pull_wait_s: int = 25  # with a schedule, follow each peer with long-polls of this many seconds (0: off)
    notify_peers: bool = False  # after new facts commit, notify the peers that may read them (serve)
    trusted_proxies: str | None = None  # addresses whose X-Forwarded-For is believed
    federate_instructions: bool = False
    auth_window_s: float = 60.0  # window of the per-address failure limits and audit budget
    audit_checkpoint_rows: int = 1000  # a signed audit checkpoint at least every this many rows
    audit_checkpoint_interval_s: float = 3600.0  # and (serving) when a row has waited this long unsealed
    pull_concurrency: int = 4
    check_workers: int | None = None  # processes checking pulled pages (None: one a core, up to 4; 0: none)
    pull_timeout_s: float = 10.0
    pull_attempts: int = 4
    pull_backoff_s: float = 0.5
    log_level: str = "info"
    log_format: str = "text"  # text or json (stigmem_node.logs)
    access_log: str = "errors"  # off, errors (status 400 and above) or all (serve)
    request_timeout_s: float = 30.0  # the whole request must arrive within this (serve)
    max_connections: int = 1000  # open connections beyond this get 503 server_busy (serve)
    db_busy_timeout_ms: int = 10_000  # a write waits this long for the database's write lock, then 503
    read_lane_threads: int = 32  # worker threads for storage reads (stigmem_node.offload)
    write_lane_threads: int = 16  # worker threads for storage writes
    long_poll_max: int = 1000  # pull requests waiting for new facts (wait=S), in all (serve)
    long_poll_per_peer: int = 4  # and per peer
    metrics_allow: str | None = None  # addresses (IPs, CIDRs) that may read /metrics without a key

    @property
    def public_url(self) -> str:
        return self.node_url or f"http://{_url_host(self.host)}:{self.port}"

    @property
    def database(self) -> Path | str:
        """Where the node's state lives: the PostgreSQL URL, or else the SQLite file."""
        return self.database_url or self.db_path

    @property
    def database_label(self) -> str:
        """``database`` for messages: a URL without its password."""
        return redact_url(self.database_url) if self.database_url else str(self.db_path)

    @property
    def pepper_path(self) -> Path:
        return self.db_path.with_name(self.db_path.name + ".pepper")

    def with_overrides(self, **overrides: Any) -> Settings:
        clean = {k: v for k, v in overrides.items() if v is not None}
        return validate(replace(self, **clean))


def redact_url(url: str) -> str:
    """A database URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not (sep and at and ":" in userinfo):
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _int(name: str, raw: str, lo: int, hi: int) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(message=f"{name} must be a whole number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(message=f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _float(name: str, raw: str, lo: float, hi: float) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(message=f"{name} must be a number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(message=f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(message=f"{name} must be true or false, got {raw!r}")


def parse_scopes(raw: str | list[str] | tuple[str, ...], name: str = "scopes") -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    scopes = sorted({s.strip() for s in items if s.strip()})
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ConfigError(message=f"{name}: unknown scope {bad[0]!r} (allowed: {', '.join(SCOPES)})")
    return tuple(scopes)


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    kw: dict[str, Any] = {}
    if env.get("STIGMEM_HOST"):
        kw["host"] = env["STIGMEM_HOST"]
    if env.get("STIGMEM_PORT"):
        kw["port"] = _int("STIGMEM_PORT", env["STIGMEM_PORT"], 1, 65535)
    if env.get("STIGMEM_DB_PATH"):
        kw["db_path"] = Path(env["STIGMEM_DB_PATH"])
    if env.get("STIGMEM_DATABASE_URL"):
        kw["database_url"] = env["STIGMEM_DATABASE_URL"]
    if env.get("STIGMEM_DB_POOL_SIZE"):
        kw["db_pool_size"] = _int("STIGMEM_DB_POOL_SIZE", env["STIGMEM_DB_POOL_SIZE"], 2, 1000)
    if env.get("STIGMEM_NODE_URL"):
        kw["node_url"] = env["STIGMEM_NODE_URL"]
    if env.get("STIGMEM_NODE_ID"):
        kw["node_id"] = env["STIGMEM_NODE_ID"]
    if env.get("STIGMEM_SQLITE_SYNCHRONOUS"):
        kw["synchronous"] = env["STIGMEM_SQLITE_SYNCHRONOUS"]
    if env.get("STIGMEM_FEDERATION_SCOPES"):
        kw["shared_scopes"] = parse_scopes(env["STIGMEM_FEDERATION_SCOPES"], "STIGMEM_FEDERATION_SCOPES")
        if "local" in kw["shared_scopes"]:
            raise ConfigError(message="STIGMEM_FEDERATION_SCOPES: local facts never leave the node; remove 'local'")
    if env.get("STIGMEM_PEER_TOKEN_LEEWAY_S"):
        kw["clock_leeway_s"] = _int("STIGMEM_PEER_TOKEN_LEEWAY_S", env["STIGMEM_PEER_TOKEN_LEEWAY_S"], 0,
                                    MAX_LEEWAY_MS // 1000)
    if env.get("STIGMEM_ALLOW_INSECURE_HTTP"):
        kw["allow_insecure_http"] = _bool("STIGMEM_ALLOW_INSECURE_HTTP", env["STIGMEM_ALLOW_INSECURE_HTTP"])
    if env.get("STIGMEM_OUTBOUND_TIMEOUT_S"):
        kw["outbound_timeout_s"] = _float("STIGMEM_OUTBOUND_TIMEOUT_S", env["STIGMEM_OUTBOUND_TIMEOUT_S"], 0.1, 300)
    if env.get("STIGMEM_API_KEY_PEPPER"):
        kw["pepper"] = env["STIGMEM_API_KEY_PEPPER"]
    if env.get("STIGMEM_FEDERATION_PULL_INTERVAL_S"):
        kw["pull_interval_s"] = _float(
            "STIGMEM_FEDERATION_PULL_INTERVAL_S", env["STIGMEM_FEDERATION_PULL_INTERVAL_S"], 0, 86400
        )
    if env.get("STIGMEM_PULL_WAIT_S"):
        kw["pull_wait_s"] = _int("STIGMEM_PULL_WAIT_S", env["STIGMEM_PULL_WAIT_S"], 0, MAX_PULL_WAIT_S)
    if env.get("STIGMEM_DECLARATION_MAX_AGE_S"):
        kw["declaration_max_age_s"] = _int("STIGMEM_DECLARATION_MAX_AGE_S", env["STIGMEM_DECLARATION_MAX_AGE_S"],
                                           60, 365 * 24 * 3600)
    if env.get("STIGMEM_NOTIFY_PEERS"):
        kw["notify_peers"] = _bool("STIGMEM_NOTIFY_PEERS", env["STIGMEM_NOTIFY_PEERS"])
    if env.get("STIGMEM_FEDERATE_INSTRUCTIONS"):
        kw["federate_instructions"] = _bool("STIGMEM_FEDERATE_INSTRUCTIONS", env["STIGMEM_FEDERATE_INSTRUCTIONS"])
    if env.get("STIGMEM_AUTH_WINDOW_S"):
        kw["auth_window_s"] = _float("STIGMEM_AUTH_WINDOW_S", env["STIGMEM_AUTH_WINDOW_S"], 1, 3600)
    if env.get("STIGMEM_AUDIT_CHECKPOINT_ROWS"):
        kw["audit_checkpoint_rows"] = _int("STIGMEM_AUDIT_CHECKPOINT_ROWS", env["STIGMEM_AUDIT_CHECKPOINT_ROWS"],
                                           1, 1_000_000)
    if env.get("STIGMEM_AUDIT_CHECKPOINT_INTERVAL_S"):
        kw["audit_checkpoint_interval_s"] = _float("STIGMEM_AUDIT_CHECKPOINT_INTERVAL_S",
                                                   env["STIGMEM_AUDIT_CHECKPOINT_INTERVAL_S"], 1, 86400)
    if env.get("STIGMEM_PULL_CONCURRENCY"):
        kw["pull_concurrency"] = _int("STIGMEM_PULL_CONCURRENCY", env["STIGMEM_PULL_CONCURRENCY"], 1, 64)
    if env.get("STIGMEM_CHECK_WORKERS"):
        kw["check_workers"] = _int("STIGMEM_CHECK_WORKERS", env["STIGMEM_CHECK_WORKERS"], 0, 64)
    if env.get("STIGMEM_PULL_TIMEOUT_S"):
        kw["pull_timeout_s"] = _float("STIGMEM_PULL_TIMEOUT_S", env["STIGMEM_PULL_TIMEOUT_S"], 0.1, 600)
    if env.get("STIGMEM_PULL_ATTEMPTS"):
        kw["pull_attempts"] = _int("STIGMEM_PULL_ATTEMPTS", env["STIGMEM_PULL_ATTEMPTS"], 1, 20)
    if env.get("STIGMEM_PULL_BACKOFF_S"):
        kw["pull_backoff_s"] = _float("STIGMEM_PULL_BACKOFF_S", env["STIGMEM_PULL_BACKOFF_S"], 0, 60)
    if env.get("STIGMEM_TRUSTED_PROXIES"):
        kw["trusted_proxies"] = env["STIGMEM_TRUSTED_PROXIES"]
    if env.get("STIGMEM_REQUEST_TIMEOUT_S"):
        kw["request_timeout_s"] = _float("STIGMEM_REQUEST_TIMEOUT_S", env["STIGMEM_REQUEST_TIMEOUT_S"],
                                         *REQUEST_TIMEOUT_RANGE)
    if env.get("STIGMEM_MAX_CONNECTIONS"):
        kw["max_connections"] = _int("STIGMEM_MAX_CONNECTIONS", env["STIGMEM_MAX_CONNECTIONS"], *MAX_CONNECTIONS_RANGE)
    if env.get("STIGMEM_DB_BUSY_TIMEOUT_MS"):
        kw["db_busy_timeout_ms"] = _int("STIGMEM_DB_BUSY_TIMEOUT_MS", env["STIGMEM_DB_BUSY_TIMEOUT_MS"],
                                        *BUSY_TIMEOUT_MS_RANGE)
    if env.get("STIGMEM_READ_LANE_THREADS"):
        kw["read_lane_threads"] = _int("STIGMEM_READ_LANE_THREADS", env["STIGMEM_READ_LANE_THREADS"], *LANE_RANGE)
    if env.get("STIGMEM_WRITE_LANE_THREADS"):
        kw["write_lane_threads"] = _int("STIGMEM_WRITE_LANE_THREADS", env["STIGMEM_WRITE_LANE_THREADS"], *LANE_RANGE)
    if env.get("STIGMEM_LONG_POLL_MAX"):
        kw["long_poll_max"] = _int("STIGMEM_LONG_POLL_MAX", env["STIGMEM_LONG_POLL_MAX"], *LONG_POLL_RANGE)
    if env.get("STIGMEM_LONG_POLL_PER_PEER"):
        kw["long_poll_per_peer"] = _int("STIGMEM_LONG_POLL_PER_PEER", env["STIGMEM_LONG_POLL_PER_PEER"],
                                        *LONG_POLL_RANGE)
    if env.get("STIGMEM_METRICS_ALLOW"):
        kw["metrics_allow"] = env["STIGMEM_METRICS_ALLOW"]
    if env.get("STIGMEM_LOG_LEVEL"):
        kw["log_level"] = env["STIGMEM_LOG_LEVEL"]
    if env.get("STIGMEM_LOG_FORMAT"):
        kw["log_format"] = env["STIGMEM_LOG_FORMAT"]
    if env.get("STIGMEM_ACCESS_LOG"):
        kw["access_log"] = env["STIGMEM_ACCESS_LOG"]
    return validate(Settings(**kw))


def validate(s: Settings) -> Settings:
    if not s.host or any(c.isspace() for c in s.host):
        raise ConfigError(message=f"host must be a host name or address, got {s.host!r}")
    if not isinstance(s.port, int) or not 1 <= s.port <= 65535:
        raise ConfigError(message=f"port must be between 1 and 65535, got {s.port!r}")
    if s.node_url is not None:
        try:
            object.__setattr__(s, "node_url", str(node_urls.parse(s.node_url)))
        except node_urls.InvalidNodeUrl as exc:
            raise ConfigError("invalid_node_url", f"STIGMEM_NODE_URL / --node-url: {exc.message}") from None
    else:
        try:
            node_urls.parse(s.public_url)
        except node_urls.InvalidNodeUrl as exc:
            raise ConfigError("invalid_node_url", f"the host {s.host!r} gives no valid node URL ({exc.message}); "
                                                  "set STIGMEM_NODE_URL / --node-url") from None
    if s.node_id is not None:
        try:
            node_ids.check(s.node_id)
        except node_ids.InvalidNodeId as exc:
            raise ConfigError("invalid_node_id", f"STIGMEM_NODE_ID: {exc.message}") from None
    if s.database_url is not None and not s.database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("invalid_database_url", "STIGMEM_DATABASE_URL / --database-url must be a "
                          f"postgresql:// URL, got {redact_url(s.database_url)[:80]!r}")
    sync = s.synchronous.upper()
    if sync not in ("NORMAL", "FULL"):
        raise ConfigError(message=f"SQLite synchronous mode must be NORMAL or FULL, got {s.synchronous!r}")
    object.__setattr__(s, "synchronous", sync)
    parent = s.db_path.expanduser().resolve().parent
    try:
        is_dir = parent.is_dir()
    except OSError as exc:
        raise ConfigError(message=f"database directory cannot be read: {parent} ({exc.strerror})") from None
    if not is_dir:
        raise ConfigError(message=f"database directory does not exist: {parent}")
    if s.trusted_proxies is not None:
        for item in (x.strip() for x in s.trusted_proxies.split(",")):
            try:
                item == "*" or ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(message=f"trusted proxies: {item!r} is not an IP address or network (or *)") from None
    if s.metrics_allow is not None:
        for item in (x.strip() for x in s.metrics_allow.split(",")):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(message=f"STIGMEM_METRICS_ALLOW: {item!r} is not an IP address or network") from None
    if not (isinstance(s.pull_wait_s, int) and 0 <= s.pull_wait_s <= MAX_PULL_WAIT_S):
        raise ConfigError(message=f"pull wait must be between 0 and {MAX_PULL_WAIT_S} seconds, got {s.pull_wait_s!r}")
    if not 0 <= s.pull_interval_s <= 86400:
        raise ConfigError(message=f"pull interval must be between 0 and 86400 seconds, got {s.pull_interval_s:g}")
    lo, hi = REQUEST_TIMEOUT_RANGE
    if not (isinstance(s.request_timeout_s, (int, float)) and lo <= s.request_timeout_s <= hi):
        raise ConfigError(message=f"request timeout must be between {lo:g} and {hi:g} seconds, "
                                  f"got {s.request_timeout_s!r}")
    lo, hi = MAX_CONNECTIONS_RANGE
    if not (isinstance(s.max_connections, int) and lo <= s.max_connections <= hi):
        raise ConfigError(message=f"max connections must be between {lo} and {hi}, got {s.max_connections!r}")
    for name, value, (lo, hi) in (("database busy timeout (ms)", s.db_busy_timeout_ms, BUSY_TIMEOUT_MS_RANGE),
                                  ("read lane threads", s.read_lane_threads, LANE_RANGE),
                                  ("write lane threads", s.write_lane_threads, LANE_RANGE),
                                  ("long-poll maximum", s.long_poll_max, LONG_POLL_RANGE),
                                  ("long-poll maximum per peer", s.long_poll_per_peer, LONG_POLL_RANGE)):
        if not (isinstance(value, int) and lo <= value <= hi):
            raise ConfigError(message=f"{name} must be between {lo} and {hi}, got {value!r}")
    if s.log_level.lower() not in ("critical", "error", "warning", "info", "debug"):
        raise ConfigError(
            message=f"log level must be one of critical, error, warning, info, debug; got {s.log_level!r}")
    if s.log_format not in LOG_FORMATS:
        raise ConfigError(message=f"log format (STIGMEM_LOG_FORMAT) must be text or json; got {s.log_format!r}")
    if s.access_log not in ACCESS_LOG_MODES:
        raise ConfigError(message=f"access log (STIGMEM_ACCESS_LOG) must be off, errors or all; got {s.access_log!r}")
    return s
