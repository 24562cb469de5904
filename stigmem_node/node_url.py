"""Node URLs, parsed strictly and in one place.

A node URL is the base URL of a node, as declared, configured or typed by an operator:

- scheme ``http`` or ``https`` (any case; normalised to lower case);
- a host: a DNS name in ASCII (labels of letters, digits, ``-`` and ``_``, 1-63 characters,
  not starting or ending with ``-``; the last label not numeric, so that ``127.1`` or
  ``0x7f.1`` cannot pose as a name), an IPv4 address in dotted-quad form, or an IPv6 address
  in brackets (no zone id).  Internationalised names must be given in their ``xn--`` form;
- a port from 1 to 65535, in decimal, if given;
- an optional path prefix of non-empty segments made of letters, digits and ``-._~``
  (no ``.``/``..`` segments, no percent-encoding), for a node served under a path by a
  reverse proxy.  A trailing ``/`` is dropped;
- no userinfo (``user:pass@``), no query, no fragment.

Anything else raises ``InvalidNodeUrl`` (code ``invalid_node_url``).  This module is pure:
it imports nothing from storage, configuration or HTTP.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from stigmem_node.errors import ValidationError

MAX_LEN = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}

_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)", re.S)
_BRACKETED = re.compile(r"\[(?P<host>[^\[\]]*)\](?::(?P<port>[^:]*))?")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_PORT = re.compile(r"[0-9]{1,5}")
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


class InvalidNodeUrl(ValidationError):
    code = "invalid_node_url"


@dataclass(frozen=True)
class NodeUrl:
    scheme: str  # "http" or "https"
    host: str  # lower case; an IPv6 address without its brackets
    port: int | None  # None: the scheme's default
    path: str = ""  # "" or "/segment[/segment...]", no trailing slash

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port or DEFAULT_PORTS[self.scheme]

    def join(self, path_qs: str) -> str:
        """This URL followed by ``path_qs`` (which starts with ``/``)."""
        return f"{self}{path_qs}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"


def _fail(text: Any, why: str) -> InvalidNodeUrl:
    # Shown escaped (ascii), shortened, and without any userinfo (it may hold a password).
    shown = ascii(re.sub(r"//[^/?#]*@", "//…@", text[:200])) if isinstance(text, str) else type(text).__name__
    return InvalidNodeUrl(message=f"invalid node URL {shown}: {why}", field="node_url")


def _host(text: str, raw: str) -> str:
    if not raw:
        raise _fail(text, "it has no host")
    if "[" in raw or "]" in raw:
        raise _fail(text, "brackets are only allowed around an IPv6 address")
    host = raw.lower()
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise _fail(text, "the host is not a valid IPv4 address") from None
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise _fail(text, "the host is not a valid host name (ASCII letters, digits, '-' and '_', "
                          "dot-separated labels of 1 to 63 characters)")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise _fail(text, "the host is neither a host name nor a dotted-quad IPv4 address")
    return host


def _port(text: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    if not _PORT.fullmatch(raw) or not 1 <= int(raw) <= 65535:
        raise _fail(text, "the port must be a number from 1 to 65535")
    return int(raw)


def split(text: Any) -> tuple[NodeUrl, str]:
    """The origin (scheme, host, port) of an absolute http(s) URL, and the rest of it
    (path, query and fragment, unchecked but printable ASCII).  Raises ``InvalidNodeUrl``."""
    if not isinstance(text, str):
        raise _fail(text, "it is not a string")
    if not text or len(text) > MAX_LEN:
        raise _fail(text, f"it must have 1 to {MAX_LEN} characters")
    if not all("!" <= c <= "~" for c in text):
        raise _fail(text, "it may contain only printable ASCII characters, without spaces")
    m = _URL.fullmatch(text)
    if m is None:
        raise _fail(text, "it is not an absolute URL (scheme://host)")
    scheme = m["scheme"].lower()
    if scheme not in DEFAULT_PORTS:
        raise _fail(text, "the scheme must be http or https")
    authority = m["authority"]
    if "@" in authority:
        raise _fail(text, "user names and passwords are not allowed in a node URL")
    if authority.startswith("["):
        b = _BRACKETED.fullmatch(authority)
        if b is None:
            raise _fail(text, "a bracketed IPv6 address must be closed by ']' and followed only by ':port'")
        try:
            if "%" in b["host"]:
                raise ValueError("zone id")
            host = ipaddress.IPv6Address(b["host"]).compressed
        except ValueError:
            raise _fail(text, "the host in brackets is not a valid IPv6 address (zone ids are not allowed)") from None
        return NodeUrl(scheme, host, _port(text, b["port"])), m["rest"]
    if authority.count(":") > 1:
        raise _fail(text, "an IPv6 address must be written in brackets")
    raw_host, colon, raw_port = authority.partition(":")
    return NodeUrl(scheme, _host(text, raw_host), _port(text, raw_port if colon else None)), m["rest"]


def parse(text: Any) -> NodeUrl:
    """A node URL (see the module docstring), normalised.  Raises ``InvalidNodeUrl``."""
    origin, rest = split(text)
    if "#" in rest:
        raise _fail(text, "a node URL has no fragment ('#')")
    if "?" in rest:
        raise _fail(text, "a node URL has no query ('?')")
    path = rest.rstrip("/")
    if path:
        segments = path[1:].split("/")
        if not all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments):
            raise _fail(text, "the path may only have non-empty segments of letters, digits and '-._~' "
                              "(no '.' or '..' segments, no percent-encoding)")
    return NodeUrl(origin.scheme, origin.host, origin.port, path)


def parse_target(text: Any) -> tuple[NodeUrl, str]:
    """An absolute URL to fetch: its strictly parsed origin, and the normalised URL to request
    (the fragment, which is never sent, is dropped).  Raises ``InvalidNodeUrl``."""
    origin, rest = split(text)
    rest = rest.partition("#")[0]
    if rest and not rest.startswith(("/", "?")):
        raise _fail(text, "the path must start with '/'")
    return origin, f"{origin}{rest}"
