"""The TURN options of ``twistd natsalon`` (mixed into its Options).

The relay runs by default, for the salon's own room credentials (handed
out with introductions; the operator configures nothing), and also
accepts coturn-style shared secrets when ``--turn-secret`` or
``--turn-secret-file`` give some.  Nothing is relayed without valid
credentials.  ``--no-turn`` turns it off.

It needs the IP its relayed addresses are given on: ``--advertise``, a
specific ``--interface``, or, on the wildcard, the host's one IPv4 address
that is not loopback or link-local (:func:`pick_relay_ip`).  When that is
ambiguous, the relay stays off with one log line saying how to fix it, or,
when the operator asked for TURN (a secret, a TLS certificate), start-up
ends with that line.

The other IP family (IPv6 beside IPv4, for REQUESTED-ADDRESS-FAMILY and
ADDITIONAL-ADDRESS-FAMILY) is found the same way: the ``--advertise`` or
``--interface`` of that family, or, when that interface is the wildcard
(or, for IPv6, when the salon is on the default ``0.0.0.0``), the host's
one global address of the family.  When there is none, or several, the
relay gives addresses of the first family only, with one log line.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, List, Optional, Tuple

from twisted.logger import Logger
from twisted.python import usage

from natsalon.net.interfaces import local_addresses
from natsalon.server.optcheck import secret_lines, whole
from natsalon.server.turn.core import TurnConfig

_D = TurnConfig()
log = Logger()
_FIX = "give the relay's public IP with --advertise IP or bind a specific --interface"


_NOT_GLOBAL6 = tuple(ipaddress.ip_network(n) for n in ("fc00::/7", "::ffff:0:0/96", "64:ff9b::/96"))


def _relayable(a, version: int) -> bool:
    if a.version != version or a.is_loopback or a.is_link_local or a.is_multicast or a.is_unspecified:
        return False
    return version == 4 or not (a.is_site_local or any(a in n for n in _NOT_GLOBAL6))


def pick_relay_ip(addresses: Iterable[str], version: int = 4) -> Tuple[Optional[str], str]:
    """``(ip, "")`` for the one address of IP ``version`` among
    ``addresses`` (a host's) that is not loopback, link-local, multicast or
    unspecified (nor, for IPv6, unique local or IPv4-mapped), else
    ``(None, why)``.  Private and documentation ranges count: ``ipaddress``
    calls 192.0.2.0/24 and 2001:db8::/32 private, and a LAN salon relays on
    its LAN address."""
    found = []
    for text in addresses:
        try:
            a = ipaddress.ip_address(text)
        except ValueError:
            continue
        if _relayable(a, version):
            found.append(text)
    found.sort(key=ipaddress.ip_address)
    if len(found) == 1:
        return found[0], ""
    if not found:
        return None, "this host has no %s address" % ("IPv4" if version == 4 else "global IPv6") + (
            " but loopback and link-local ones" if version == 4 else "")
    return None, "this host has %d IPv%d addresses (%s), which one is public?" % (
        len(found), version, ", ".join(found))


class TurnOptionsMixin:
    turnParameters = [
        ["turn-realm", None, _D.realm, "TURN realm (long-term credentials)."],
        ["relay-ports", None, "%d-%d" % _D.relay_ports, "UDP port range of the relayed addresses, LO-HI."],
        ["turn-max-allocations", None, str(_D.max_allocations), "TURN allocations at once (508 beyond)."],
        ["turn-user-quota", None, str(_D.user_quota), "TURN allocations at once per user, which for room "
                                                      "credentials (user room-<id>) is per room (486 beyond; "
                                                      "0: no limit)."],
        ["turn-source-quota", None, str(_D.source_quota), "TURN allocations at once per source IP (IPv6: its /64), "
                                                          "all users and rooms together (486 beyond; 0: no limit)."],
        ["turn-bandwidth", None, str(_D.bandwidth), "Bytes per second relayed per allocation, both ways; "
                                                    "more is dropped (0: no cap)."],
        ["turn-user-bandwidth", None, str(_D.user_bandwidth), "Bytes per second relayed per user (for room "
                                                              "credentials: per room), all of its allocations "
                                                              "together; more is dropped (0: no cap)."],
        ["turn-byte-quota", None, str(_D.byte_quota), "Bytes relayed per allocation over its life (0: no quota)."],
        ["turn-max-lifetime", None, str(_D.max_lifetime), "Longest allocation lifetime granted, in seconds."],
        ["tls-cert", None, None, "PEM certificate (chain) for TURN over TLS (turns:); read at start-up."],
        ["tls-key", None, None, "PEM private key of --tls-cert (default: in the --tls-cert file)."],
        ["tls-port", None, str(_D.tls_port), "TCP port of TURN over TLS (with --tls-cert)."],
    ]
    turnFlags = [
        ["no-turn", None, "No TURN relay at all (by default it serves the rooms' credentials, and "
                          "--turn-secret ones)."],
        ["no-turn-tcp", None, "TURN over UDP only (no TCP listener on the salon's port)."],
    ]

    def opt_turn_secret(self, secret: str) -> None:
        """coturn-style TURN shared secret (username "<expiry>:<user>", password base64(HMAC-SHA1(secret, username))); repeat to rotate."""  # noqa: E501
        if not secret:
            raise usage.UsageError("--turn-secret: empty secret")
        self.setdefault("turn-secrets", []).append(secret.encode("utf-8"))

    def opt_turn_secret_file(self, path: str) -> None:
        """File of TURN shared secrets, one a line (keeps them off the
        command line)."""
        secrets = secret_lines(path, "--turn-secret-file")
        if not secrets:
            raise usage.UsageError("--turn-secret-file: no secret in %s" % path)
        self.setdefault("turn-secrets", []).extend(secrets)

    def opt_turn_allow_peer(self, cidr: str) -> None:
        """Allow TURN peers in this CIDR despite the default filter
        (loopback, private, link-local...). Repeatable."""
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise usage.UsageError("--turn-allow-peer: %r is not a CIDR" % cidr) from None
        self.setdefault("turn-allow-peer", []).append(cidr)

    #: the host's addresses, when the salon is bound to the wildcard (tests replace it)
    turn_addresses = staticmethod(local_addresses)

    def turn_config(self, relay_ip: str) -> Optional[TurnConfig]:
        """The relay's settings, or None when it is off; ``relay_ip`` is
        ``--advertise`` or ``--interface``."""
        secrets: List[bytes] = self.get("turn-secrets", [])
        if self["tls-key"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-key needs --tls-cert")
        if self["no-turn"]:
            if self["tls-cert"]:
                raise usage.UsageError("--tls-cert serves TURN over TLS: not with --no-turn")
            return None
        if not secrets and self.get("no-introducer"):
            if self["tls-cert"]:
                raise usage.UsageError("--tls-cert with --no-introducer needs --turn-secret (room credentials "
                                       "come with introductions)")
            return None  # no credentials at all: nothing to relay for
        first = self._relay_ip(relay_ip, explicit=bool(secrets or self["tls-cert"]))
        if first is None:
            return None
        return self._turn_limits(secrets, first)._replace(second_relay_ip=self._second_relay_ip(first, relay_ip))

    def _given(self, version: int) -> Optional[str]:
        """The ``--advertise`` or else the ``--interface`` of IP ``version``
        (``::`` alone brings ``0.0.0.0``), or None."""
        interfaces = self.get("interface") or ["0.0.0.0"]
        if interfaces == ["::"]:
            interfaces = ["::", "0.0.0.0"]
        for given in (self.get("advertise") or [], interfaces):
            for text in given:
                if ipaddress.ip_address(text).version == version:
                    return text
        return None

    def _second_relay_ip(self, first: str, first_given: str) -> str:
        """The relay IP of the family other than ``first``'s (the first
        relay IP, found from ``first_given``), or "" with one log line
        (:func:`pick_relay_ip` on the wildcard)."""
        version = 6 if ipaddress.ip_address(first).version == 4 else 4
        given = self._given(version)
        if given is None and version == 6 and first_given == "0.0.0.0":
            given = "::"  # the default salon: the host's IPv6 relays too
        if given is None:
            log.info("TURN relays IPv{v} only: no IPv{o} --interface", v=10 - version, o=version)
            return ""
        if not ipaddress.ip_address(given).is_unspecified:
            return given
        ip, why = pick_relay_ip(self.turn_addresses(), version)
        if ip is None:
            log.info("TURN relays IPv{v} only: {why}: give an IPv{o} --advertise or --interface",
                     v=10 - version, why=why, o=version)
            return ""
        return ip

    def _relay_ip(self, given: str, explicit: bool) -> Optional[str]:
        if not ipaddress.ip_address(given).is_unspecified:
            return given
        ip, why = pick_relay_ip(self.turn_addresses())
        if ip is None:
            if explicit:
                raise usage.UsageError("TURN needs the relay's public IP: %s: %s" % (why, _FIX))
            log.warn("TURN relay off: {why}: {fix} (or --no-turn to say it is meant)", why=why, fix=_FIX)
        return ip

    def _turn_limits(self, secrets: List[bytes], relay_ip: str) -> TurnConfig:
        lo, sep, hi = self["relay-ports"].partition("-")
        if not sep:
            raise usage.UsageError("--relay-ports: %r is not LO-HI" % self["relay-ports"])
        lo, hi = whole(lo, "--relay-ports", 1, 65535), whole(hi, "--relay-ports", 1, 65535)
        if lo > hi:
            raise usage.UsageError("--relay-ports: %d is above %d" % (lo, hi))
        max_lifetime = whole(self["turn-max-lifetime"], "--turn-max-lifetime", 60, 86400)
        return TurnConfig(
            secrets=tuple(secrets),
            realm=self["turn-realm"],
            allow_peer=tuple(self.get("turn-allow-peer", [])),
            relay_ports=(lo, hi),
            max_allocations=whole(self["turn-max-allocations"], "--turn-max-allocations", 1, 10 ** 7),
            user_quota=whole(self["turn-user-quota"], "--turn-user-quota", 0, 10 ** 7),
            source_quota=whole(self["turn-source-quota"], "--turn-source-quota", 0, 10 ** 7),
            bandwidth=whole(self["turn-bandwidth"], "--turn-bandwidth", 0, 10 ** 12),
            user_bandwidth=whole(self["turn-user-bandwidth"], "--turn-user-bandwidth", 0, 10 ** 12),
            byte_quota=whole(self["turn-byte-quota"], "--turn-byte-quota", 0, 10 ** 15),
            max_lifetime=max_lifetime,
            default_lifetime=min(_D.default_lifetime, max_lifetime),
            tcp=not self["no-turn-tcp"],
            tls_cert=self["tls-cert"] or "",
            tls_key=self["tls-key"] or "",
            tls_port=whole(self["tls-port"], "--tls-port", 0, 65535),
            relay_ip=relay_ip,
        )
