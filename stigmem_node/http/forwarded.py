"""Client addresses behind trusted proxies: pure ASGI middleware.

On a connection from a trusted proxy, the client address is taken from
``X-Forwarded-For``, walking the list from the right while the hop is itself trusted (as
uvicorn does).  Unlike uvicorn, every hop looked at must be an IP literal: a host name,
garbage, an empty entry, a scoped IPv6 address or an over-long list leaves the client
address at the socket address.  The address kept is the normalised text of the IP.
"""

from __future__ import annotations

import functools
import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

MAX_HOPS = 20  # hops looked at from the right; a longer chain is not believed
_MAX_IP_TEXT = 45  # the longest IPv6 text form (with an embedded IPv4 address)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IPAddress | None:
    """The IP address ``text`` spells (surrounding spaces ignored), or None."""
    text = text.strip()
    if not text or len(text) > _MAX_IP_TEXT:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if getattr(ip, "scope_id", None):
        return None
    return ip


class TrustedProxies:
    """The configured proxies: IP addresses, networks, or ``*`` (every address)."""

    def __init__(self, spec: str) -> None:
        items = [item.strip() for item in spec.split(",") if item.strip()]
        self.everyone = "*" in items
        self.networks = tuple(ipaddress.ip_network(item, strict=False) for item in items if item != "*")
        self.trusts_host = functools.lru_cache(maxsize=1024)(self._trusts_host)

    def trusts(self, ip: IPAddress) -> bool:
        return self.everyone or any(ip in net for net in self.networks)

    def _trusts_host(self, host: str) -> bool:
        ip = parse_ip(host)
        return ip is not None and self.trusts(ip)

    def client_address(self, forwarded_for: str) -> str | None:
        """The client named by ``X-Forwarded-For`` (joined values), or None to keep the socket address."""
        hops = forwarded_for.rsplit(",", MAX_HOPS)
        chosen: IPAddress | None = None
        for hop in reversed(hops):
            ip = parse_ip(hop)
            if ip is None:
                return None
            chosen = ip
            if not self.trusts(ip):
                break
        return None if chosen is None else str(chosen)


class ForwardedFor:
    """Set ``scope["client"]`` (and the scheme) from the forwarding headers of trusted proxies."""

    def __init__(self, app: ASGIApp, trusted_proxies: str) -> None:
        self.app = app
        self.proxies = TrustedProxies(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client") if scope["type"] == "http" else None
        if client and self.proxies.trusts_host(client[0]):
            forwarded: list[bytes] = []
            for name, value in scope["headers"]:
                if name == b"x-forwarded-for":
                    forwarded.append(value)
                elif name == b"x-forwarded-proto":
                    proto = value.decode("latin-1").strip().lower()
                    if proto in ("http", "https"):
                        scope["scheme"] = proto
            if forwarded:
                address = self.proxies.client_address(b",".join(forwarded).decode("latin-1"))
                if address is not None:
                    scope["client"] = (address, 0)
        await self.app(scope, receive, send)
