"""Where the salon's sockets are, as clients see them.

The server listens on up to four sockets, the RFC 5780 grid of two IP
addresses by two ports.  A socket is named by its *key* ``(ip_index,
port_index)``: ``(0, 0)`` is the primary address and port, ``(0, 1)`` the
alternate port, ``(1, 0)`` and ``(1, 1)`` the alternate IP.  The layout maps
keys to the addresses advertised to clients (which differ from the bound
ones on a server behind 1:1 NAT).

A salon on ``::`` serves IPv4 on separate sockets (``0.0.0.0``, same
ports; the ``::`` ones take IPv6 only, so an IPv4 client is never seen as
``::ffff:a.b.c.d``).  Such a socket's key is its IPv6 sibling's plus a
third element, ``4`` (:func:`ipv4_twin`): it stands at the same place in
the grid, and replies to it leave from a socket of its own family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from natsalon.stun import Address

Key = Tuple[int, ...]
PRIMARY: Key = (0, 0)


def ipv4_twin(key: Key) -> Key:
    """The key of the IPv4 socket beside ``key``'s on a ``::`` salon."""
    return key[:2] + (4,)


def hostport(host: Optional[str], port: int) -> str:
    """``host:port`` for people: ``[v6]:port`` for IPv6, ``*:port`` when
    the host is unknown or the wildcard address."""
    if not host:
        host = "*"
    elif ":" in host:
        host = "[%s]" % host
    return "%s:%d" % (host, port)


@dataclass(frozen=True)
class Layout:
    #: advertised IPs; ``ips[0]`` may be None when the server binds the
    #: wildcard address and was not told its public address.
    ips: Tuple[Optional[str], Optional[str]]
    ports: Tuple[int, int]

    @property
    def has_alt_ip(self) -> bool:
        return self.ips[1] is not None

    def describe(self) -> str:
        """The advertised addresses for a log line, e.g.
        ``203.0.113.10:3478, alt port 3479, alt IP none``."""
        return "%s, alt port %d, alt IP %s" % (
            hostport(self.ips[0], self.ports[0]), self.ports[1], self.ips[1] or "none")

    def keys(self):
        ip_indexes = (0, 1) if self.has_alt_ip else (0,)
        return [(i, p) for i in ip_indexes for p in (0, 1)]

    def address(self, key: Key) -> Optional[Address]:
        ip = self.ips[key[0]]
        if ip is None:
            return None
        return Address(ip, self.ports[key[1]])

    def other(self, key: Key) -> Optional[Address]:
        """RFC 5780 OTHER-ADDRESS seen from ``key``: the socket that differs
        in both IP and port; None on a one-IP server."""
        if not self.has_alt_ip:
            return None
        return self.address((1 - key[0], 1 - key[1]))
