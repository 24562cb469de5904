"""Outbound HTTP to other nodes: every request this node sends goes through ``fetch`` (GETs)
or ``post`` (notifications).

The guard rails live here and only here:

- URLs are parsed strictly (``stigmem_node.node_url``): http(s), a valid host and port, no
  userinfo; plain http is refused to anything but a loopback host unless the operator allows it;
- one deadline bounds the whole exchange (redirects and a slowly trickled body included);
- redirects are followed only to the same scheme, host and port, at most ``max_redirects``
  times (an unparsable ``Location`` is refused like any other);
- the body is never decoded: requests say ``Accept-Encoding: identity``, a 200 answer with
  any other ``Content-Encoding`` is refused (``unexpected_content_encoding``) before its body
  is read, and the raw bytes are read in chunks against the size cap, so what is counted is
  what is kept in memory (a small compressed body cannot inflate behind the cap's back);
- the environment's proxy settings are ignored.

``Outbound`` is that module configured once by the node (its timeout, whether plain http is
allowed, and the transport every client it makes uses), and handed to the use cases that
fetch: the peer registry (well-known documents) and the subscriber (pages).  A test passes
another transport (``httpx.MockTransport``, ``httpx.ASGITransport``) to reach an app in process.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin

import httpx

from stigmem_node import node_url as node_urls
from stigmem_node.config import is_loopback_host
from stigmem_node.errors import OutboundError

MAX_REDIRECTS = 3
WELL_KNOWN_MAX_BYTES = 64 * 1024
ERROR_BODY_MAX_BYTES = 4096  # of a non-200 answer, kept for its error code only
IDENTITY = "identity"


@dataclass(frozen=True)
class Answer:
    """A response as ``fetch`` returns it: the body is complete for a 200, at most
    ``ERROR_BODY_MAX_BYTES`` (or empty, if encoded) otherwise, and empty for a redirect."""

    url: str
    status: int
    headers: httpx.Headers
    body: bytes


def new_client(*, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None,
               limits: httpx.Limits | None = None) -> httpx.AsyncClient:
    """An HTTP client for ``fetch``: no automatic redirects, no proxies from the environment."""
    return httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False, transport=transport,
                             limits=limits or httpx.Limits(), headers={"Accept-Encoding": IDENTITY},
                             event_hooks={"response": [_judge_location]})


async def _judge_location(response: httpx.Response) -> None:
    """httpx parses a redirect's ``Location`` even when it does not follow it, and fails with a
    bare protocol error on one it cannot parse: judge it first, so the reason is clear."""
    if response.is_redirect:
        _redirect_target(str(response.request.url), response.headers["location"], None)


def check_url(url: str, *, allow_insecure_http: bool) -> tuple[node_urls.NodeUrl, str]:
    """Parse an absolute URL to fetch: (its origin, the URL to request).  Raises ``OutboundError``."""
    try:
        origin, target = node_urls.parse_target(url)
    except node_urls.InvalidNodeUrl as exc:
        raise OutboundError("invalid_peer_url", exc.message) from None
    if origin.scheme == "http" and not allow_insecure_http and not is_loopback_host(origin.host):
        raise OutboundError(
            "insecure_peer_url",
            "plain http to a non-loopback host is refused (use https, or allow insecure http explicitly)",
        )
    return origin, target


def node_base(node_url: str) -> node_urls.NodeUrl:
    """A peer's node URL, parsed strictly.  Raises ``OutboundError`` (``invalid_peer_url``)."""
    try:
        return node_urls.parse(node_url)
    except node_urls.InvalidNodeUrl as exc:
        raise OutboundError("invalid_peer_url", exc.message) from None


def _unexpected_encoding(headers: httpx.Headers) -> str | None:
    """The ``Content-Encoding`` of an answer if it is anything but absent or identity."""
    values = [v.strip().lower() for v in headers.get_list("content-encoding", split_commas=True)]
    return None if all(v in ("", IDENTITY) for v in values) else ", ".join(values)


async def _read(resp: httpx.Response, limit: int, *, url: str, truncate: bool = False) -> bytes:
    declared = resp.headers.get("content-length")
    if not truncate and declared and declared.isdigit() and int(declared) > limit:
        raise OutboundError("response_too_large", f"{url} answered more than {limit} bytes")
    body = bytearray()
    async for chunk in resp.aiter_raw():
        body += chunk
        if len(body) > limit:
            if truncate:
                return bytes(body[:limit])
            raise OutboundError("response_too_large", f"{url} answered more than {limit} bytes")
    return bytes(body)


