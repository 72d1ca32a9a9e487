"""Whether an IPv6 address of this host is a temporary (privacy) address
(RFC 8981): the kernel's ``IFA_F_TEMPORARY`` flag.

The flags come from ``/proc/net/if_inet6`` (Linux; readable without
privileges: the same table ``ip -6 addr`` reads over netlink), one line per
address: 32 hex digits, interface index, prefix length, scope, flags,
name.  :func:`parse_if_inet6` is pure; :func:`address_flags` reads the file
(a blocking call: one-shot commands call it before the reactor runs),
:func:`address_flags_in_thread` reads it in the reactor's thread pool.
Elsewhere (no such file) the table is empty and the answer is "unknown".
"""

from __future__ import annotations

import ipaddress
from typing import Dict, Mapping, Optional

from twisted.internet import threads

IF_INET6 = "/proc/net/if_inet6"
#: linux/if_addr.h
IFA_F_TEMPORARY = 0x01
IFA_F_PERMANENT = 0x80


def parse_if_inet6(text: str) -> Dict[str, int]:
    """Address (compressed text form) -> its IFA_F_* flags; lines that do
    not parse are skipped."""
    out: Dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or len(fields[0]) != 32:
            continue
        try:
            addr = ipaddress.IPv6Address(int(fields[0], 16))
            flags = int(fields[4], 16)
        except ValueError:
            continue
        out[str(addr)] = out.get(str(addr), 0) | flags
    return out


def address_flags(path: str = IF_INET6) -> Dict[str, int]:
    """This host's IPv6 addresses and their flags (blocking: a file read);
    empty when the table cannot be read."""
    try:
        with open(path) as f:
            return parse_if_inet6(f.read())
    except OSError:
        return {}


def address_flags_in_thread(reactor, path: str = IF_INET6):
    """A Deferred firing with :func:`address_flags`, read off the reactor thread."""
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), address_flags, path)


def is_temporary(host: str, flags: Mapping[str, int]) -> Optional[bool]:
    """True if ``host`` is a temporary (privacy) address of this host, False
    if it is another of its addresses, None when it is not in ``flags``
    (an IPv4 address, or a table that could not be read)."""
    try:
        key = str(ipaddress.IPv6Address(host.split("%", 1)[0]))
    except ValueError:
        return None
    if key not in flags:
        return None
    return bool(flags[key] & IFA_F_TEMPORARY)
