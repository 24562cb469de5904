"""Outbound HTTP to other nodes, with the same guard rails everywhere.

- a timeout on every request and a cap on the response size (read in chunks);
- redirects are followed only to the same scheme, host and port, at most 3 times;
- plain http is refused to anything but a loopback host unless the operator allows it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from stigmem_node.config import is_loopback_host
from stigmem_node.errors import OutboundError

MAX_REDIRECTS = 3
WELL_KNOWN_MAX_BYTES = 64 * 1024


def check_url(url: str, *, allow_insecure_http: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutboundError("invalid_peer_url", f"not an http(s) URL: {url[:200]!r}")
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback_host(parts.hostname):
        raise OutboundError(
            "insecure_peer_url",
            "plain http to a non-loopback host is refused (use https, or allow insecure http explicitly)",
        )


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urlsplit(url)
    return p.scheme, (p.hostname or "").lower(), p.port or (443 if p.scheme == "https" else 80)


async def get_json(url: str, *, timeout_s: float, max_bytes: int, allow_insecure_http: bool,
                   client: httpx.AsyncClient | None = None) -> Any:
    """GET a JSON document with the guard rails above.  Raises ``OutboundError``.

    ``timeout_s`` bounds the whole fetch (redirects and a slowly trickled body included),
    not only each network read.
    """
    check_url(url, allow_insecure_http=allow_insecure_http)
    try:
        async with asyncio.timeout(timeout_s):
            return await _get_json(url, timeout_s=timeout_s, max_bytes=max_bytes, client=client)
    except TimeoutError:
        raise OutboundError("fetch_timeout", f"{url} did not answer within {timeout_s:g} s") from None


async def _get_json(url: str, *, timeout_s: float, max_bytes: int, client: httpx.AsyncClient | None) -> Any:
    own = client is None
    client = client or httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False)
    try:
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with client.stream("GET", current, headers={"Accept": "application/json"},
                                         timeout=timeout_s) as resp:
                    if resp.is_redirect:
                        target = urljoin(current, resp.headers.get("location", ""))
                        if _origin(target) != _origin(url):
                            raise OutboundError("redirect_refused", "the peer redirected to another host")
                        current = target
                        continue
                    if resp.status_code != 200:
                        raise OutboundError("fetch_failed", f"{current} answered HTTP {resp.status_code}")
                    declared = resp.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > max_bytes:
                        raise OutboundError("response_too_large", f"{current} answered more than {max_bytes} bytes")
                    body = bytearray()
                    async for chunk in resp.aiter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise OutboundError("response_too_large", f"{current} answered more than {max_bytes} bytes")
            except httpx.TimeoutException:
                raise OutboundError("fetch_timeout", f"{current} did not answer within {timeout_s:g} s") from None
            except httpx.HTTPError as exc:
                raise OutboundError("fetch_failed", f"cannot reach {current}: {type(exc).__name__}") from None
            try:
                return json.loads(bytes(body))
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise OutboundError("invalid_response", f"{current} did not answer JSON") from None
        raise OutboundError("redirect_refused", "too many redirects")
    finally:
        if own:
            await client.aclose()


async def fetch_well_known(node_url: str, *, timeout_s: float, allow_insecure_http: bool) -> dict[str, Any]:
    doc = await get_json(node_url.rstrip("/") + "/.well-known/stigmem", timeout_s=timeout_s,
                         max_bytes=WELL_KNOWN_MAX_BYTES, allow_insecure_http=allow_insecure_http)
    if not isinstance(doc, dict):
        raise OutboundError("invalid_response", "the well-known document is not a JSON object")
    return doc
