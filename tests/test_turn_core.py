"""The sans-IO TURN core with plain numbers: every method and every error
answer, lifetimes, the transaction cache, quotas and the peer filter."""

from __future__ import annotations

import itertools

import pytest

from natsalon.server.turn import NonceJar, SharedSecretAuth, TurnConfig, TurnCore, mint
from natsalon.server.turn.auth import split_username
from natsalon.stun import Address, Attr, Class, Message, Method, decode, encode, long_term_key, verify_integrity
from natsalon.stun.attributes import AddressErrorCode

SECRET = b"north-secret"
NOW = 1_700_000_000.0
REALM = "natsalon"
RELAY_IP = "192.0.2.1"
CLIENT = Address("198.51.100.7", 40000)
VIA = (0, 0)
PEER = Address("203.0.113.5", 5000)
_txids = itertools.count(1)


def txid() -> bytes:
    return next(_txids).to_bytes(12, "big")


class FakeOpener:
    """Hands out relayed addresses and records what goes through them."""

    def __init__(self, ip: str = RELAY_IP) -> None:
        self.ip = ip
        self.ports = itertools.count(50000)
        self.fail = False
        self.closed = []
        self.to_peers = []  # (allocation, data, peer)
        self.to_clients = []  # (data, client)

    def open(self, alloc, even=False, version=4):
        if self.fail:
            return None
        self.even = even
        alloc.relay_write = lambda data, addr: self.to_peers.append((alloc, data, addr))
        alloc.client_write = lambda data, addr: self.to_clients.append((data, addr))
        return Address(self.ip, next(self.ports))

    def close(self, alloc):
        self.closed.append(alloc)


def make_core(opener=None, **config):
    opener = opener or FakeOpener()
    config.setdefault("secrets", (SECRET,))
    core = TurnCore(TurnConfig(**config), opener, nonces=NonceJar(600, key=b"n" * 16),
                    relay_ips={opener.ip}, service_addresses={(opener.ip, 3478)})
    return core, opener


class Client:
    """Speaks to the core as a TURN client on CLIENT would."""

    def __init__(self, core, addr=CLIENT, user="alice", expiry=NOW + 3600, secret=SECRET, sha256=False,
                 via=VIA) -> None:
        self.core = core
        self.addr = addr
        self.via = via
        self.username, self.password = mint(secret, user, int(expiry))
        self.key = long_term_key(self.username, REALM, self.password)
        self.sha256 = sha256
        self.nonce = None

    def raw(self, method, attrs=(), now=NOW, auth=True, tx=None, cls=Class.REQUEST):
        if auth and self.nonce is None:
            challenge = self.send(encode(Message(method, Class.REQUEST, txid(), ())), now)
            assert challenge.get(Attr.ERROR_CODE).code == 401
            self.nonce = challenge.get(Attr.NONCE)
        msg = Message(method, cls, tx or txid(), tuple(attrs) + ((
            (Attr.USERNAME, self.username), (Attr.REALM, REALM), (Attr.NONCE, self.nonce)) if auth else ()))
        if not auth:
            return encode(msg)
        if self.sha256:
            return encode(msg, sha256_key=self.key)
        return encode(msg, integrity_key=self.key)

    def send(self, data: bytes, now=NOW):
        out = self.core.handle(decode(data), self.addr, self.via, now)
        return None if out is None else decode(out)

    def request(self, method, attrs=(), now=NOW, **kw):
        resp = self.send(self.raw(method, attrs, now, **kw), now)
        if resp is not None and resp.cls == Class.SUCCESS:
            assert verify_integrity(resp, self.key)
            assert resp.has(Attr.MESSAGE_INTEGRITY_SHA256) == self.sha256
        return resp

    def allocate(self, attrs=((Attr.REQUESTED_TRANSPORT, 17),), now=NOW, **kw):
        return self.request(Method.ALLOCATE, attrs, now, **kw)

    def permit(self, *peers, now=NOW):
        return self.request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, p) for p in peers], now)

    def bind(self, number, peer, now=NOW):
        return self.request(Method.CHANNEL_BIND, ((Attr.CHANNEL_NUMBER, number), (Attr.XOR_PEER_ADDRESS, peer)),
                            now)

    def refresh(self, lifetime=None, now=NOW, **kw):
        attrs = () if lifetime is None else ((Attr.LIFETIME, lifetime),)
        return self.request(Method.REFRESH, attrs, now, **kw)


