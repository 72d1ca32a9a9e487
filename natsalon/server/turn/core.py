"""The TURN server's state and rules (RFC 8656), sans-IO.

:class:`TurnCore` is pion's allocation Manager with coturn's timekeeping:
allocations keyed by 5-tuple (client address, the salon socket's key),
permissions keyed by peer IP and channel bindings that store an expiry
time, and one :meth:`TurnCore.sweep` a second that expires them and
refills the bandwidth credits.  No reactor and no sockets: ``now`` is
passed in, and the relayed sockets come from an injected *opener*::

    opener.open(allocation, even, version) -> Optional[Address]
        # binds a relayed socket of IP version 4 or 6 (an even port if
        # asked); sets relay_write and client_write (called a second time
        # for a dual allocation: relay_write then sends by the peer's
        # family); None: 508
    opener.close(allocation)                       # idempotent

An allocation has a relayed address of one family, or one of each (RFC
8656 REQUESTED-ADDRESS-FAMILY, ADDITIONAL-ADDRESS-FAMILY): the families on
are those of the ``relay_ips``.  Its peers must be of one of its families.

The hot paths, :meth:`TurnCore.channel_data` (client to peer) and
:meth:`TurnCore.from_peer` (peer to client), are a dict lookup for the
allocation, one for the binding, a credit subtraction and a write.

Unauthenticated requests get a 401 with REALM and NONCE and nothing else
(no reason phrase, no SOFTWARE): 72 bytes with the default realm, against
the 28 to 36 bytes of a first Allocate, a reply/request byte ratio of 2.0
to 2.6 (3.6 for a bare 20-byte request, the worst case; coturn's 401 is
larger).  It is not cached and costs no state.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from twisted.logger import Logger

from natsalon.ops.stats import Stats
from natsalon.server.turn.auth import NonceJar, RoomAuth, SharedSecretAuth
from natsalon.server.turn.peers import PeerFilter
from natsalon.stun import Address, Attr, Class, ErrorCode, Message, Method, encode, verify_integrity
from natsalon.stun.attributes import AddressErrorCode
from natsalon.stun.constants import (
    CHANNEL_MAX,
    CHANNEL_MAX_RFC5766,
    CHANNEL_MIN,
    FAMILY_IPV4,
    FAMILY_IPV6,
    REASONS,
    TRANSPORT_UDP,
)

_HH = struct.Struct("!HH")
#: the credit of an allocation without bandwidth cap or byte quota
UNLIMITED = 1 << 62

Key = Tuple[int, int]  # the salon socket a client reached (see natsalon.server.layout)
Client = Tuple[str, int]


class TurnConfig(NamedTuple):
    """TURN settings; every limit has an option in ``twistd natsalon``."""

    secrets: Tuple[bytes, ...] = ()
    realm: str = "natsalon"
    #: CIDRs opened for peers despite the default filter (tests, LANs)
    allow_peer: Tuple[str, ...] = ()
    relay_ports: Tuple[int, int] = (49152, 65535)
    default_lifetime: int = 600
    max_lifetime: int = 3600
    permission_lifetime: int = 300
    channel_lifetime: int = 600
    nonce_lifetime: int = 600
    #: allocations at once on this salon (508 beyond)
    max_allocations: int = 10000
    #: allocations at once per user (486 beyond); 0: no limit.  The user
    #: of a room credential is "room-<id>": for those, a room's allocations
    user_quota: int = 64
    #: allocations at once per source IP (an IPv6 source: its /64), all
    #: users together (486 beyond); 0: no limit.  Anyone past the cookie
    #: check gets room credentials for a room id of their choosing: this
    #: bounds what one host holds whatever rooms it names
    source_quota: int = 32
    #: bytes per second per allocation, both directions together, enforced
    #: by dropping; 0: no cap
    bandwidth: int = 0
    #: bytes per second per user, all of the user's allocations together,
    #: enforced by dropping: each sweep shares it equally among them (a new
    #: allocation gets its share at once, so within one sweep interval a
    #: user may exceed it by one share); 0: no cap
    user_bandwidth: int = 0
    #: bytes relayed per allocation over its life; 0: no quota
    byte_quota: int = 0
    #: permissions per allocation (coturn's limit)
    max_permissions: int = 1024
    #: seconds a response is kept for a retransmitted request (RFC 8656)
    transaction_ttl: float = 40.0
    max_cached: int = 65536
    #: seconds between sweeps (the bandwidth window)
    sweep_interval: float = 1.0
    #: accept channel numbers up to 0x7FFF (RFC 5766) as coturn and pion do,
    #: for coturn's own clients; False: RFC 8656's 0x4000-0x4FFF only
    rfc5766_channels: bool = True
    #: TURN over TCP on the salon's primary port too
    tcp: bool = True
    #: TURN over TLS (turns:) when a certificate is given: PEM files (the
    #: key may be in the certificate file: tls_key "") and the TCP port
    tls_cert: str = ""
    tls_key: str = ""
    tls_port: int = 5349
    #: the IP relayed addresses are given on; "" : the salon's advertised
    #: or bound address (the tap finds the host's one IPv4 address when
    #: the salon is bound to the wildcard)
    relay_ip: str = ""
    #: the other IP family's relay IP (REQUESTED-ADDRESS-FAMILY,
    #: ADDITIONAL-ADDRESS-FAMILY); "" : relayed addresses of relay_ip's
    #: family only
    second_relay_ip: str = ""


class Allocation:
    """One allocation's state.  ``permissions`` maps peer IP to expiry;
    ``bindings`` maps channel number to ``[peer, expiry]``; ``channels`` and
    ``peers`` are the live bindings (their permission holds) both ways,
    for the hot paths."""

    __slots__ = (
        "client", "via", "username", "user", "key", "sha256", "relayed", "started", "expires",
        "permissions", "bindings", "bound", "channels", "peers", "credit", "granted", "quota_left",
        "relayed_bytes", "dropped", "relay_write", "client_write", "relay_sendto", "client_sendto", "handle",
        "counted", "source", "relayed_extra", "handle_extra",
    )

    def __init__(self, client: Client, via: Key, username: str, user: str, key: bytes, now: float) -> None:
        self.client = client
        self.via = via
        self.username = username
        self.user = user
        self.key = key
        self.sha256 = False
        self.relayed: Optional[Address] = None
        self.started = now
        self.expires = now
        self.permissions: Dict[str, float] = {}
        self.bindings: Dict[int, list] = {}
        self.bound: Dict[Client, int] = {}
        self.channels: Dict[int, Client] = {}
        self.peers: Dict[Client, int] = {}
        self.credit = 0
        self.granted = 0
        self.quota_left = 0
        self.relayed_bytes = 0
        self.dropped = 0
        self.relay_write: Callable[[bytes, Client], None] = _nowhere
        self.client_write: Callable[[bytes, Client], None] = _nowhere
        #: the raw sends of the inline read loops (natsalon.server.fastport):
        #: they may raise OSError; client_sendto is None when the client is
        #: not on a datagram socket (TCP, TLS)
        self.relay_sendto: Callable[[bytes, Client], object] = _nowhere
        self.client_sendto: Optional[Callable[[bytes, Client], object]] = None
        self.handle = None
        #: the second relayed address of a dual allocation (IPv6), and its socket
        self.relayed_extra: Optional[Address] = None
        self.handle_extra = None
        self.counted = False
        self.source = source_key(client[0])


    def relayed_addresses(self) -> Tuple[Address, ...]:
        return (self.relayed,) if self.relayed_extra is None else (self.relayed, self.relayed_extra)

    def families(self) -> str:
        """"IPv4", "IPv6" or "IPv4 and IPv6": the relayed addresses' families."""
        return " and ".join("IPv%d" % _version(a.host) for a in self.relayed_addresses())

    def serves(self, host: str) -> bool:
        """Is ``host`` of the family of one of the relayed addresses?"""
        v6 = ":" in host
        return any((":" in a.host) == v6 for a in self.relayed_addresses())


