"""The introducer handler and its wiring in the salon."""

import pytest
from twisted.internet.task import Clock

from natsalon import wire
from natsalon.server.introducer.cookies import CookieJar
from natsalon.server.introducer.handler import Introducer
from natsalon.server.introducer.rooms import MemoryRooms
from natsalon.server.service import SalonConfig, SalonService
from natsalon.crypto.secret import derive, new_nonce
from natsalon.stun import Address, Class, Method, decode
from natsalon.testing import FakeDatagramTransport

KEY = (0, 0)
A = Address("192.0.2.1", 40000)
B = Address("198.51.100.7", 50000)
C = Address("198.51.100.9", 50001)


def make(**kw):
    clock = Clock()
    clock.advance(1000)
    pushed = []
    intro = Introducer(clock, MemoryRooms(**kw), CookieJar(b"k" * 32), push=pushed.append)
    return clock, intro, pushed


def send(intro, keys, nonce, source, cookie=None, cands=()):
    msg, raw = wire.join_request(keys.room_id, nonce, cands, keys.k_join, cookie=cookie)
    reply = intro.handle(decode(raw), source, KEY)
    assert reply.to == (source.host, source.port) and reply.via == KEY
    return raw, reply, wire.parse_join_answer(decode(reply.data))


def join(intro, keys, nonce, source, cands=()):
    raw, reply, ans = send(intro, keys, nonce, source, cands=cands)
    assert ans.kind is wire.Answer.COOKIE
    assert len(reply.data) < len(raw)  # no amplification
    return send(intro, keys, nonce, source, ans.cookie, cands)


def test_two_members_introduced_end_to_end():
    clock, intro, pushed = make()
    keys = derive("room", "s3cret")
    na, nb = new_nonce(), new_nonce()
    lan_a = (Address("10.1.0.2", 40000),)
    lan_b = (Address("10.2.0.2", 5555),)
    _, _, ans = join(intro, keys, na, A, lan_a)
    assert ans.kind is wire.Answer.WAITING and ans.observed == A
    _, _, ans = join(intro, keys, nb, B, lan_b)
    assert ans.kind is wire.Answer.INTRODUCED
    assert ans.peer_address == A and ans.observed == B and ans.nonce == nb
    peer = wire.verify_peer_join(ans.peer_raw, keys.k_join, keys.room_id)
    assert peer.nonce == na and peer.candidates == lan_a
    # the waiting member got a pushed indication
    (push,) = pushed
    assert push.to == (A.host, A.port)
    msg = decode(push.data)
    assert msg.cls == Class.INDICATION and msg.method == Method.JOIN
    ans = wire.parse_join_answer(msg)
    assert ans.nonce == na and ans.peer_address == B
    assert wire.verify_peer_join(ans.peer_raw, keys.k_join, keys.room_id).candidates == lan_b
    # and its next poll gets the introduction as a response
    _, _, ans = join(intro, keys, na, A, lan_a)
    assert ans.kind is wire.Answer.INTRODUCED and ans.peer_address == B


def test_wrong_secret_peer_is_detected_by_client():
    clock, intro, pushed = make()
    keys = derive("room", "right")
    bad = derive("room", "wrong")._replace(room_id=keys.room_id)  # an attacker who saw the room id
    join(intro, keys, new_nonce(), A)
    _, _, ans = join(intro, bad, new_nonce(), B)
    assert ans.kind is wire.Answer.INTRODUCED
    with pytest.raises(wire.WireError, match="integrity"):
        wire.verify_peer_join(pushed[0].data and wire.parse_join_answer(decode(pushed[0].data)).peer_raw,
                              keys.k_join, keys.room_id)


def test_retransmission_not_paired_with_itself():
    clock, intro, pushed = make()
    keys = derive("room", "s")
    n = new_nonce()
    for _ in range(3):
        _, _, ans = join(intro, keys, n, A)
        assert ans.kind is wire.Answer.WAITING
    assert not pushed


def test_third_member_refused_409():
    clock, intro, pushed = make()
    keys = derive("room", "s")
    join(intro, keys, new_nonce(), A)
    join(intro, keys, new_nonce(), B)
    _, _, ans = join(intro, keys, new_nonce(), C)
    assert ans.kind is wire.Answer.REFUSED and ans.error.code == 409


def test_cookie_bound_to_source_and_time():
    clock, intro, pushed = make()
    keys = derive("room", "s")
    n = new_nonce()
    _, _, ans = send(intro, keys, n, A)
    cookie = ans.cookie
    # replayed from another address (or port): no registration, just a new cookie
    _, _, other = send(intro, keys, n, Address(A.host, A.port + 1), cookie)
    assert other.kind is wire.Answer.COOKIE
    _, _, other = send(intro, keys, n, B, cookie)
    assert other.kind is wire.Answer.COOKIE
    assert len(intro.rooms) == 0
    # stale after two buckets
    clock.advance(61)
    _, _, late = send(intro, keys, n, A, cookie)
    assert late.kind is wire.Answer.COOKIE
    assert len(intro.rooms) == 0