def code(resp) -> int:
    assert resp.cls == Class.ERROR, resp
    return resp.get(Attr.ERROR_CODE).code


@pytest.fixture
def core():
    return make_core()


# ------------------------------------------------------------ credentials


def test_mint_matches_coturn_rest_api():
    username, password = mint(b"secret", "alice", 1700000000)
    assert username == "1700000000:alice"
    # base64(HMAC-SHA1("secret", "1700000000:alice")), as coturn computes it
    import base64
    import hashlib
    import hmac
    assert password == base64.b64encode(hmac.new(b"secret", username.encode(), hashlib.sha1).digest()).decode()
    assert split_username("alice:1700000000") == (1700000000, "alice")
    assert split_username("1700000000") == (1700000000, "")
    assert split_username("alice") == (None, "alice")


def test_shared_secret_expiry_and_rotation():
    auth = SharedSecretAuth([b"old", b"new"], REALM)
    username, password = mint(b"new", "bob", 100)
    keys = auth.keys(username, 99)
    assert long_term_key(username, REALM, password) in keys and len(keys) == 2
    assert auth.keys(username, 101) == []
    assert auth.keys("bob", 0) == []
    assert auth.user(username) == "bob"


def test_nonces():
    jar = NonceJar(600, key=b"k" * 16)
    nonce = jar.issue("198.51.100.7", NOW)
    assert jar.check(nonce, "198.51.100.7", NOW + 599)
    assert not jar.check(nonce, "198.51.100.7", NOW + 601)
    assert not jar.check(nonce, "198.51.100.8", NOW)
    assert not jar.check(nonce[:-1] + "A", "198.51.100.7", NOW) or nonce.endswith("A")
    for junk in ("", "-", "zz-abc", "1" * 40 + "-x", "nonce"):
        assert not jar.check(junk, "198.51.100.7", NOW)


def test_unauthenticated_request_gets_401_with_realm_and_nonce(core):
    core, _ = core
    req = encode(Message(Method.ALLOCATE, Class.REQUEST, txid(), ((Attr.REQUESTED_TRANSPORT, 17),)))
    out = core.handle(decode(req), CLIENT, VIA, NOW)
    resp = decode(out)
    assert code(resp) == 401
    assert resp.get(Attr.REALM) == REALM and resp.get(Attr.NONCE)
    assert not resp.has(Attr.MESSAGE_INTEGRITY)
    assert len(out) <= 3 * len(req)  # the documented byte ratio
    assert len(core) == 0 and not core._cache  # stateless


def test_missing_username_is_400(core):
    core, _ = core
    c = Client(core)
    c.nonce = "x"
    data = encode(Message(Method.ALLOCATE, Class.REQUEST, txid(), ((Attr.REALM, REALM), (Attr.NONCE, "x"))),
                  integrity_key=c.key)
    assert code(c.send(data)) == 400


def test_stale_or_forged_nonce_is_438(core):
    core, _ = core
    c = Client(core)
    assert c.allocate().cls == Class.SUCCESS
    resp = c.refresh(now=NOW + 601)
    assert code(resp) == 438 and resp.get(Attr.NONCE) != c.nonce and resp.get(Attr.REALM) == REALM
    c.nonce = resp.get(Attr.NONCE)
    assert c.refresh(now=NOW + 601).cls == Class.SUCCESS
    c.nonce = "abc-def"
    assert code(c.refresh(now=NOW + 601)) == 438


@pytest.mark.parametrize("case", ["password", "expired", "secret", "realm"])
def test_bad_credentials_are_401(core, case):
    core, _ = core
    c = Client(core, expiry=NOW - 1 if case == "expired" else NOW + 60,
               secret=b"other" if case == "secret" else SECRET)
    if case == "password":
        c.key = long_term_key(c.username, REALM, "wrong")
    raw = c.raw(Method.ALLOCATE, ((Attr.REQUESTED_TRANSPORT, 17),))
    if case == "realm":
        m = decode(raw)
        attrs = tuple((t, "other" if t == Attr.REALM else v) for t, v in m.attributes)
        raw = encode(Message(m.method, m.cls, m.transaction_id, attrs), integrity_key=c.key)
    resp = c.send(raw)
    assert code(resp) == 401 and resp.get(Attr.NONCE)
    assert len(core) == 0


