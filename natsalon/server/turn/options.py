"""The TURN options of ``twistd natsalon`` (mixed into its Options).

The relay runs when at least one shared secret is given (``--turn-secret``
or ``--turn-secret-file``), unless ``--no-turn``: nothing is relayed
without valid credentials.
"""

from __future__ import annotations

import ipaddress
from typing import List, Optional

from twisted.python import usage

from natsalon.server.optcheck import secret_lines, whole
from natsalon.server.turn.core import TurnConfig

_D = TurnConfig()


class TurnOptionsMixin:
    turnParameters = [
        ["turn-realm", None, _D.realm, "TURN realm (long-term credentials)."],
        ["relay-ports", None, "%d-%d" % _D.relay_ports, "UDP port range of the relayed addresses, LO-HI."],
        ["turn-max-allocations", None, str(_D.max_allocations), "TURN allocations at once (508 beyond)."],
        ["turn-user-quota", None, str(_D.user_quota), "TURN allocations at once per user (486 beyond; 0: no limit)."],
        ["turn-bandwidth", None, str(_D.bandwidth), "Bytes per second relayed per allocation, both ways; "
                                                    "more is dropped (0: no cap)."],
        ["turn-user-bandwidth", None, str(_D.user_bandwidth), "Bytes per second relayed per user, all of its "
                                                              "allocations together; more is dropped (0: no cap)."],
        ["turn-byte-quota", None, str(_D.byte_quota), "Bytes relayed per allocation over its life (0: no quota)."],
        ["turn-max-lifetime", None, str(_D.max_lifetime), "Longest allocation lifetime granted, in seconds."],
        ["tls-cert", None, None, "PEM certificate (chain) for TURN over TLS (turns:); read at start-up."],
        ["tls-key", None, None, "PEM private key of --tls-cert (default: in the --tls-cert file)."],
        ["tls-port", None, str(_D.tls_port), "TCP port of TURN over TLS (with --tls-cert)."],
    ]
    turnFlags = [
        ["no-turn", None, "No TURN relay, even with secrets."],
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

    def turn_config(self, relay_ip: str) -> Optional[TurnConfig]:
        secrets: List[bytes] = self.get("turn-secrets", [])
        if self["tls-key"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-key needs --tls-cert")
        if self["no-turn"] or not secrets:
            if self["tls-cert"]:
                raise usage.UsageError("--tls-cert serves TURN over TLS: it needs --turn-secret and no --no-turn")
            return None
        if ipaddress.ip_address(relay_ip).is_unspecified:
            raise usage.UsageError("TURN needs the relay's public IP: give --advertise or a specific --interface")
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
            bandwidth=whole(self["turn-bandwidth"], "--turn-bandwidth", 0, 10 ** 12),
            user_bandwidth=whole(self["turn-user-bandwidth"], "--turn-user-bandwidth", 0, 10 ** 12),
            byte_quota=whole(self["turn-byte-quota"], "--turn-byte-quota", 0, 10 ** 15),
            max_lifetime=max_lifetime,
            default_lifetime=min(_D.default_lifetime, max_lifetime),
            tcp=not self["no-turn-tcp"],
            tls_cert=self["tls-cert"] or "",
            tls_key=self["tls-key"] or "",
            tls_port=whole(self["tls-port"], "--tls-port", 0, 65535),
        )