async def fetch(url: str, *, timeout_s: float, max_bytes: int, allow_insecure_http: bool,
                client: httpx.AsyncClient | None = None, headers: dict[str, str] | None = None,
                max_redirects: int = MAX_REDIRECTS) -> Answer:
    """GET ``url`` within the guard rails above.  Raises ``OutboundError``:

    ``invalid_peer_url``, ``insecure_peer_url``, ``redirect_refused``, ``fetch_timeout``,
    ``fetch_failed`` (the connection failed; ``cause`` names the exception type),
    ``unexpected_content_encoding``, ``response_too_large``.  Any other status is returned;
    with ``max_redirects=0`` a redirect is returned too (never followed), otherwise one
    redirect too many is ``redirect_refused``.
    """
    return await _exchange("GET", url, None, timeout_s=timeout_s, max_bytes=max_bytes,
                           allow_insecure_http=allow_insecure_http, client=client, headers=headers,
                           max_redirects=max_redirects)


async def post(url: str, content: bytes, *, timeout_s: float, allow_insecure_http: bool,
               client: httpx.AsyncClient | None = None, headers: dict[str, str] | None = None) -> Answer:
    """POST ``content`` to ``url`` within the guard rails above; a redirect is never followed
    (it is returned), and the answer's body is kept up to ``ERROR_BODY_MAX_BYTES`` whatever its
    status.  Raises ``OutboundError`` as ``fetch`` does."""
    return await _exchange("POST", url, content, timeout_s=timeout_s, max_bytes=ERROR_BODY_MAX_BYTES,
                           allow_insecure_http=allow_insecure_http, client=client, headers=headers, max_redirects=0)


async def _exchange(method: str, url: str, content: bytes | None, *, timeout_s: float, max_bytes: int,
                    allow_insecure_http: bool, client: httpx.AsyncClient | None, headers: dict[str, str] | None,
                    max_redirects: int) -> Answer:
    origin, target = check_url(url, allow_insecure_http=allow_insecure_http)
    own = client is None
    http = client or new_client(timeout_s=timeout_s)
    sent = {**(headers or {}), "Accept-Encoding": IDENTITY}
    try:
        async with asyncio.timeout(timeout_s):
            return await _fetch(http, origin, target, sent, timeout_s, max_bytes, max_redirects,
                                method=method, content=content)
    except TimeoutError:
        raise OutboundError("fetch_timeout", f"{target} did not answer within {timeout_s:g} s") from None
    finally:
        if own:
            await http.aclose()


async def _fetch(http: httpx.AsyncClient, origin: node_urls.NodeUrl, target: str, headers: dict[str, str],
                 timeout_s: float, max_bytes: int, max_redirects: int, *, method: str = "GET",
                 content: bytes | None = None) -> Answer:
    current = target
    for hop in range(max_redirects + 1):
        try:
            async with http.stream(method, current, headers=headers, content=content, timeout=timeout_s) as resp:
                if resp.is_redirect:
                    if hop < max_redirects:
                        current = _redirect_target(current, resp.headers["location"], origin)
                        continue
                    if max_redirects:
                        raise OutboundError("redirect_refused", "too many redirects")
                    return Answer(current, resp.status_code, resp.headers, b"")
                encoding = _unexpected_encoding(resp.headers)
                if resp.status_code != 200 or method != "GET":
                    body = b"" if encoding else await _read(resp, ERROR_BODY_MAX_BYTES, url=current, truncate=True)
                    return Answer(current, resp.status_code, resp.headers, body)
                if encoding:
                    raise OutboundError("unexpected_content_encoding",
                                        f"{current} answered with Content-Encoding {encoding[:60]!a}; "
                                        "only identity was asked for")
                return Answer(current, 200, resp.headers, await _read(resp, max_bytes, url=current))
        except httpx.TimeoutException:
            raise OutboundError("fetch_timeout", f"{current} did not answer within {timeout_s:g} s") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise OutboundError("fetch_failed", f"cannot reach {current}: {type(exc).__name__}",
                                cause=type(exc).__name__) from None
    raise AssertionError("unreachable: the last hop returns or raises")  # pragma: no cover


