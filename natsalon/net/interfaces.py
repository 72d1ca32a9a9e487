"""This host's interface addresses, through ``ifaddr`` (no ioctl tricks):
one scan for the prober (every address, to tell "no NAT" apart) and the
client (IPv4 LAN candidates, global IPv6 host candidates).

:func:`local_addresses` scans the interfaces (a quick, blocking call: the
one-shot commands call it before the reactor runs; services call the
``*_in_thread`` forms, which run in the reactor's thread pool).
"""

from __future__ import annotations

import ipaddress
from typing import FrozenSet, List

import ifaddr
from twisted.internet import threads


def local_addresses() -> FrozenSet[str]:
    """Every IPv4 and IPv6 address of this host's interfaces (IPv6 without
    the scope id)."""
    found = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, tuple):  # IPv6: (address, flowinfo, scope_id)
                found.add(ip.ip[0].split("%", 1)[0])
            else:
                found.add(ip.ip)
    return frozenset(found)


def lan_addresses(interface: str = "", limit: int = 8) -> List[str]:
    """This host's IPv4 addresses worth offering to a peer as LAN
    candidates: ``interface`` itself when it is a specific address, else
    every address but loopback, link-local, multicast and unspecified
    (blocking: an interface scan)."""
    if interface and not ipaddress.ip_address(interface).is_unspecified:
        return [interface]
    out = []
    for ip in sorted(local_addresses()):
        a = ipaddress.ip_address(ip)
        if a.version != 4 or a.is_loopback or a.is_link_local or a.is_multicast or a.is_unspecified:
            continue
        out.append(ip)
    return out[:limit]


#: global unicast IPv6 (RFC 4291 2000::/3); it holds the documentation
#: prefix 2001:db8::/32, which ``ipaddress`` calls private (so ``is_global``
#: is no test here), and leaves out link-local fe80::/10, ULA fc00::/7,
#: loopback, multicast and the IPv4-mapped range
GLOBAL_UNICAST6 = ipaddress.ip_network("2000::/3")


def is_global_ipv6(ip: str) -> bool:
    """Is ``ip`` a global unicast IPv6 address (worth offering to a peer
    across the internet)?"""
    try:
        a = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    return a.version == 6 and a in GLOBAL_UNICAST6


def global_ipv6_addresses(limit: int = 4, found=None) -> List[str]:
    """This host's global unicast IPv6 addresses (:func:`is_global_ipv6`),
    sorted, at most ``limit`` (blocking: an interface scan, unless
    ``found``, a set of addresses, is given)."""
    found = local_addresses() if found is None else found
    return sorted(ip for ip in found if is_global_ipv6(ip))[:limit]


def local_addresses_in_thread(reactor):
    """A Deferred firing with :func:`local_addresses`, computed off the reactor thread."""
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), local_addresses)


def lan_addresses_in_thread(reactor, interface: str = "", limit: int = 8):
    """A Deferred firing with :func:`lan_addresses`, computed off the reactor thread."""
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), lan_addresses, interface, limit)
