"""The client's options, checked once for ``natsalon connect`` and ``twistd
natclient``: :func:`check` turns the raw text of each option into a
:class:`ClientOptions`, or raises :class:`OptionError` with one line that
names the option ("--timeout: 'nan' is not a finite number")."""

from __future__ import annotations

import os

import ipaddress
import math
from urllib.parse import unquote
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Optional, Tuple

from natsalon.client.secretfile import SecretError, load_secret
from natsalon.net.hostport import parse_hostport, parse_local, parse_server


class OptionError(ValueError):
    """A bad option value; the message is one line for the user."""


class TurnServer(NamedTuple):
    """Another TURN server than the salon's (``--turn``), with long-term credentials."""

    host: str
    port: int
    username: str
    password: str

    @property
    def credentials(self) -> Tuple[str, str]:
        return self.username, self.password


def parse_turn(text: str) -> TurnServer:
    """``turn:USER:PASS@HOST[:PORT][?transport=udp]`` (RFC 7065's URI with
    the credentials in its user part; port 3478 by default).  Only UDP:
    ``turns:`` and ``transport=tcp`` are refused with a clear reason.
    Raises ValueError."""
    scheme, sep, rest = text.partition(":")
    if not sep or scheme.lower() not in ("turn", "turns"):
        raise ValueError("%r is not a turn: URI (turn:USER:PASS@HOST[:PORT])" % text)
    if scheme.lower() == "turns":
        raise ValueError("turns: (TURN over TLS) is not supported yet; use turn: over UDP")
    rest, _, query = rest.partition("?")
    if query:
        params = dict(p.partition("=")[::2] for p in query.split("&"))
        if params.get("transport", "udp").lower() != "udp":
            raise ValueError("transport=%s is not supported yet; TURN over UDP only" % params["transport"])
    userinfo, at, hostport = rest.rpartition("@")
    if not at:
        raise ValueError("%r has no credentials (turn:USER:PASS@HOST[:PORT])" % text)
    # split at the last colon: shared-secret usernames ("<expiry>:<user>")
    # hold colons, base64 passwords never do; %-escapes are decoded
    username, colon, password = userinfo.rpartition(":")
    if not colon or not username:
        raise ValueError("%r has no USER:PASS before the @" % text)
    username, password = unquote(username), unquote(password)
    host, port = parse_server(hostport)
    if port == 0:
        port = 3478
    return TurnServer(host, port, username, password)


@dataclass(frozen=True)
class ClientOptions:
    #: every salon of ``--server a,b`` (sharing their rooms), in order;
    #: ``server`` is the first
    servers: Tuple[Tuple[str, int], ...]
    room: str
    secret: bytes
    forward: Optional[Tuple[str, int]] = None
    deliver: Optional[Tuple[str, int]] = None
    timeout: float = 30.0
    punch_timeout: float = 10.0
    keepalive: float = 5.0
    dead_after: int = 2
    retry: float = 30.0
    port: int = 0
    interface: str = ""
    encrypt: bool = True
    lan: bool = True
    turn: Optional[TurnServer] = None  #: --turn: another TURN server than the salon's
    #: --salon-tls: (host, port) of the salon's TURN over TLS, used instead
    #: of TCP when UDP does not reach the salon (host: the certificate's name)
    salon_tls: Optional[Tuple[str, int]] = None
    salon_ca: Optional[str] = None  #: --salon-ca: PEM file of the CA trusted for --salon-tls
    #: --server6: the salon's IPv6 address (HOST[:PORT]; a name is resolved
    #: to IPv6), where an IPv4 client learns its IPv6 endpoint
    server6: Optional[Tuple[str, int]] = None
    ipv6: bool = True  #: False (--no-ipv6): IPv4 alone, no IPv6 socket
    #: where the join-time probe's result is kept for the next process
    #: (--probe-cache FILE; by default the systemd StateDirectory's, when
    #: running under one); None: no cache (--no-probe-cache)
    probe_cache: Optional[str] = None

    @property
    def server(self) -> Tuple[str, int]:
        """The first salon of ``--server``."""
        return self.servers[0]


#: option -> (lowest, highest): every timing is a finite number of seconds
_SECONDS = {
    "timeout": (1.0, 86400.0),
    "punch-timeout": (1.0, 3600.0),
    "keepalive": (1.0, 3600.0),  # below 1 s a keepalive floods the peer and the salon
    "retry": (1.0, 3600.0),
}


def _seconds(raw: Mapping, name: str) -> float:
    text = raw.get(name)
    low, high = _SECONDS[name]
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise OptionError("--%s: %r is not a number" % (name, text)) from None
    if not math.isfinite(value):
        raise OptionError("--%s: %r is not a finite number" % (name, text))
    if not low <= value <= high:
        raise OptionError("--%s: %g is out of range (%g to %g seconds)" % (name, value, low, high))
    return value


def _whole(raw: Mapping, name: str, low: int, high: int) -> int:
    text = raw.get(name)
    try:
        value = int(str(text).strip())
    except ValueError:
        raise OptionError("--%s: %r is not a whole number" % (name, text)) from None
    if not low <= value <= high:
        raise OptionError("--%s: %d is out of range (%d to %d)" % (name, value, low, high))
    return value


def _endpoint(raw: Mapping, name: str, parse):
    text = raw.get(name)
    if not text:
        return None
    try:
        return parse(text)
    except ValueError as e:
        raise OptionError("--%s: %s" % (name, e)) from None


def _server(text: Optional[str]) -> Tuple[str, int]:
    if not text:
        raise OptionError("--server is required")
    try:
        host, port = parse_server(text)
    except ValueError as e:
        raise OptionError("--server: %s" % e) from None
    return host, port


