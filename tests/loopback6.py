"""Whether this machine has an IPv6 loopback (the IPv6 tests on ::1 skip
without one: a container started with IPv6 disabled)."""
from __future__ import annotations

import socket


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False