def test_rotated_secrets_both_work():
    core, _ = make_core(secrets=(b"old", b"new"))
    assert Client(core, secret=b"old").allocate().cls == Class.SUCCESS
    assert Client(core, addr=Address("198.51.100.8", 1), secret=b"new").allocate().cls == Class.SUCCESS
    assert len(core) == 2


# ------------------------------------------------------------ Allocate


def test_allocate(core):
    core, opener = core
    resp = Client(core).allocate()
    assert resp.cls == Class.SUCCESS
    assert resp.get(Attr.XOR_RELAYED_ADDRESS) == Address(RELAY_IP, 50000)
    assert resp.get(Attr.LIFETIME) == 600
    assert resp.get(Attr.XOR_MAPPED_ADDRESS) == CLIENT
    alloc = core.get(CLIENT, VIA)
    assert alloc.user == "alice" and alloc.expires == NOW + 600
    assert len(core) == 1


def test_allocate_sha256_answered_with_sha256(core):
    core, _ = core
    resp = Client(core, sha256=True).allocate()
    assert resp.cls == Class.SUCCESS and not resp.has(Attr.MESSAGE_INTEGRITY)


def test_allocate_fingerprint_echoed(core):
    core, _ = core
    c = Client(core)
    c.allocate()
    m = decode(c.raw(Method.REFRESH))
    raw = encode(Message(m.method, m.cls, m.transaction_id, m.attributes), integrity_key=c.key, fingerprint=True)
    assert c.send(raw).has(Attr.FINGERPRINT)


@pytest.mark.parametrize("requested, granted", [(None, 600), (30, 600), (1200, 1200), (100000, 3600)])
def test_allocate_lifetime(core, requested, granted):
    core, _ = core
    attrs = ((Attr.REQUESTED_TRANSPORT, 17),) + (((Attr.LIFETIME, requested),) if requested else ())
    assert Client(core).allocate(attrs).get(Attr.LIFETIME) == granted


def test_second_allocate_is_437_but_a_retransmission_is_answered_again(core):
    core, opener = core
    c = Client(core)
    tx = txid()
    raw = c.raw(Method.ALLOCATE, ((Attr.REQUESTED_TRANSPORT, 17),), tx=tx)
    first = core.handle(decode(raw), CLIENT, VIA, NOW)
    assert core.handle(decode(raw), CLIENT, VIA, NOW + 39) == first
    assert code(c.allocate()) == 437
    # another salon socket is another 5-tuple
    assert Client(core, via=(0, 1)).allocate().cls == Class.SUCCESS
    # the cache forgets after 40 s
    core.sweep(NOW + 41)
    assert code(c.send(raw, NOW + 41)) == 437


@pytest.mark.parametrize("attrs, expected", [
    ((), 400),
    (((Attr.REQUESTED_TRANSPORT, 6),), 442),
    (((Attr.REQUESTED_TRANSPORT, 17), (Attr.DONT_FRAGMENT, b"")), 420),
    (((Attr.REQUESTED_TRANSPORT, 17), (0x7F00, b"??")), 420),
    (((Attr.REQUESTED_TRANSPORT, 17), (Attr.EVEN_PORT, True)), 508),  # R bit: no reservations
    (((Attr.REQUESTED_TRANSPORT, 17), (Attr.RESERVATION_TOKEN, bytes(8))), 508),
    (((Attr.REQUESTED_TRANSPORT, 17), (Attr.RESERVATION_TOKEN, bytes(8)), (Attr.EVEN_PORT, False)), 400),
    (((Attr.REQUESTED_TRANSPORT, 17), (Attr.RESERVATION_TOKEN, bytes(8)), (Attr.REQUESTED_ADDRESS_FAMILY, 1)),
     400),
    (((Attr.REQUESTED_TRANSPORT, 17), (Attr.REQUESTED_ADDRESS_FAMILY, 2)), 440),
    (((Attr.REQUESTED_TRANSPORT, 17), (Attr.REQUESTED_ADDRESS_FAMILY, 9)), 440),
    (((Attr.REQUESTED_TRANSPORT, 17), (Attr.ADDITIONAL_ADDRESS_FAMILY, 1)), 400),
    (((Attr.REQUESTED_TRANSPORT, 17), (Attr.ADDITIONAL_ADDRESS_FAMILY, 2), (Attr.REQUESTED_ADDRESS_FAMILY, 1)),
     400),
])
def test_allocate_errors(core, attrs, expected):
    core, _ = core
    resp = Client(core).allocate(attrs)
    assert code(resp) == expected
    assert verify_integrity(resp, Client(core).key)  # authenticated errors are signed
    if expected == 420:
        assert resp.get(Attr.UNKNOWN_ATTRIBUTES)
    assert len(core) == 0