def _servers(text: Optional[str]) -> Tuple[Tuple[str, int], ...]:
    """``HOST[:PORT][,HOST[:PORT]...]``: salons sharing their rooms, tried
    in order, all of one IP family (the client socket's)."""
    if text and "," in text:
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise OptionError("--server: an empty salon in %r (HOST[:PORT],HOST[:PORT])" % text)
        servers = tuple(dict.fromkeys(_server(part) for part in parts))
        if len({":" in host for host, _ in servers}) > 1:
            raise OptionError("--server: salons of both IP families in %r (give the salon's IPv6 address "
                              "with --server6)" % text)
        return servers
    return (_server(text),)


def _server6(text: Optional[str], servers, ipv6: bool) -> Optional[Tuple[str, int]]:
    """``--server6 HOST[:PORT]``: an IPv6 address or a name, beside an IPv4 ``--server``."""
    if not text:
        return None
    try:
        host, port = parse_server(text)
    except ValueError as e:
        raise OptionError("--server6: %s" % e) from None
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        version = 6  # a name: resolved to its IPv6 address
    if version != 6:
        raise OptionError("--server6: %s is not an IPv6 address" % host)
    if ":" in servers[0][0]:
        raise OptionError("--server6: only beside an IPv4 --server (an IPv6 --server makes an IPv6-only client)")
    if not ipv6:
        raise OptionError("--server6: not with --no-ipv6")
    return host, port


def _interface(text: Optional[str], servers) -> str:
    """A local address of the salon's family (an IPv6 one for an IPv6 salon)."""
    if not text:
        return ""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise OptionError("--interface: %r is not an IP address" % text) from None
    salon = 6 if ":" in servers[0][0] else 4
    if address.version != salon:
        raise OptionError("--interface: %s is IPv%d but the salon is IPv%d" % (text, address.version, salon))
    return str(address)


#: the port of TURN over TLS (RFC 8656)
TLS_PORT = 5349


def _salon_tls(text: Optional[str]) -> Optional[Tuple[str, int]]:
    if not text:
        return None
    try:
        host, port = parse_hostport(text, TLS_PORT)
    except ValueError as e:
        raise OptionError("--salon-tls: %s" % e) from None
    if ":" in host:
        raise OptionError("--salon-tls: IPv6 salons are not supported yet: %r" % text)
    return host, port


def _salon_ca(text: Optional[str], tls) -> Optional[str]:
    """A readable PEM certificate file (only with --salon-tls)."""
    if not text:
        return None
    if tls is None:
        raise OptionError("--salon-ca: only with --salon-tls")
    try:
        with open(text, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise OptionError("--salon-ca: cannot read %s: %s" % (text, e.strerror or e)) from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise OptionError("--salon-ca: %s holds no PEM certificate" % text)
    return text


def check(raw: Mapping, environ=None) -> ClientOptions:
    """Check every option; ``raw`` maps option names (``"punch-timeout"``)
    to their text (or None), flags (``"no-encrypt"``) to booleans."""
    room = raw.get("room")
    if not room:
        raise OptionError("--room is required (and may not be empty)")
    try:
        kw = {} if environ is None else {"environ": environ}
        secret = load_secret(raw.get("secret"), raw.get("secret-file"), **kw)
    except (SecretError, OSError) as e:
        raise OptionError(str(e)) from None
    servers = _servers(raw.get("server"))
    if raw.get("no-ipv6") and ":" in servers[0][0]:
        raise OptionError("--no-ipv6: the salon %s is IPv6" % servers[0][0])
    return ClientOptions(
        servers=servers, room=room, secret=secret,
        forward=_endpoint(raw, "forward", parse_local), deliver=_endpoint(raw, "deliver", parse_local),
        timeout=_seconds(raw, "timeout"), punch_timeout=_seconds(raw, "punch-timeout"),
        keepalive=_seconds(raw, "keepalive"), dead_after=_whole(raw, "dead-after", 1, 100),
        retry=_seconds(raw, "retry"), port=_whole(raw, "port", 0, 65535),
        interface=_interface(raw.get("interface"), servers), encrypt=not raw.get("no-encrypt"), lan=not raw.get("no-lan"),
        turn=_endpoint(raw, "turn", parse_turn), salon_tls=_salon_tls(raw.get("salon-tls")),
        salon_ca=_salon_ca(raw.get("salon-ca"), raw.get("salon-tls")),
        server6=_server6(raw.get("server6"), servers, not raw.get("no-ipv6")), ipv6=not raw.get("no-ipv6"),
        probe_cache=_probe_cache(raw.get("probe-cache"), raw.get("no-probe-cache"), environ),
    )


def _probe_cache(path: Optional[str], off: bool, environ=None) -> Optional[str]:
    """``--probe-cache FILE``, else the systemd state directory's file
    (``$STATE_DIRECTORY``: a unit with ``StateDirectory=``), else none: a
    shared home directory is no place for a result keyed by addresses."""
    if off:
        if path:
            raise OptionError("--probe-cache and --no-probe-cache contradict each other")
        return None
    if path:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise OptionError("--probe-cache: no directory %s" % parent)
        return path
    environ = os.environ if environ is None else environ
    if environ.get("STATE_DIRECTORY"):
        from natsalon.client.probecache import default_path

        return default_path(environ)
    return None


#: the raw defaults both front ends start from
DEFAULTS = {"timeout": "30", "punch-timeout": "10", "keepalive": "5", "dead-after": "2", "retry": "30",
            "port": "0", "interface": ""}
