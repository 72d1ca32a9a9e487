"""``HOST:PORT`` text, parsed once for every command, option and API.

Accepted forms: ``HOST``, ``HOST:PORT``, ``[V6]``, ``[V6]:PORT``, a bare
IPv6 address, and (where a default host is given) a bare ``PORT``.
Errors are :class:`ValueError` with a message fit for one line of output.
"""

from __future__ import annotations

from typing import Optional, Tuple

#: the STUN port (RFC 8489), the salon's default
DEFAULT_PORT = 3478


def _port(text: str, original: str, allow_zero: bool) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError("bad port in %r" % original) from None
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ValueError("port %d out of range (%d to 65535)" % (port, low))
    return port


def _split(text: str) -> Tuple[str, str]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")) or ":" not in host:
            raise ValueError("bad address %r (brackets hold an IPv6 address)" % text)
        return host, rest[1:]
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, port
    return text, ""  # a host name, an IPv4 address or a bare IPv6 address


def parse_hostport(text: str, default_port: Optional[int] = DEFAULT_PORT, default_host: Optional[str] = None,
                   allow_zero: bool = False) -> Tuple[str, int]:
    """``(host, port)`` from ``text``; a missing port is ``default_port``
    (an error when None), a missing host ``default_host`` (an error when
    None).  Port 0 only with ``allow_zero`` (a local port the kernel picks)."""
    original = text
    text = text.strip()
    if default_host is not None and text.isdigit():
        return default_host, _port(text, original, allow_zero)
    host, port = _split(text)
    if not host:
        if default_host is None:
            raise ValueError("no host in %r" % original)
        host = default_host
    if not port:
        if default_port is None:
            raise ValueError("no port in %r" % original)
        return host, default_port
    return host, _port(port, original, allow_zero)


def parse_server(text: str) -> Tuple[str, int]:
    """A STUN server or salon: ``HOST[:PORT]``, port :data:`DEFAULT_PORT` by default."""
    return parse_hostport(text, DEFAULT_PORT)


def parse_local(text: str, default_host: str = "127.0.0.1") -> Tuple[str, int]:
    """A local UDP endpoint (``--forward``, ``--deliver``): ``PORT`` or ``HOST:PORT``."""
    return parse_hostport(text, None, default_host, allow_zero=True)
