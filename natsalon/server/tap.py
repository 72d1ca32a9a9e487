"""``twistd natsalon``: command-line options and the service maker."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import sys

from twisted.logger import Logger
from twisted.python import usage

from natsalon import __version__
from natsalon.server.optcheck import ip, secret_lines, whole
from natsalon.server.layout import Family
from natsalon.server.service import SalonConfig, make_salon
from natsalon.server.turn.options import TurnOptionsMixin
from natsalon.ops.options import OpsOptionsMixin

log = Logger()


def _member_timeout(o) -> float:
    """--member-timeout, or the deprecated --room-timeout (which meant how
    long a waiting member is kept without polling: the same thing)."""
    name, value = "--member-timeout", o["member-timeout"]
    if o["room-timeout"] is not None:
        log.warn("--room-timeout is deprecated: use --member-timeout (seconds a room member may go unseen)")
        name, value = "--room-timeout", o["room-timeout"]
    try:
        seconds = float(value)
    except ValueError:
        raise usage.UsageError("%s: %r is not a number" % (name, value)) from None
    if not 1.5 <= seconds <= 86400:
        raise usage.UsageError("%s: %s is out of range (1.5 to 86400: clients poll every second)" % (name, value))
    return seconds


def _sentinel_password(address, path: str):
    """``address`` (redis+sentinel://) with the sentinels' password, the
    first line of ``path``."""
    if not address.sentinels:
        raise usage.UsageError("--sentinel-password-file needs --rooms redis+sentinel://...")
    lines = secret_lines(path, "--sentinel-password-file")
    if not lines:
        raise usage.UsageError("--sentinel-password-file: no password in %s" % path)
    return dataclasses.replace(address, sentinel_password=lines[0])


def _shared_rooms(o) -> dict:
    """The SalonConfig fields of --rooms, --redis-password-file,
    --sentinel-password-file, --instance-id and --cookie-secret-file."""
    out = {}
    if o["cookie-secret-file"]:
        secrets = secret_lines(o["cookie-secret-file"], "--cookie-secret-file")
        if not secrets:
            raise usage.UsageError("--cookie-secret-file: no secret in %s" % o["cookie-secret-file"])
        if any(len(s) < 16 for s in secrets):
            raise usage.UsageError("--cookie-secret-file: a secret is shorter than 16 bytes")
        out["cookie_secrets"] = tuple(secrets)
    if o["rooms"] == "memory":
        for name in ("redis-password-file", "sentinel-password-file", "instance-id"):
            if o[name]:
                raise usage.UsageError("--%s needs --rooms redis://... or unix:..." % name)
        return out
    # imported here: txredisapi imports the global reactor, which must not
    # happen before twistd has installed the one it was asked for
    from natsalon.server.introducer.redislink import parse_redis_url

    try:
        out["rooms"] = parse_redis_url(o["rooms"])
    except ValueError as e:
        raise usage.UsageError("--rooms: %s" % e) from None
    if o["redis-password-file"]:
        lines = secret_lines(o["redis-password-file"], "--redis-password-file")
        if not lines:
            raise usage.UsageError("--redis-password-file: no password in %s" % o["redis-password-file"])
        out["redis_password"] = lines[0]
    if o["sentinel-password-file"]:
        out["rooms"] = _sentinel_password(out["rooms"], o["sentinel-password-file"])
    instance = o["instance-id"] or "%s-%s" % (socket.gethostname(), os.urandom(4).hex())
    if "/" in instance or not instance.isprintable() or " " in instance:
        raise usage.UsageError("--instance-id: %r: use letters, digits, '-', '.', ':'" % instance)
    out["instance_id"] = instance
    if "cookie_secrets" not in out:
        log.warn("--rooms is shared but no --cookie-secret-file: cookies from this salon verify only here "
                 "(a client that changes salon gets a new cookie first)")
    return out


def _by_version(values, name: str) -> dict:
    """IP version -> address, for an option given at most once per family."""
    out = {}
    for value in values:
        addr = ip(value, name)
        version = ipaddress.ip_address(addr).version
        if version in out:
            raise usage.UsageError("%s: given twice for IPv%d (%s and %s): give it once per IP family"
                                   % (name, version, out[version], addr))
        out[version] = addr
    return out


def _family(version: int, interface: str, alt: dict, adv: dict, adv_alt: dict) -> Family:
    """One family's sockets, checked: an --alt-ip needs a specific
    --interface of its family, and differs from it."""
    alt_ip = alt.get(version)
    if alt_ip is not None:
        if ipaddress.ip_address(interface).is_unspecified:
            raise usage.UsageError("--alt-ip %s needs --interface set to a specific IPv%d address, not %s"
                                   % (alt_ip, version, interface))
        if alt_ip == interface:
            raise usage.UsageError("--alt-ip must differ from --interface (both are %s)" % alt_ip)
    if adv_alt.get(version) and alt_ip is None:
        raise usage.UsageError("--advertise-alt %s needs --alt-ip of IPv%d" % (adv_alt[version], version))
    return Family(interface, alt_ip, adv.get(version), adv_alt.get(version))


def _families(o) -> tuple:
    """The families the salon serves, the first --interface's first: each
    --interface is of its own family (``::`` alone brings IPv4 on
    ``0.0.0.0``); --alt-ip, --advertise, --advertise-alt go to the
    family of their address, which must have an --interface."""
    interfaces = _by_version(o.get("interface") or ["0.0.0.0"], "--interface")
    if list(interfaces.values()) == ["::"]:
        interfaces[4] = "0.0.0.0"
    tables = {name: _by_version(o.get(key, []), name) for name, key in (
        ("--alt-ip", "alt-ip"), ("--advertise", "advertise"), ("--advertise-alt", "advertise-alt"))}
    for name, table in tables.items():
        for version, addr in table.items():
            if version not in interfaces:
                given = " and ".join(interfaces.values())
                raise usage.UsageError("%s %s and --interface %s are of different IP versions (no IPv%d "
                                       "--interface)" % (name, addr, given, version))
    return tuple(_family(v, interfaces[v], tables["--alt-ip"], tables["--advertise"], tables["--advertise-alt"])
                 for v in interfaces)


class Options(OpsOptionsMixin, TurnOptionsMixin, usage.Options):
    command = "twistd natsalon"
    synopsis = "[options]"
    longdesc = (
        "Run the natsalon server: a STUN reflector (RFC 8489) with RFC 5780 "
        "alternate-port and alternate-IP responders. Clients only need this "
        "server's host and --port."
    )
    optParameters = [
        ["port", "p", "3478", "Primary STUN port (0 picks a free one)."],
        ["alt-port", None, "3479", "Alternate port for RFC 5780 change-port answers."],
        ["rate-limit", None, "200", "Requests per second answered per source IP (0 disables)."],
        ["max-sources", None, "65536", "Source IPs tracked by the rate limiter at once (bounds memory)."],
        ["rcvbuf", None, str(4 << 20), "Socket receive buffer in bytes."],
        ["stats-interval", None, "60", "Seconds between statistics log lines."],
        ["max-rooms", None, "10000", "Rooms the introducer holds at once."],
        ["member-timeout", None, "3.5", "Seconds a room member may go unseen before it is dropped "
                                        "(clients poll every second while they wait)."],
        ["room-timeout", None, None, "Deprecated: the old name of --member-timeout."],
        ["max-members", None, "6", "Members one room holds at once (each is introduced to the others)."],
        ["max-waiting-per-ip", None, "16", "Members one source IP (IPv6: its /64) holds in all rooms at once."],
        ["rooms", None, "memory", "Where rooms live: 'memory' (this salon alone), or a Redis shared by several "
                                  "salons: redis://HOST[:PORT][/DB] or unix:/PATH[?db=N]."],
        ["redis-password-file", None, None, "File holding the Redis password (its first line)."],
        ["sentinel-password-file", None, None, "File holding the Redis Sentinels' own password (their "
         "requirepass; its first line), for --rooms redis+sentinel://..."],
        ["instance-id", None, None, "This salon's name among the salons sharing --rooms (unique per running "
                                    "salon; default: host name and a random suffix)."],
        ["cookie-secret-file", None, None, "File of cookie secrets, one a line: the first issues cookies, every "
                                           "line verifies them. Give the salons sharing --rooms the same file."],
    ] + TurnOptionsMixin.turnParameters
    optFlags = [
        ["no-introducer", None, "Serve STUN only: refuse JOIN (no rooms)."],
        ["full-plain-answers", None, "Answer attribute-less Binding requests with RESPONSE-ORIGIN and "
                                     "OTHER-ADDRESS too, for RFC 5780 clients such as turnutils_natdiscovery "
                                     "(reply/request byte ratio 2.8 instead of 1.6)."],
    ] + TurnOptionsMixin.turnFlags

    def opt_interface(self, value: str) -> None:
        """IP address to listen on (default 0.0.0.0; '::' serves IPv6 and IPv4 beside it). Once per IP
        family: --interface 192.0.2.1 --interface 2001:db8::1 serves both."""
        self.setdefault("interface", []).append(value)

    opt_i = opt_interface

    def opt_alt_ip(self, value: str) -> None:
        """Second local IP address of an --interface's family: enables that family's four RFC 5780
        sockets, change-IP answers and OTHER-ADDRESS. Needs a specific --interface. Once per family."""
        self.setdefault("alt-ip", []).append(value)

    def opt_advertise(self, value: str) -> None:
        """Public IP to report for the --interface of its family (servers behind 1:1 NAT)."""
        self.setdefault("advertise", []).append(value)

    def opt_advertise_alt(self, value: str) -> None:
        """Public IP to report for the --alt-ip of its family (servers behind 1:1 NAT)."""
        self.setdefault("advertise-alt", []).append(value)

    def opt_version(self) -> None:
        """Print natsalon's version and exit."""
        sys.stdout.write("natsalon %s\n" % __version__)
        sys.exit(0)

    def postOptions(self) -> None:
        o = self
        port = whole(o["port"], "--port", 0, 65535)
        alt_port = whole(o["alt-port"], "--alt-port", 0, 65535)
        if port and port == alt_port:
            raise usage.UsageError("--alt-port must differ from --port (both are %d)" % port)
        families = _families(o)
        first = families[0]
        self.config = SalonConfig(
            interface=first.interface,
            port=port,
            alt_port=alt_port,
            alt_ip=first.alt_ip,
            advertise=first.advertise,
            advertise_alt=first.advertise_alt,
            second=families[1] if len(families) > 1 else None,
            rate_limit=whole(o["rate-limit"], "--rate-limit", 0, 10 ** 9),
            max_sources=whole(o["max-sources"], "--max-sources", 1, 10 ** 8),
            rcvbuf=whole(o["rcvbuf"], "--rcvbuf", 0, 1 << 30),
            stats_interval=float(whole(o["stats-interval"], "--stats-interval", 1, 86400)),
            introducer=not o["no-introducer"],
            full_plain_answers=bool(o["full-plain-answers"]),
            max_rooms=whole(o["max-rooms"], "--max-rooms", 1, 10 ** 8),
            member_timeout=_member_timeout(o),
            max_members=whole(o["max-members"], "--max-members", 2, 64),
            max_waiting_per_ip=whole(o["max-waiting-per-ip"], "--max-waiting-per-ip", 1, 10 ** 6),
            turn=self.turn_config(first.advertise or first.interface),
            **_shared_rooms(o),
        )


def makeService(config: Options):
    from twisted.internet import reactor
    from natsalon.ops.wiring import attach_salon

    return attach_salon(reactor, make_salon(reactor, config.config), config)