def test_even_port_without_reservation_is_honoured(core):
    core, opener = core
    assert Client(core).allocate(((Attr.REQUESTED_TRANSPORT, 17), (Attr.EVEN_PORT, False))).cls == Class.SUCCESS
    assert opener.even is True


def test_additional_family_ipv6_gets_ipv4_and_address_error(core):
    core, _ = core
    resp = Client(core).allocate(((Attr.REQUESTED_TRANSPORT, 17), (Attr.ADDITIONAL_ADDRESS_FAMILY, 2)))
    assert resp.cls == Class.SUCCESS
    assert resp.get(Attr.ADDRESS_ERROR_CODE) == AddressErrorCode(2, 440, "Address Family not Supported")


def test_user_quota_486_and_release():
    core, _ = make_core(user_quota=2)
    clients = [Client(core, addr=Address("198.51.100.7", 1000 + i)) for i in range(3)]
    assert [c.allocate().cls for c in clients[:2]] == [Class.SUCCESS] * 2
    assert code(clients[2].allocate()) == 486
    # another user is not affected
    assert Client(core, addr=Address("198.51.100.9", 1), user="bob").allocate().cls == Class.SUCCESS
    clients[0].refresh(0)
    assert clients[2].allocate().cls == Class.SUCCESS


def test_global_cap_and_no_port_are_508():
    core, opener = make_core(max_allocations=1)
    assert Client(core).allocate().cls == Class.SUCCESS
    assert code(Client(core, addr=Address("198.51.100.9", 1), user="bob").allocate()) == 508
    core, opener = make_core()
    opener.fail = True
    assert code(Client(core).allocate()) == 508
    assert len(core) == 0


# ------------------------------------------------------------ Refresh


def test_refresh(core):
    core, opener = core
    c = Client(core)
    assert code(c.refresh()) == 437
    c.allocate()
    assert c.refresh(now=NOW + 100).get(Attr.LIFETIME) == 600
    assert core.get(CLIENT, VIA).expires == NOW + 700
    assert c.refresh(60, now=NOW + 100).get(Attr.LIFETIME) == 60
    assert c.refresh(99999, now=NOW + 100).get(Attr.LIFETIME) == 3600
    assert code(c.request(Method.REFRESH, ((Attr.REQUESTED_ADDRESS_FAMILY, 2),))) == 443


def test_refresh_zero_deletes_and_its_retransmission_succeeds(core):
    core, opener = core
    c = Client(core)
    c.allocate()
    tx = txid()
    raw = c.raw(Method.REFRESH, ((Attr.LIFETIME, 0),), tx=tx)
    first = c.send(raw)
    assert first.cls == Class.SUCCESS and first.get(Attr.LIFETIME) == 0
    assert len(core) == 0 and len(opener.closed) == 1
    assert c.send(raw) == first
    assert code(c.refresh(0)) == 437


def test_other_user_on_same_5tuple_is_441(core):
    core, _ = core
    Client(core).allocate()
    mallory = Client(core, user="mallory")
    assert code(mallory.refresh()) == 441
    assert code(mallory.permit(PEER)) == 441
    assert code(mallory.bind(0x4000, PEER)) == 441


def test_allocation_expires_on_sweep(core):
    core, opener = core
    c = Client(core)
    c.allocate()
    core.sweep(NOW + 599)
    assert len(core) == 1
    core.sweep(NOW + 600)
    assert len(core) == 0 and opener.closed
    assert core.stats["turn_allocations_expired"] == 1


# ------------------------------------------------------------ permissions


@pytest.mark.parametrize("peer", ["10.1.2.3", "127.0.0.1", "100.64.0.1", "169.254.1.1", "224.0.0.1", "0.0.0.0",
                                  "192.168.1.1", "172.16.0.1", "255.255.255.255"])
def test_permission_to_private_peers_is_403(core, peer):
    core, _ = core
    c = Client(core)
    c.allocate()
    assert code(c.permit(Address(peer, 1234))) == 403
    assert code(c.permit(PEER, Address(peer, 1234))) == 403  # all or nothing
    assert code(c.bind(0x4000, Address(peer, 1234))) == 403
    assert core.get(CLIENT, VIA).permissions == {}