def _redirect_target(current: str, location: str, origin: node_urls.NodeUrl | None) -> str:
    """The URL a redirect from ``current`` leads to, if it parses strictly and (when ``origin``
    is given) stays on that origin.  Raises ``OutboundError`` (``redirect_refused``)."""
    try:
        joined = urljoin(current, location)
    except ValueError:
        raise OutboundError("redirect_refused", "the peer redirected to an unparsable URL") from None
    try:
        target_origin, target = node_urls.parse_target(joined)
    except node_urls.InvalidNodeUrl as exc:
        raise OutboundError("redirect_refused", f"the peer redirected to an invalid URL: {exc.message}") from None
    if origin is not None and target_origin.origin != origin.origin:
        raise OutboundError("redirect_refused", "the peer redirected to another host")
    return target


async def get_json(url: str, *, timeout_s: float, max_bytes: int, allow_insecure_http: bool,
                   client: httpx.AsyncClient | None = None) -> Any:
    """GET a JSON document with the guard rails above.  Raises ``OutboundError``."""
    answer = await fetch(url, timeout_s=timeout_s, max_bytes=max_bytes, allow_insecure_http=allow_insecure_http,
                         client=client, headers={"Accept": "application/json"})
    if answer.status != 200:
        raise OutboundError("fetch_failed", f"{answer.url} answered HTTP {answer.status}")
    try:
        return json.loads(answer.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise OutboundError("invalid_response", f"{answer.url} did not answer JSON") from None


async def fetch_well_known(node_url: str, *, timeout_s: float, allow_insecure_http: bool,
                           client: httpx.AsyncClient | None = None) -> dict[str, Any]:
    url = node_base(node_url).join("/.well-known/stigmem")
    doc = await get_json(url, timeout_s=timeout_s, max_bytes=WELL_KNOWN_MAX_BYTES,
                         allow_insecure_http=allow_insecure_http, client=client)
    if not isinstance(doc, dict):
        raise OutboundError("invalid_response", "the well-known document is not a JSON object")
    return doc


@dataclass(frozen=True)
class Outbound:
    """The guard rails above, configured once: the default timeout, whether plain http to a
    non-loopback host is allowed, and the transport of every client made here (None: the
    network)."""

    timeout_s: float
    allow_insecure_http: bool
    transport: httpx.AsyncBaseTransport | None = None

    def client(self, *, timeout_s: float | None = None, limits: httpx.Limits | None = None) -> httpx.AsyncClient:
        """A client for ``fetch`` (close it, or use it in ``async with``)."""
        return new_client(timeout_s=self.timeout_s if timeout_s is None else timeout_s, transport=self.transport,
                          limits=limits)

    def check_url(self, url: str) -> tuple[node_urls.NodeUrl, str]:
        """``check_url`` with this node's setting for plain http."""
        return check_url(url, allow_insecure_http=self.allow_insecure_http)

    async def fetch(self, url: str, *, client: httpx.AsyncClient, max_bytes: int, timeout_s: float | None = None,
                    headers: dict[str, str] | None = None, max_redirects: int = MAX_REDIRECTS) -> Answer:
        """``fetch`` with this node's settings, on ``client`` (one of ``self.client()``)."""
        return await fetch(url, timeout_s=self.timeout_s if timeout_s is None else timeout_s, max_bytes=max_bytes,
                           allow_insecure_http=self.allow_insecure_http, client=client, headers=headers,
                           max_redirects=max_redirects)

    async def post(self, url: str, content: bytes, *, client: httpx.AsyncClient,
                   headers: dict[str, str] | None = None) -> Answer:
        """``post`` with this node's settings, on ``client`` (one of ``self.client()``)."""
        return await post(url, content, timeout_s=self.timeout_s, allow_insecure_http=self.allow_insecure_http,
                          client=client, headers=headers)

    async def fetch_well_known(self, node_url: str) -> dict[str, Any]:
        """A node's ``/.well-known/stigmem`` document (a JSON object).  Raises ``OutboundError``."""
        async with self.client() as client:
            return await fetch_well_known(node_url, timeout_s=self.timeout_s,
                                          allow_insecure_http=self.allow_insecure_http, client=client)


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP-date (RFC 9110)."""
    if not value or len(value) > 64:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_code_of(body: bytes) -> str | None:
    """The error code of another node's JSON error answer (``error``, else the reference's
    ``detail``), at most 80 characters; None if it has none."""
    try:
        obj = json.loads(body[:4096])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    code = obj.get("error") or obj.get("detail") if isinstance(obj, dict) else None
    return code[:80] if isinstance(code, str) else None
