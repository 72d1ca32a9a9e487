"""This host's interface addresses, through ``ifaddr`` (no ioctl tricks).

:func:`local_addresses` scans the interfaces (a quick, blocking call: the
one-shot command calls it before the reactor runs);
:func:`local_addresses_in_thread` runs it in the reactor's thread pool for
long-running services.
"""

from __future__ import annotations

from typing import FrozenSet

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


def local_addresses_in_thread(reactor):
    """A Deferred firing with :func:`local_addresses`, computed off the reactor thread."""
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), local_addresses)