def test_allow_peer_opens_a_range():
    core, _ = make_core(allow_peer=("10.0.0.0/8",))
    c = Client(core)
    c.allocate()
    assert c.permit(Address("10.1.2.3", 1)).cls == Class.SUCCESS
    assert code(c.permit(Address("192.168.1.1", 1))) == 403


def test_create_permission(core):
    core, _ = core
    c = Client(core)
    assert code(c.permit(PEER)) == 437
    c.allocate()
    assert code(c.request(Method.CREATE_PERMISSION)) == 400
    assert code(c.permit(Address("2001:db8::1", 1))) == 443
    assert c.permit(PEER, Address("203.0.113.6", 1)).cls == Class.SUCCESS
    alloc = core.get(CLIENT, VIA)
    assert alloc.permissions == {"203.0.113.5": NOW + 300, "203.0.113.6": NOW + 300}
    c.permit(PEER, now=NOW + 200)
    core.sweep(NOW + 300)
    assert alloc.permissions == {"203.0.113.5": NOW + 500}


def test_permission_limit_is_508():
    core, _ = make_core(max_permissions=2)
    c = Client(core)
    c.allocate()
    assert c.permit(Address("203.0.113.1", 1), Address("203.0.113.2", 1)).cls == Class.SUCCESS
    assert code(c.permit(Address("203.0.113.3", 1))) == 508
    assert c.permit(Address("203.0.113.2", 9)).cls == Class.SUCCESS  # a refresh needs no room


# ------------------------------------------------------------ relaying


def send_indication(c, peer, data):
    return c.send(encode(Message(Method.SEND, Class.INDICATION, txid(),
                                 ((Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, data)))))


def test_send_and_data_indications(core):
    core, opener = core
    c = Client(core)
    c.allocate()
    alloc = core.get(CLIENT, VIA)
    assert send_indication(c, PEER, b"early") is None
    core.from_peer(alloc, b"unasked", (PEER.host, PEER.port))
    assert opener.to_peers == [] and opener.to_clients == []
    c.permit(PEER)
    send_indication(c, Address(PEER.host, 9), b"hello")
    assert opener.to_peers == [(alloc, b"hello", (PEER.host, 9))]
    core.from_peer(alloc, b"back", (PEER.host, 7))
    [(data, to)] = opener.to_clients
    assert to == CLIENT
    ind = decode(data)
    assert (ind.method, ind.cls) == (Method.DATA, Class.INDICATION)
    assert ind.get(Attr.XOR_PEER_ADDRESS) == Address(PEER.host, 7) and ind.get(Attr.DATA) == b"back"
    # an indication without an allocation, or to the salon itself, goes nowhere
    assert send_indication(Client(core, addr=Address("198.51.100.99", 1)), PEER, b"x") is None
    assert len(opener.to_peers) == 1


@pytest.mark.parametrize("number", [0x3FFF, 0x8000, 0xFFFF, 0])
def test_channel_number_out_of_range_is_400(core, number):
    core, _ = core
    c = Client(core)
    c.allocate()
    assert code(c.bind(number, PEER)) == 400


def test_channel_ranges():
    """0x5000-0x7FFF: RFC 5766's range, used by turnutils_uclient; refused
    in strict RFC 8656 mode."""
    for strict, expected in ((False, Class.SUCCESS), (True, Class.ERROR)):
        core, _ = make_core(rfc5766_channels=not strict)
        c = Client(core)
        c.allocate()
        assert c.bind(0x4FFF, PEER).cls == Class.SUCCESS
        assert c.bind(0x7FFF, Address(PEER.host, 1)).cls == expected