def _nowhere(data, addr) -> None:
    pass


def source_key(host: str) -> str:
    """What the per-source quota counts: the IP, or an IPv6 address's /64."""
    if ":" not in host:
        return host
    try:
        return str(ipaddress.IPv6Network((host.split("%", 1)[0], 64), strict=False).network_address)
    except ValueError:
        return host


class _Auth(NamedTuple):
    username: str
    user: str
    key: bytes
    sha256: bool
    fingerprint: bool


class TurnCore:
    log = Logger()

    def __init__(self, config: TurnConfig, opener, auth: Optional[SharedSecretAuth] = None,
                 peer_filter: Optional[PeerFilter] = None, nonces: Optional[NonceJar] = None,
                 stats: Optional[Stats] = None, relay_ips=(), service_addresses=()) -> None:
        """``relay_ips``: the IPs relayed addresses are given on (peers there
        must be live relayed addresses); ``service_addresses``: the salon's
        own sockets, never peers."""
        self.config = config
        self.opener = opener
        self.auth = auth if auth is not None else SharedSecretAuth(config.secrets, config.realm)
        #: room credentials (:class:`RoomAuth`), beside the shared secrets
        self.room_auth: Optional[RoomAuth] = None
        self.filter = peer_filter if peer_filter is not None else PeerFilter(config.allow_peer)
        self.nonces = nonces if nonces is not None else NonceJar(config.nonce_lifetime)
        self.stats = stats if stats is not None else Stats()
        self.relay_ips = set(relay_ips)
        #: the IP versions relayed addresses are given in (IPv4 alone
        #: when no relay IP is named)
        self.versions = frozenset(ipaddress.ip_address(ip).version for ip in self.relay_ips) or frozenset({4})
        self.service_addresses = set(service_addresses)
        self._by_via: Dict[Key, Dict[Client, Allocation]] = {}
        self._relayed: Dict[Client, Allocation] = {}
        self._per_user: Dict[str, int] = {}
        self._per_source: Dict[str, int] = {}
        self._count = 0
        #: datagrams and payload bytes relayed, per direction: plain
        #: integers; the inline read loops (natsalon.server.fastport) fold
        #: theirs in once per batch.  The bytes to peers are not counted
        #: at all: every byte relayed either way is paid for with credit, so
        #: they are the credit used (:meth:`relayed_bytes`) less the bytes
        #: to clients (:attr:`to_peer_bytes`)
        self.to_peer_packets = 0
        self.to_client_packets = self.to_client_bytes = 0
        self.ended_bytes = 0  #: relayed by the allocations that ended, both ways
        #: datagrams dropped for lack of credit: over the bandwidth caps,
        #: or past the byte quota
        self.dropped_bandwidth = self.dropped_quota = 0
        self.on_delete: List[Callable[[Allocation], None]] = []  #: observers of ended allocations (metrics)
        self._cache: Dict[tuple, Tuple[float, bytes]] = {}
        #: relayed address -> {(allocation, channel)} bound to it by others
        self._self_bound: Dict[Client, set] = {}
        self._handlers = {
            Method.ALLOCATE: self._allocate,
            Method.REFRESH: self._refresh,
            Method.CREATE_PERMISSION: self._create_permission,
            Method.CHANNEL_BIND: self._channel_bind,
        }

    # ------------------------------------------------------------ queries

    def __len__(self) -> int:
        return self._count

    def get(self, client: Client, via: Key) -> Optional[Allocation]:
        allocs = self._by_via.get(via)
        return allocs.get(tuple(client)) if allocs is not None else None

    def channel_table(self, via: Key) -> Dict[Client, Allocation]:
        """The live allocations of the clients on salon socket ``via``, by
        client address: the dict :meth:`channel_data` looks in, for the
        inline read loop of that socket (kept for the core's lifetime)."""
        return self._by_via.setdefault(via, {})

    def allocations(self) -> List[Allocation]:
        return [a for allocs in self._by_via.values() for a in allocs.values()]

    def relayed_bytes(self) -> int:
        """Payload bytes relayed both ways so far: the credit every
        allocation used (a datagram is paid for once it is sent)."""
        return self.ended_bytes + sum(a.relayed_bytes + a.granted - a.credit for a in self.allocations())

    @property
    def to_peer_bytes(self) -> int:
        """Payload bytes relayed to peers (ChannelData, Send indications)."""
        return self.relayed_bytes() - self.to_client_bytes

    # ------------------------------------------------------------ hot paths

    def channel_data(self, data: bytes, addr: Client, via: Key) -> None:
        """ChannelData from a client: relay the payload to the bound peer."""
        allocs = self._by_via.get(via)
        alloc = allocs.get(addr) if allocs is not None else None
        if alloc is None or len(data) < 4:
            self.stats["turn_channel_data_dropped"] += 1
            return
        number, length = _HH.unpack_from(data)
        peer = alloc.channels.get(number)
        credit = alloc.credit - length
        if peer is None or len(data) < 4 + length:
            alloc.dropped += 1
            return
        if credit < 0:
            self._over_credit(alloc)
            return
        alloc.credit = credit
        self.to_peer_packets += 1
        alloc.relay_write(data[4:4 + length], peer)

    def _over_credit(self, alloc: Allocation) -> None:
        """Drop a datagram the allocation has no credit for (counted by
        cause: the byte quota when it is what limits this window's grant)."""
        alloc.dropped += 1
        if alloc.granted >= alloc.quota_left:
            self.dropped_quota += 1
        else:
            self.dropped_bandwidth += 1

    def from_peer(self, alloc: Allocation, data: bytes, addr: Client) -> None:
        """A datagram on ``alloc``'s relayed socket: to the client as
        ChannelData when the peer has a channel, as a Data indication when
        it has a permission, else dropped."""
        number = alloc.peers.get(addr)
        credit = alloc.credit - len(data)
        if number is None and addr[0] not in alloc.permissions:
            alloc.dropped += 1
            return
        if credit < 0:
            self._over_credit(alloc)
            return
        alloc.credit = credit
        self.to_client_packets += 1
        self.to_client_bytes += len(data)
        if number is not None:
            alloc.client_write(_HH.pack(number, len(data)) + data, alloc.client)
            return
        alloc.client_write(encode(Message(Method.DATA, Class.INDICATION, os.urandom(12), (
            (Attr.XOR_PEER_ADDRESS, Address(addr[0], addr[1])), (Attr.DATA, data)))), alloc.client)

    # ------------------------------------------------------------ messages

    def handle(self, msg: Message, source: Address, via: Key, now: float) -> Optional[bytes]:
        """The answer to a TURN request (None: no answer), or None after
        acting on a Send indication."""
        if msg.cls == Class.INDICATION:
            if msg.method == Method.SEND:
                self._send_indication(msg, (source.host, source.port), via)
            return None
        if msg.cls != Class.REQUEST:
            return None
        client = (source.host, source.port)
        tkey = (client, via, msg.transaction_id)
        cached = self._cache.get(tkey)
        if cached is not None:
            self.stats["turn_retransmission"] += 1
            return cached[1]
        if msg.classic:
            return self._error(msg, None, 400)
        auth = self._authenticate(msg, source, now)
        if not isinstance(auth, _Auth):
            return auth
        if msg.unknown_required:
            data = self._error(msg, auth, 420, ((Attr.UNKNOWN_ATTRIBUTES, msg.unknown_required),))
        else:
            handler = self._handlers.get(msg.method)
            if handler is None:
                data = self._error(msg, auth, 400)
            else:
                data = handler(msg, auth, client, via, now)
        self._remember(tkey, data, now)
        return data

    def _remember(self, tkey: tuple, data: bytes, now: float) -> None:
        cache = self._cache
        if len(cache) >= self.config.max_cached:
            del cache[next(iter(cache))]
        cache[tkey] = (now + self.config.transaction_ttl, data)

    def _authenticate(self, msg: Message, source: Address, now: float):
        """An :class:`_Auth`, or the bytes of the error answer (RFC 8489
        section 9.2.4)."""
        if not (msg.has(Attr.MESSAGE_INTEGRITY) or msg.has(Attr.MESSAGE_INTEGRITY_SHA256)):
            return self._challenge(msg, source, now, 401)
        username = msg.get(Attr.USERNAME)
        realm = msg.get(Attr.REALM)
        nonce = msg.get(Attr.NONCE)
        if username is None or realm is None or nonce is None:
            return self._error(msg, None, 400)
        if not self.nonces.check(nonce, source.host, now):
            return self._challenge(msg, source, now, 438)
        if realm == self.config.realm:
            keys = self.auth.keys(username, now)
            if self.room_auth is not None:
                keys = keys + self.room_auth.keys(username, now)
            for key in keys:
                if verify_integrity(msg, key):
                    return _Auth(username, self.auth.user(username), key,
                                 msg.has(Attr.MESSAGE_INTEGRITY_SHA256), msg.has(Attr.FINGERPRINT))
        self.stats["turn_auth_failed"] += 1
        return self._challenge(msg, source, now, 401)

    def _challenge(self, msg: Message, source: Address, now: float, code: int) -> bytes:
        self.stats["turn_%d" % code] += 1
        return encode(Message(msg.method, Class.ERROR, msg.transaction_id, (
            (Attr.ERROR_CODE, ErrorCode(code, "")),
            (Attr.REALM, self.config.realm),
            (Attr.NONCE, self.nonces.issue(source.host, now)),
        )))

    def _answer(self, msg: Message, auth: Optional[_Auth], cls: int, attrs) -> bytes:
        m = Message(msg.method, cls, msg.transaction_id, tuple(attrs), msg.classic)
        if auth is None:
            return encode(m, fingerprint=msg.has(Attr.FINGERPRINT))
        if auth.sha256:
            return encode(m, sha256_key=auth.key, fingerprint=auth.fingerprint)
        return encode(m, integrity_key=auth.key, fingerprint=auth.fingerprint)

    def _error(self, msg: Message, auth: Optional[_Auth], code: int, extra=()) -> bytes:
        self.stats["turn_%d" % code] += 1
        return self._answer(msg, auth, Class.ERROR,
                            ((Attr.ERROR_CODE, ErrorCode(code, REASONS.get(code, "Error"))),) + tuple(extra))

    def _lifetime(self, requested: Optional[int]) -> int:
        cfg = self.config
        if requested is None:
            return cfg.default_lifetime
        return min(max(requested, cfg.default_lifetime), cfg.max_lifetime)

    # ------------------------------------------------------------ Allocate

    def _allocate(self, msg: Message, auth: _Auth, client: Client, via: Key, now: float) -> bytes:
        refused = self._refuse_allocate(msg, auth, client, via)
        if refused is not None:
            return refused
        versions = self._versions(msg)
        if isinstance(versions, int):
            return self._error(msg, auth, versions)
        alloc = Allocation(client, via, auth.username, auth.user, auth.key, now)
        even = msg.get(Attr.EVEN_PORT) is not None
        relayed = self.opener.open(alloc, even, versions[0])
        if relayed is None:
            self.stats["turn_no_relay_port"] += 1
            return self._error(msg, auth, 508)
        extra = []
        if msg.get(Attr.ADDITIONAL_ADDRESS_FAMILY) is not None:
            extra = self._allocate_extra(alloc, even, versions)
        lifetime = self._lifetime(msg.get(Attr.LIFETIME))
        self._register(alloc, relayed, lifetime, now)
        self.log.info("TURN allocation for {user!r} on relay port {port} ({families}; {n} active)",
                      user=auth.username, port=relayed.port, families=alloc.families(), n=self._count)
        self.log.debug("TURN allocation for {client} relayed at {relayed}", client=client,
                       relayed=", ".join(map(str, alloc.relayed_addresses())))
        attrs = [(Attr.XOR_RELAYED_ADDRESS, a) for a in alloc.relayed_addresses()]
        attrs += [(Attr.LIFETIME, lifetime), (Attr.XOR_MAPPED_ADDRESS, Address(*client))] + extra
        return self._answer(msg, auth, Class.SUCCESS, attrs)

    def _versions(self, msg: Message):
        """The IP versions an Allocate asks for, the main one first
        (ADDITIONAL-ADDRESS-FAMILY adds IPv6 if it is on), or 440 when the
        main one is off (RFC 8656 section 7.2).  Without
        REQUESTED-ADDRESS-FAMILY: IPv4, or IPv6 on an IPv6-only relay
        (but not with ADDITIONAL-ADDRESS-FAMILY, which asks IPv4 too)."""
        family = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
        additional = msg.get(Attr.ADDITIONAL_ADDRESS_FAMILY) is not None  # then IPv4 first (400 otherwise)
        if family is not None:
            main = _VERSIONS.get(family, 0)
        else:
            main = 4 if additional or 4 in self.versions else 6
        if main not in self.versions:
            return 440
        return (main, 6) if additional and 6 in self.versions else (main,)

    def _allocate_extra(self, alloc: Allocation, even: bool, versions) -> list:
        """The IPv6 half of a dual allocation: ``alloc.relayed_extra`` set,
        or ADDRESS-ERROR-CODE attributes saying why not (440: IPv6 relaying
        off; 508: no port)."""
        if len(versions) < 2:
            return [(Attr.ADDRESS_ERROR_CODE, AddressErrorCode(FAMILY_IPV6, 440, REASONS[440]))]
        extra = self.opener.open(alloc, even, versions[1])
        if extra is None:
            self.stats["turn_no_relay_port"] += 1
            return [(Attr.ADDRESS_ERROR_CODE, AddressErrorCode(FAMILY_IPV6, 508, REASONS[508]))]
        alloc.relayed_extra = extra
        return []

    def _refuse_allocate(self, msg: Message, auth: _Auth, client: Client, via: Key) -> Optional[bytes]:
        """The error answer an Allocate gets before any state is made, or None."""
        cfg = self.config
        if self.get(client, via) is not None:
            return self._error(msg, auth, 437)
        transport = msg.get(Attr.REQUESTED_TRANSPORT)
        if transport is None:
            return self._error(msg, auth, 400)
        if transport != TRANSPORT_UDP:
            return self._error(msg, auth, 442)
        if msg.has(Attr.DONT_FRAGMENT):
            # we cannot set DF on relayed datagrams: RFC 8656 section 7.2
            # says to treat it as an unknown comprehension-required attribute
            return self._error(msg, auth, 420, ((Attr.UNKNOWN_ATTRIBUTES, (Attr.DONT_FRAGMENT,)),))
        family = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
        additional = msg.get(Attr.ADDITIONAL_ADDRESS_FAMILY)
        if msg.has(Attr.RESERVATION_TOKEN):
            if msg.has(Attr.EVEN_PORT) or family is not None or additional is not None:
                return self._error(msg, auth, 400)
            return self._error(msg, auth, 508)  # no token is ever valid: we make no reservations
        if additional is not None and (family is not None or additional != FAMILY_IPV6):
            return self._error(msg, auth, 400)
        if msg.get(Attr.EVEN_PORT):
            return self._error(msg, auth, 508)  # R bit: we do not reserve port pairs
        if self._count >= cfg.max_allocations:
            self.stats["turn_full"] += 1
            return self._error(msg, auth, 508)
        if cfg.user_quota and self._per_user.get(auth.user, 0) >= cfg.user_quota:
            self.stats["turn_user_quota"] += 1
            return self._error(msg, auth, 486)
        if cfg.source_quota and self._per_source.get(source_key(client[0]), 0) >= cfg.source_quota:
            self.stats["turn_source_quota"] += 1
            return self._error(msg, auth, 486)
        return None

    def _register(self, alloc: Allocation, relayed: Address, lifetime: int, now: float) -> None:
        alloc.relayed = relayed
        alloc.expires = now + lifetime
        alloc.quota_left = self.config.byte_quota or UNLIMITED
        self._per_user[alloc.user] = self._per_user.get(alloc.user, 0) + 1
        self._per_source[alloc.source] = self._per_source.get(alloc.source, 0) + 1
        self._grant(alloc)
        self._by_via.setdefault(alloc.via, {})[alloc.client] = alloc
        for addr in alloc.relayed_addresses():
            self._relayed[(addr.host, addr.port)] = alloc
        alloc.counted = True
        self._count += 1
        self.stats["turn_allocations"] += 1

    def _grant(self, alloc: Allocation) -> None:
        """The allocation's credit for the next sweep interval: its own
        bandwidth window, its share of its user's, what is left of its
        byte quota, whichever is least."""
        cfg = self.config
        window = int(cfg.bandwidth * cfg.sweep_interval) if cfg.bandwidth else UNLIMITED
        if cfg.user_bandwidth:
            share = int(cfg.user_bandwidth * cfg.sweep_interval) // max(1, self._per_user.get(alloc.user, 1))
            window = min(window, share)
        alloc.granted = alloc.credit = min(window, alloc.quota_left)

    # ------------------------------------------------------------ the others

    def _owned(self, msg: Message, auth: _Auth, client: Client, via: Key):
        """The allocation this request may act on, or the error answer."""
        alloc = self.get(client, via)
        if alloc is None:
            return self._error(msg, auth, 437)
        if alloc.username != auth.username:
            return self._error(msg, auth, 441)
        return alloc

    def _refresh(self, msg: Message, auth: _Auth, client: Client, via: Key, now: float) -> bytes:
        alloc = self._owned(msg, auth, client, via)
        if not isinstance(alloc, Allocation):
            return alloc
        family = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if family is not None and _VERSIONS.get(family) not in {_version(a.host) for a in alloc.relayed_addresses()}:
            return self._error(msg, auth, 443)
        requested = msg.get(Attr.LIFETIME)
        if requested == 0:
            self.delete(alloc, "deleted")
            lifetime = 0
        else:
            lifetime = self.config.default_lifetime if requested is None else min(requested, self.config.max_lifetime)
            alloc.expires = now + lifetime
        return self._answer(msg, auth, Class.SUCCESS, ((Attr.LIFETIME, lifetime),))

    def _peer_error(self, alloc: Allocation, peer: Address) -> int:
        """0 if ``peer`` may get a permission, else the error code."""
        if not alloc.serves(peer.host):
            return 443
        if not (self.filter.allows(peer.host) or peer.host in self.relay_ips):
            return 403
        return 0

    def destination_ok(self, peer: Client) -> bool:
        """May a datagram go to ``peer`` (a permitted IP)?  Never to the
        salon's own sockets; on the relay IPs only to live relayed
        addresses, unless an ``allow`` range opens them."""
        if peer in self.service_addresses:
            return False
        if peer[0] in self.relay_ips and peer not in self._relayed:
            return self.filter.explicitly_allowed(peer[0])
        return True

    def _permit(self, alloc: Allocation, host: str, now: float) -> None:
        alloc.permissions[host] = now + self.config.permission_lifetime
        for number, (peer, _) in alloc.bindings.items():
            if peer[0] == host and number not in alloc.channels:
                alloc.channels[number] = peer
                alloc.peers[peer] = number

    def _create_permission(self, msg: Message, auth: _Auth, client: Client, via: Key, now: float) -> bytes:
        alloc = self._owned(msg, auth, client, via)
        if not isinstance(alloc, Allocation):
            return alloc
        peers = [v for t, v in msg.attributes if t == Attr.XOR_PEER_ADDRESS]
        if not peers:
            return self._error(msg, auth, 400)
        for peer in peers:
            code = self._peer_error(alloc, peer)
            if code:
                return self._error(msg, auth, code)
        new = {p.host for p in peers} - set(alloc.permissions)
        if len(alloc.permissions) + len(new) > self.config.max_permissions:
            return self._error(msg, auth, 508)
        for peer in peers:
            self._permit(alloc, peer.host, now)
        self.stats["turn_permissions"] += len(new)
        return self._answer(msg, auth, Class.SUCCESS, ())

    def _channel_bind(self, msg: Message, auth: _Auth, client: Client, via: Key, now: float) -> bytes:
        alloc = self._owned(msg, auth, client, via)
        if not isinstance(alloc, Allocation):
            return alloc
        number = msg.get(Attr.CHANNEL_NUMBER)
        peer = msg.get(Attr.XOR_PEER_ADDRESS)
        top = CHANNEL_MAX_RFC5766 if self.config.rfc5766_channels else CHANNEL_MAX
        if number is None or peer is None or not CHANNEL_MIN <= number <= top:
            return self._error(msg, auth, 400)
        peer = Address(*peer)
        key = (peer.host, peer.port)
        binding = alloc.bindings.get(number)
        if (binding is not None and binding[0] != key) or alloc.bound.get(key, number) != number:
            return self._error(msg, auth, 400)
        code = self._peer_error(alloc, peer)
        if code:
            return self._error(msg, auth, code)
        if not self.destination_ok(key):
            return self._error(msg, auth, 403)
        if peer.host not in alloc.permissions and len(alloc.permissions) >= self.config.max_permissions:
            return self._error(msg, auth, 508)
        if binding is None:
            alloc.bindings[number] = [key, now + self.config.channel_lifetime]
            alloc.bound[key] = number
            if key in self._relayed:
                self._self_bound.setdefault(key, set()).add((alloc, number))
            self.stats["turn_channels"] += 1
        else:
            binding[1] = now + self.config.channel_lifetime
        self._permit(alloc, peer.host, now)
        return self._answer(msg, auth, Class.SUCCESS, ())

    def _send_indication(self, msg: Message, client: Client, via: Key) -> None:
        alloc = self.get(client, via)
        peer = msg.get(Attr.XOR_PEER_ADDRESS)
        data = msg.get(Attr.DATA)
        if alloc is None or peer is None or data is None:
            self.stats["turn_send_dropped"] += 1
            return
        key = (peer.host, peer.port)
        credit = alloc.credit - len(data)
        if peer.host not in alloc.permissions or not self.destination_ok(key):
            alloc.dropped += 1
            return
        if credit < 0:
            self._over_credit(alloc)
            return
        alloc.credit = credit
        self.to_peer_packets += 1
        alloc.relay_write(data, key)

    # ------------------------------------------------------------ time

    def _unbind(self, alloc: Allocation, number: int) -> None:
        peer, _ = alloc.bindings.pop(number)
        alloc.bound.pop(peer, None)
        if alloc.channels.pop(number, None) is not None:
            del alloc.peers[peer]
        dependents = self._self_bound.get(peer)
        if dependents is not None:
            dependents.discard((alloc, number))
            if not dependents:
                del self._self_bound[peer]

    def sweep(self, now: float) -> None:
        """Expire allocations, permissions and channels; refill the
        bandwidth credits; forget old cached responses."""
        for alloc in self.allocations():
            if alloc.expires <= now:
                self.delete(alloc, "expired")
                continue
            perms = alloc.permissions
            for host in [h for h, t in perms.items() if t <= now]:
                del perms[host]
                for number, peer in list(alloc.channels.items()):
                    if peer[0] == host:
                        del alloc.channels[number]
                        del alloc.peers[peer]
            for number in [n for n, b in alloc.bindings.items() if b[1] <= now]:
                self._unbind(alloc, number)
            used = alloc.granted - alloc.credit
            alloc.relayed_bytes += used
            if alloc.quota_left != UNLIMITED:
                alloc.quota_left = max(0, alloc.quota_left - used)
            self._grant(alloc)
        cache = self._cache
        while cache:
            tkey = next(iter(cache))
            if cache[tkey][0] > now:
                break
            del cache[tkey]

    def delete(self, alloc: Allocation, reason: str) -> None:
        """End ``alloc``: idempotent."""
        if not alloc.counted:
            return
        alloc.counted = False
        allocs = self._by_via.get(alloc.via)
        if allocs is not None and allocs.get(alloc.client) is alloc:
            del allocs[alloc.client]
        for addr in alloc.relayed_addresses():
            self._forget_relayed(alloc, (addr.host, addr.port))
        for number in list(alloc.bindings):
            self._unbind(alloc, number)
        _release(self._per_user, alloc.user)
        _release(self._per_source, alloc.source)
        self._count -= 1
        self.opener.close(alloc)
        alloc.relayed_bytes += alloc.granted - alloc.credit
        alloc.granted = alloc.credit = 0
        self.ended_bytes += alloc.relayed_bytes
        for observe in self.on_delete:
            observe(alloc)
        self.stats["turn_allocations_" + reason] += 1
        self.log.info("TURN allocation for {user!r} on relay port {port} ({families}) {reason}: {bytes} bytes "
                      "relayed, {dropped} datagrams dropped ({n} active)", user=alloc.username,
                      port=alloc.relayed.port, families=alloc.families(), reason=reason,
                      bytes=alloc.relayed_bytes, dropped=alloc.dropped, n=self._count)

    def _forget_relayed(self, alloc: Allocation, relayed: Client) -> None:
        """``relayed`` (one of ``alloc``'s addresses) is no longer live: the
        channels others bound to it go."""
        if self._relayed.get(relayed) is alloc:
            del self._relayed[relayed]
        for other, number in list(self._self_bound.get(relayed, ())):
            if other is not alloc and number in other.bindings:
                self._unbind(other, number)

    def close_all(self) -> None:
        for alloc in self.allocations():
            self.delete(alloc, "closed")


#: REQUESTED-ADDRESS-FAMILY values and the IP versions they name
_VERSIONS = {FAMILY_IPV4: 4, FAMILY_IPV6: 6}


def _version(host: str) -> int:
    return 6 if ":" in host else 4


def _release(counts: Dict[str, int], key: str) -> None:
    """One allocation fewer for ``key`` (a user, a source)."""
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)
