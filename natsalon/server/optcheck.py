"""Checks shared by the salon's options (``twistd natsalon`` and its TURN
options): each turns an option's text into a value or raises
``usage.UsageError`` with one line naming the option."""

from __future__ import annotations

import ipaddress
from typing import List

from twisted.python import usage


def ip(value: str, name: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise usage.UsageError("%s: %r is not an IP address" % (name, value)) from None


def whole(value, name: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise usage.UsageError("%s: %r is not a whole number" % (name, value)) from None
    if not low <= n <= high:
        raise usage.UsageError("%s: %d is out of range (%d to %d)" % (name, n, low, high))
    return n


def secret_lines(path: str, name: str) -> List[bytes]:
    """The non-empty lines of a secrets file (none on the command line)."""
    try:
        with open(path, "rb") as f:
            return [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError as e:
        raise usage.UsageError("%s: %s" % (name, e)) from None
