"""Who the client is, by address: the peer, or what trusted proxies say it is.

``X-Forwarded-For`` and ``Forwarded`` are only believed when the peer is one of
``COE_SERVER__TRUSTED_PROXIES``; anyone else could put any address there. Through a chain
of trusted proxies the client is the right-most address that is not one of them (each
proxy appends the address it saw, so earlier entries are the client's own word).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from fastapi import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(text: str) -> Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # Forwarded: for="[2001:db8::1]:4711"
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # 192.0.2.1:4711
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _forwarded_chain(request: Request) -> list[str]:
    """The addresses the proxies reported, oldest first (both headers, as sent)."""
    chain: list[str] = []
    for value in request.headers.getlist("forwarded"):
        for element in value.split(","):
            for pair in element.split(";"):
                name, _, addr = pair.strip().partition("=")
                if name.lower() == "for":
                    chain.append(addr)
    for value in request.headers.getlist("x-forwarded-for"):
        chain.extend(value.split(","))
    return chain


def client_address(request: Request, trusted: Sequence[Network]) -> str:
    """The client's address as text ("unknown" when the server did not say)."""
    peer = _parse(request.client.host) if request.client else None
    if peer is None:
        return request.client.host if request.client else "unknown"
    if not trusted or not any(peer in net for net in trusted):
        return str(peer)
    for text in reversed(_forwarded_chain(request)):
        hop = _parse(text)
        if hop is None:
            break  # garbage from here on: the last trusted hop's word is all we have
        if not any(hop in net for net in trusted):
            return str(hop)
        peer = hop
    return str(peer)
