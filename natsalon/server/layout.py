"""Where the salon's sockets are, as clients see them.

The server listens on up to four sockets, the RFC 5780 grid of two IP
addresses by two ports.  A socket is named by its *key* ``(ip_index,
port_index)``: ``(0, 0)`` is the primary address and port, ``(0, 1)`` the
alternate port, ``(1, 0)`` and ``(1, 1)`` the alternate IP.  The layout maps
keys to the addresses advertised to clients (which differ from the bound
ones on a server behind 1:1 NAT).

A salon may serve both IP families, each on its own sockets (``--interface``
once per family; the IPv6 ones take IPv6 only, so an IPv4 client is never
seen as ``::ffff:a.b.c.d``).  The first family's keys are ``(ip, port)``;
the second family's are the same plus a third element, its IP version
(:func:`twin_key`): a socket stands at the same place in its family's grid,
and replies to it leave from a socket of its own family.  A salon on ``::``
alone serves IPv4 on ``0.0.0.0`` beside it (keys ``(i, p, 4)``:
:func:`ipv4_twin`).  Each family has its own advertised IPs, so its own
RFC 5780 grid (OTHER-ADDRESS, CHANGE-REQUEST) when it has an alternate IP.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional, Tuple

from natsalon.stun import Address

Key = Tuple[int, ...]
PRIMARY: Key = (0, 0)


def twin_key(key: Key, version: int) -> Key:
    """The key of the second family's socket (IP ``version`` 4 or 6) at
    ``key``'s place in the grid."""
    return key[:2] + (version,)


def ipv4_twin(key: Key) -> Key:
    """The key of the IPv4 socket beside ``key``'s on a ``::`` salon."""
    return twin_key(key, 4)


def hostport(host: Optional[str], port: int) -> str:
    """``host:port`` for people: ``[v6]:port`` for IPv6, ``*:port`` when
    the host is unknown or the wildcard address."""
    if not host:
        host = "*"
    elif ":" in host:
        host = "[%s]" % host
    return "%s:%d" % (host, port)


@dataclass(frozen=True)
class Family:
    """One IP family's sockets as configured: the interface, the
    alternate IP (RFC 5780) and the addresses to advertise for them."""

    interface: str
    alt_ip: Optional[str] = None
    advertise: Optional[str] = None
    advertise_alt: Optional[str] = None

    @property
    def version(self) -> int:
        return 6 if ":" in self.interface else 4

    def advertised(self) -> Tuple[Optional[str], Optional[str]]:
        """The IPs clients are told (None: a wildcard, not advertised)."""
        ip0 = self.advertise or (None if ipaddress.ip_address(self.interface).is_unspecified else self.interface)
        ip1 = (self.advertise_alt or self.alt_ip) if self.alt_ip else None
        return ip0, ip1


@dataclass(frozen=True)
class Layout:
    #: advertised IPs of the first family; ``ips[0]`` may be None when the
    #: server binds the wildcard address and was not told its public address.
    ips: Tuple[Optional[str], Optional[str]]
    ports: Tuple[int, int]
    #: the second family's advertised IPs (the sockets whose keys have a
    #: third element), as ``ips``
    twin_ips: Tuple[Optional[str], Optional[str]] = (None, None)
    #: the second family's IP version (the keys' third element); 0: none
    twin: int = 0

    def _ips(self, key: Key) -> Tuple[Optional[str], Optional[str]]:
        return self.ips if len(key) < 3 else self.twin_ips

    @property
    def has_alt_ip(self) -> bool:
        """Whether the first family has an alternate IP."""
        return self.ips[1] is not None

    def has_alt(self, key: Key) -> bool:
        """Whether the family of socket ``key`` has an alternate IP."""
        return self._ips(key)[1] is not None

    def describe(self) -> str:
        """The advertised addresses for a log line, e.g.
        ``203.0.113.10:3478, alt port 3479, alt IP none``; a second
        family's follow after ``; IPv6 ``."""
        text = "%s, alt port %d, alt IP %s" % (
            hostport(self.ips[0], self.ports[0]), self.ports[1], self.ips[1] or "none")
        if self.twin:
            text += "; IPv%d %s, alt IP %s" % (self.twin, hostport(self.twin_ips[0], self.ports[0]),
                                               self.twin_ips[1] or "none")
        return text

    def keys(self):
        """Every socket's key, the first family's first."""
        out = [(i, p) for i in ((0, 1) if self.has_alt_ip else (0,)) for p in (0, 1)]
        if self.twin:
            out += [(i, p, self.twin) for i in ((0, 1) if self.twin_ips[1] else (0,)) for p in (0, 1)]
        return out

    def address(self, key: Key) -> Optional[Address]:
        ip = self._ips(key)[key[0]]
        if ip is None:
            return None
        return Address(ip, self.ports[key[1]])

    def other(self, key: Key) -> Optional[Address]:
        """RFC 5780 OTHER-ADDRESS seen from ``key``: the socket of the same
        family that differs in both IP and port; None when that family has
        one IP."""
        if not self.has_alt(key):
            return None
        return self.address((1 - key[0], 1 - key[1]) + tuple(key[2:]))