def test_channel_bind_and_channel_data_both_ways(core):
    core, opener = core
    c = Client(core)
    assert code(c.bind(0x4000, PEER)) == 437
    c.allocate()
    assert code(c.request(Method.CHANNEL_BIND, ((Attr.CHANNEL_NUMBER, 0x4000),))) == 400
    assert code(c.bind(0x4000, Address("2001:db8::1", 1))) == 443
    assert c.bind(0x4000, PEER).cls == Class.SUCCESS
    alloc = core.get(CLIENT, VIA)
    assert alloc.permissions == {PEER.host: NOW + 300}  # a ChannelBind installs the permission
    # the same number to another peer, or another number to the same peer: 400
    assert code(c.bind(0x4000, Address(PEER.host, 1))) == 400
    assert code(c.bind(0x4001, PEER)) == 400
    # rebinding the same pair refreshes it
    assert c.bind(0x4000, PEER, now=NOW + 100).cls == Class.SUCCESS
    assert alloc.bindings[0x4000][1] == NOW + 700
    core.channel_data(b"\x40\x00\x00\x03abc\x00", CLIENT, VIA)  # padded, as over TCP
    assert opener.to_peers == [(alloc, b"abc", (PEER.host, PEER.port))]
    core.from_peer(alloc, b"reply", (PEER.host, PEER.port))
    assert opener.to_clients == [(b"\x40\x00\x00\x05reply", CLIENT)]
    # unbound channel, short or truncated frames, other clients: dropped
    for frame, addr in [(b"\x40\x01\x00\x01x", CLIENT), (b"\x40\x00", CLIENT), (b"\x40\x00\x00\x09abc", CLIENT),
                        (b"\x40\x00\x00\x01x", ("198.51.100.99", 1))]:
        core.channel_data(frame, addr, VIA)
    core.channel_data(b"\x40\x00\x00\x01x", CLIENT, (0, 1))
    assert len(opener.to_peers) == 1


def test_channel_follows_its_permission_and_expires(core):
    core, opener = core
    c = Client(core)
    c.allocate(((Attr.REQUESTED_TRANSPORT, 17), (Attr.LIFETIME, 3600)))
    c.bind(0x4000, PEER)
    alloc = core.get(CLIENT, VIA)
    core.sweep(NOW + 300)  # the permission lapses, the binding stays
    assert 0x4000 in alloc.bindings and alloc.channels == {}
    core.channel_data(b"\x40\x00\x00\x01x", CLIENT, VIA)
    assert opener.to_peers == []
    c.permit(PEER, now=NOW + 301)  # a new permission revives the channel
    core.channel_data(b"\x40\x00\x00\x01y", CLIENT, VIA)
    assert len(opener.to_peers) == 1
    core.sweep(NOW + 600)
    assert alloc.bindings == {} and alloc.bound == {} and alloc.channels == {} and alloc.peers == {}
    # once expired, the number may go to another peer
    c.nonce = core.nonces.issue(CLIENT.host, NOW + 601)
    assert c.bind(0x4000, Address(PEER.host, 1), now=NOW + 601).cls == Class.SUCCESS


def test_relay_to_another_allocations_relayed_address():
    """Both WebRTC sides on the same relay: its IP is private here (denied
    by the default filter), yet the other relayed address is a valid peer,
    and only that."""
    core, opener = make_core(FakeOpener(ip="10.9.9.9"))
    a = Client(core)
    b = Client(core, addr=Address("198.51.100.8", 2000), user="bob")
    relayed_b = b.allocate().get(Attr.XOR_RELAYED_ADDRESS)
    relayed_a = a.allocate().get(Attr.XOR_RELAYED_ADDRESS)
    assert a.bind(0x4000, relayed_b).cls == Class.SUCCESS
    assert b.bind(0x4000, relayed_a).cls == Class.SUCCESS
    assert code(a.bind(0x4001, Address("10.9.9.9", 3478))) == 403  # the salon's own socket
    assert code(a.bind(0x4002, Address("10.9.9.9", 9))) == 403  # not a relayed address
    assert code(a.permit(Address("10.9.9.8", 9))) == 403
    alloc_a = core.get(CLIENT, VIA)
    core.channel_data(b"\x40\x00\x00\x02hi", CLIENT, VIA)
    assert opener.to_peers == [(alloc_a, b"hi", tuple(relayed_b))]
    send_indication(a, Address("10.9.9.9", 9), b"no")
    send_indication(a, Address("10.9.9.9", 3478), b"no")
    assert len(opener.to_peers) == 1
    # B's allocation ends: A's channel to its relayed address goes with it
    b.refresh(0)
    assert alloc_a.channels == {} and alloc_a.bindings == {}
    core.channel_data(b"\x40\x00\x00\x02hi", CLIENT, VIA)
    assert len(opener.to_peers) == 1


def test_bandwidth_cap_drops_then_refills():
    core, opener = make_core(bandwidth=1000)
    c = Client(core)
    c.allocate()
    c.bind(0x4000, PEER)
    alloc = core.get(CLIENT, VIA)
    frame = b"\x40\x00\x02\x58" + bytes(600)
    core.channel_data(frame, CLIENT, VIA)
    core.channel_data(frame, CLIENT, VIA)
    core.from_peer(alloc, bytes(600), (PEER.host, PEER.port))
    assert len(opener.to_peers) == 1 and opener.to_clients == [] and alloc.dropped == 2
    core.sweep(NOW + 1)
    core.from_peer(alloc, bytes(600), (PEER.host, PEER.port))
    assert len(opener.to_clients) == 1 and alloc.relayed_bytes == 600


