"""Which peers a TURN allocation may relay to (the CVE-2020-26262 class).

By default no loopback, private (RFC 1918, RFC 6598, IPv6 ULA), link-local,
multicast, broadcast, reserved or unspecified address is a valid peer.
``allow`` CIDRs open ranges again, for tests and private deployments.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

DEFAULT_DENY = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8",  # unspecified / "this network"
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # RFC 6598 (carrier-grade NAT)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local
    "172.16.0.0/12",  # RFC 1918
    "192.0.0.0/24",  # IETF protocol assignments
    "192.168.0.0/16",  # RFC 1918
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
    "::/128",  # unspecified
    "::1/128",  # loopback
    "::ffff:0:0/96",  # IPv4-mapped: would bypass the IPv4 rules
    "64:ff9b::/96",  # NAT64: likewise
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "ff00::/8",  # multicast
))

_CACHE_SIZE = 4096


class PeerFilter:
    def __init__(self, allow: Iterable[str] = (), deny=DEFAULT_DENY) -> None:
        self.allow = tuple(ipaddress.ip_network(n, strict=False) for n in allow)
        self.deny = tuple(deny)
        self._cache: dict = {}

    def explicitly_allowed(self, ip: str) -> bool:
        """True if an ``allow`` range covers ``ip``."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.allow)

    def allows(self, ip: str) -> bool:
        """True if ``ip`` may be a peer (cached: CreatePermission and
        ChannelBind ask, never the per-packet path)."""
        ok = self._cache.get(ip)
        if ok is None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return False
            ok = any(addr in net for net in self.allow) or not any(addr in net for net in self.deny)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[ip] = ok
        return ok