def test_spoofed_join_never_pairs():
    clock, intro, pushed = make()
    keys = derive("room", "s")
    join(intro, keys, new_nonce(), A)
    # a join with a forged cookie from a spoofed source only gets a small 401
    _, reply, ans = send(intro, keys, new_nonce(), B, b"\x00" * 16)
    assert ans.kind is wire.Answer.COOKIE and not pushed


def test_expiry_via_prune():
    clock, intro, pushed = make(timeout=10)
    keys = derive("room", "s")
    join(intro, keys, new_nonce(), A)
    clock.advance(11)
    intro.prune()
    assert len(intro.rooms) == 0


def test_caps_answer_429_and_503():
    clock, intro, pushed = make(max_rooms=2, max_per_source=1)
    k1, k2, k3 = derive("1", "s"), derive("2", "s"), derive("3", "s")
    join(intro, k1, new_nonce(), A)
    _, _, ans = join(intro, k2, new_nonce(), Address(A.host, 1))
    assert ans.error.code == 429
    join(intro, k2, new_nonce(), B)
    _, _, ans = join(intro, k3, new_nonce(), C)
    assert ans.error.code == 503


def test_malformed_join_400():
    clock, intro, pushed = make()
    from natsalon.stun import Message, encode, Attr
    raw = encode(Message(Method.JOIN, Class.REQUEST, b"x" * 12, ((Attr.NS_ROOM, b"r" * 16),)))
    reply = intro.handle(decode(raw), A, KEY)
    assert decode(reply.data).get(Attr.ERROR_CODE).code == 400
    assert len(reply.data) <= 1.6 * len(raw)  # the source is unverified: no amplification
    # a bare 20-byte JOIN header would need a 28-byte 400 at least: 1.4x, still answered
    bare = encode(Message(Method.JOIN, Class.REQUEST, b"y" * 12))
    reply = intro.handle(decode(bare), A, KEY)
    assert reply is not None and len(reply.data) <= 1.6 * len(bare)


def test_cookie_for_scoped_ipv6_source():
    clock, intro, pushed = make()
    from natsalon.server.introducer.cookies import CookieJar
    jar = CookieJar(b"k" * 32)
    src = Address("fe80::1%eth0", 5000)
    cookie = jar.issue(src, b"r" * 16, 100.0)
    assert jar.check(cookie, src, b"r" * 16, 100.0)
    assert not jar.check(cookie, Address("fe80::2%eth0", 5000), b"r" * 16, 100.0)


def join_through(proto, transport, keys, nonce, src):
    """The JOIN, with the cookie the salon gave ``src``, as bytes (the
    cookie round trip goes through ``proto``)."""
    _, raw = wire.join_request(keys.room_id, nonce, (), keys.k_join)
    proto.datagramReceived(raw, tuple(src))
    (data, _), = transport.pop()
    cookie = wire.parse_join_answer(decode(data)).cookie
    return wire.join_request(keys.room_id, nonce, (), keys.k_join, cookie=cookie)[1]


def test_salon_wires_introducer_and_pushes():
    clock = Clock()
    svc = SalonService(clock, SalonConfig(rate_limit=0))
    assert Method.JOIN in svc.state.handlers
    proto = svc.protocols[0]
    t = FakeDatagramTransport()
    proto.makeConnection(t)
    keys = derive("room", "s")
    for src in (A, B):
        proto.datagramReceived(join_through(proto, t, keys, new_nonce(), src), tuple(src))
        out = t.pop()
    # the answer to B and the indication pushed to A
    assert sorted(to for _, to in out) == sorted([tuple(A), tuple(B)])
    assert not SalonService(clock, SalonConfig(introducer=False)).state.handlers


class _RefusingTransport(FakeDatagramTransport):
    """Refuses (ENOBUFS) every send to one address."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = None

    def write(self, packet, addr=None):
        if tuple(addr) == self.refused:
            raise OSError(105, "No buffer space available")
        super().write(packet, addr)


def test_refused_push_is_counted_and_the_joiner_still_answered():
    svc = SalonService(Clock(), SalonConfig(rate_limit=0))
    proto = svc.protocols[0]
    t = _RefusingTransport()
    proto.makeConnection(t)
    keys = derive("room", "s")
    proto.datagramReceived(join_through(proto, t, keys, new_nonce(), A), tuple(A))
    (_, to), = t.pop()
    assert to == tuple(A)
    raw = join_through(proto, t, keys, new_nonce(), B)
    t.refused = tuple(A)  # the introduction pushed to A is refused
    proto.datagramReceived(raw, tuple(B))
    (data, to), = t.pop()
    assert to == tuple(B) and wire.parse_join_answer(decode(data)).kind is wire.Answer.INTRODUCED
    assert svc.state.stats["send_failed"] == 1 and svc.state.stats["internal_error"] == 0