def test_byte_quota():
    core, opener = make_core(byte_quota=1000)
    c = Client(core)
    c.allocate()
    c.bind(0x4000, PEER)
    frame = b"\x40\x00\x02\x58" + bytes(600)
    for t in range(3):
        core.channel_data(frame, CLIENT, VIA)
        core.sweep(NOW + t + 1)
    assert len(opener.to_peers) == 1
    c.refresh(0)
    assert core.get(CLIENT, VIA) is None


def test_unknown_method_and_classic_requests(core):
    core, _ = core
    c = Client(core)
    assert code(c.request(0x00A)) == 400
    classic = encode(Message(Method.ALLOCATE, Class.REQUEST, bytes(range(1, 17)), (), classic=True))
    assert code(c.send(classic)) == 400
    # responses and stray indications are not answered
    assert c.send(encode(Message(Method.ALLOCATE, Class.SUCCESS, txid()))) is None
    assert c.send(encode(Message(Method.DATA, Class.INDICATION, txid()))) is None


def test_close_all_is_idempotent(core):
    core, opener = core
    for i in range(3):
        Client(core, addr=Address("198.51.100.7", 100 + i)).allocate()
    core.close_all()
    core.close_all()
    assert len(core) == 0 and len(opener.closed) == 3


def test_core_loads_no_reactor():
    import subprocess
    import sys

    code = "import sys, natsalon.server.turn; print([m for m in sys.modules if m.startswith('twisted.internet')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_user_bandwidth_is_shared_by_the_users_allocations():
    core, opener = make_core(user_bandwidth=1000)
    a = Client(core)
    a.allocate()
    a.bind(0x4000, PEER)
    first = core.get(CLIENT, VIA)
    assert first.credit == 1000
    b = Client(core, addr=Address("198.51.100.7", 40001))
    b.allocate()
    b.bind(0x4000, PEER)
    second = core.get(b.addr, VIA)
    assert second.credit == 500  # its share at once
    bob = Client(core, addr=Address("198.51.100.9", 1), user="bob")
    bob.allocate()
    assert core.get(bob.addr, VIA).credit == 1000  # another user: its own cap
    core.sweep(NOW + 1)
    assert (first.credit, second.credit) == (500, 500)
    frame = b"\x40\x00\x01\x2c" + bytes(300)  # 300 bytes
    core.channel_data(frame, CLIENT, VIA)
    core.channel_data(frame, CLIENT, VIA)
    assert len(opener.to_peers) == 1 and first.dropped == 1
    b.refresh(0)
    core.sweep(NOW + 2)
    assert first.credit == 1000  # alone again: the whole cap
    core.channel_data(frame, CLIENT, VIA)
    core.channel_data(frame, CLIENT, VIA)
    assert len(opener.to_peers) == 3


def test_user_bandwidth_and_allocation_bandwidth_least_wins():
    core, _ = make_core(user_bandwidth=1000, bandwidth=300)
    Client(core).allocate()
    assert core.get(CLIENT, VIA).credit == 300


# ------------------------------------------------------------ rooms, sources, counters

def room_client(core, secret, room_id, addr, now=NOW):
    """A client holding the room credentials the introducer hands out."""
    from natsalon.server.turn.auth import room_credentials

    c = Client(core, addr=addr)
    c.username, c.password = room_credentials(secret, room_id, now)
    c.key = long_term_key(c.username, REALM, c.password)
    return c


def test_room_credentials_cap_a_rooms_allocations():
    """A room credential's user is "room-<id>": the per-user quota counts
    one room's allocations, whichever hosts make them."""
    from natsalon.server.turn.auth import RoomAuth, room_secret

    secret = room_secret(b"cookie secret of this salon......")
    core, _ = make_core(user_quota=2, source_quota=0)
    core.room_auth = RoomAuth([secret], REALM)
    room, other = b"R" * 16, b"S" * 16
    members = [room_client(core, secret, room, Address("198.51.100.%d" % (10 + i), 4000)) for i in range(3)]
    assert [m.allocate().cls for m in members[:2]] == [Class.SUCCESS] * 2
    assert code(members[2].allocate()) == 486
    assert core.stats["turn_user_quota"] == 1 and core.stats["turn_source_quota"] == 0
    # another room is not affected, from the same hosts
    assert room_client(core, secret, other, Address("198.51.100.10", 4001)).allocate().cls == Class.SUCCESS
    members[0].refresh(0)
    assert members[2].allocate().cls == Class.SUCCESS
    # the room secret grants room users only, and the shared secret is no room secret
    assert code(Client(core, addr=Address("198.51.100.20", 1), user="alice", secret=secret).allocate()) == 401
    bare, _ = make_core()
    assert code(room_client(bare, secret, room, Address("198.51.100.30", 1)).allocate()) == 401


def test_source_quota_counts_every_user_and_room_of_one_ip():
    core, _ = make_core(source_quota=2, user_quota=0)
    users = [Client(core, addr=Address("198.51.100.7", 1000 + i), user="u%d" % i) for i in range(3)]
    assert [u.allocate().cls for u in users[:2]] == [Class.SUCCESS] * 2
    assert code(users[2].allocate()) == 486
    assert core.stats["turn_source_quota"] == 1
    assert Client(core, addr=Address("198.51.100.8", 1), user="u9").allocate().cls == Class.SUCCESS
    users[0].refresh(0)
    assert users[2].allocate().cls == Class.SUCCESS
    # an IPv6 source is counted by its /64
    core, _ = make_core(source_quota=1, user_quota=0)
    assert Client(core, addr=Address("2001:db8:1:2::5", 1), user="a").allocate().cls == Class.SUCCESS
    assert code(Client(core, addr=Address("2001:db8:1:2::6", 1), user="b").allocate()) == 486
    # unlimited with 0
    core, _ = make_core(source_quota=0, user_quota=0)
    assert all(Client(core, addr=Address("198.51.100.7", 2000 + i), user="u%d" % i).allocate().cls == Class.SUCCESS
               for i in range(40))


def test_relayed_packets_and_bytes_are_counted_per_direction():
    core, opener = make_core()
    c = Client(core)
    c.allocate()
    c.bind(0x4000, PEER)
    other = Address("203.0.113.9", 7000)
    c.permit(other)
    alloc = core.get(CLIENT, VIA)
    peer = (PEER.host, PEER.port)
    core.channel_data(b"\x40\x00\x00\x03abc", CLIENT, VIA)  # ChannelData to the peer
    c.send(c.raw(Method.SEND, ((Attr.XOR_PEER_ADDRESS, other), (Attr.DATA, b"12345")), auth=False,
                 cls=Class.INDICATION))  # a Send indication to a permitted peer
    core.from_peer(alloc, b"xy", peer)  # back as ChannelData
    core.from_peer(alloc, b"wxyz", (other.host, other.port))  # back as a Data indication
    core.from_peer(alloc, b"nope", ("203.0.113.99", 1))  # no permission: dropped, not counted
    core.channel_data(b"\x40\x01\x00\x01z", CLIENT, VIA)  # no such channel: dropped
    assert len(opener.to_peers) == 2 and len(opener.to_clients) == 2
    assert (core.to_peer_packets, core.to_peer_bytes) == (2, 8)
    assert (core.to_client_packets, core.to_client_bytes) == (2, 6)
    assert alloc.dropped == 2 and (core.dropped_bandwidth, core.dropped_quota) == (0, 0)


def test_drops_over_credit_are_counted_by_cause():
    core, opener = make_core(bandwidth=1000)
    c = Client(core)
    c.allocate()
    c.bind(0x4000, PEER)
    frame = b"\x40\x00\x02\x58" + bytes(600)
    core.channel_data(frame, CLIENT, VIA)
    core.channel_data(frame, CLIENT, VIA)  # over the 1000 B/s
    core.from_peer(core.get(CLIENT, VIA), bytes(600), (PEER.host, PEER.port))  # likewise
    assert (core.dropped_bandwidth, core.dropped_quota) == (2, 0)
    core, opener = make_core(byte_quota=1000)
    c = Client(core)
    c.allocate()
    c.bind(0x4000, PEER)
    for t in range(3):
        core.channel_data(frame, CLIENT, VIA)
        core.sweep(NOW + t + 1)
    assert (core.dropped_bandwidth, core.dropped_quota) == (0, 2)
    assert (core.to_peer_packets, core.to_peer_bytes) == (1, 600)
