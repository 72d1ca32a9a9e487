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


def test_a_third_member_is_introduced_to_both_and_a_full_room_is_409():
    clock, intro, pushed = make(max_members=3)
    keys = derive("room", "s")
    join(intro, keys, new_nonce(), A)
    join(intro, keys, new_nonce(), B)
    pushed.clear()
    _, _, ans = join(intro, keys, new_nonce(), C)
    assert ans.kind is wire.Answer.INTRODUCED and [a for _, a in ans.peers] == [B, A]
    assert sorted(p.to for p in pushed) == sorted([tuple(A), tuple(B)])  # both told of the newcomer
    _, _, ans = join(intro, keys, new_nonce(), Address("198.51.100.10", 1))
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
    clock, intro, pushed = make(member_timeout=10)
    keys = derive("room", "s")
    join(intro, keys, new_nonce(), A)
    clock.advance(10)
    intro.prune()
    assert len(intro.rooms) == 0 and intro.stats["members_expired"] == 1


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


def test_a_cookie_is_the_truncated_hmac_of_bucket_port_address_and_room():
    """The jar keeps each secret's keyed HMAC and copies it per cookie: the
    cookies are still HMAC-SHA256(secret, bucket | port | IP | room)[:16],
    as any salon sharing the secret computes them; a previous secret's
    cookies (this bucket or the one before) are accepted, others not."""
    import hashlib
    import hmac
    import socket
    import struct

    old, new = b"o" * 32, b"n" * 32
    jar = CookieJar(new, previous=[old])
    for src in (A, Address("2001:db8::5", 7)):
        family = socket.AF_INET6 if ":" in src.host else socket.AF_INET
        for now in (60.0, 89.9, 90.0, 1e9 + 0.5):
            bucket = int(now // 30)
            bound = struct.pack("!H", src.port) + socket.inet_pton(family, src.host) + b"r" * 16
            want = hmac.new(new, struct.pack("!Q", bucket) + bound, hashlib.sha256).digest()[:16]
            assert jar.issue(src, b"r" * 16, now) == want
            by_old = hmac.new(old, struct.pack("!Q", bucket - 1) + bound, hashlib.sha256).digest()[:16]
            assert jar.check(by_old, src, b"r" * 16, now)
            too_old = hmac.new(old, struct.pack("!Q", bucket - 2) + bound, hashlib.sha256).digest()[:16]
            assert not jar.check(too_old, src, b"r" * 16, now)
            assert not jar.check(want, src, b"s" * 16, now)


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


def test_answers_go_out_through_the_sockets_sendto_and_a_refused_one_through_port_write():
    """ServerState.write sends with the UDP port's socket directly; a send
    the kernel refuses is tried again through Port.write, so its checks
    and its error handling still decide (counted, or raised as before)."""
    import errno

    from twisted.internet import udp
    from twisted.internet.error import InvalidAddressError

    from natsalon.server.reflector import ServerState

    class Sock:
        def __init__(self, refuse: int) -> None:
            self.sent, self.refuse = [], refuse

        def sendto(self, data, addr):
            if self.refuse:
                self.refuse -= 1
                raise OSError(errno.ENOBUFS, "No buffer space available")
            self.sent.append((data, addr))

    state, port, to = ServerState(), udp.Port(0, None, "127.0.0.1"), ("192.0.2.1", 5)
    for refuse, sent in ((0, True), (1, True), (2, False)):
        port.socket = Sock(refuse)
        assert state.write(port, b"x", to) is sent
        assert port.socket.sent == ([(b"x", to)] if sent else [])
    assert state.stats["send_failed"] == 1
    port.socket = Sock(1)
    with pytest.raises(InvalidAddressError):  # Port.write's check, once the kernel refused
        state.write(port, b"x", ("2001:db8::1", 5))


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


# -- squatters, restarts, leave: the salon lists, the clients choose --------


def genuine(ans, keys, my_nonce):
    """The client's rule (natsalon.client.join.Joiner): the first listed
    member whose JOIN verifies with k_join and is not ourselves, as
    ``(its nonce, its address)``; None: keep polling."""
    for raw, address in ans.peers:
        try:
            peer = wire.verify_peer_join(raw, keys.k_join, keys.room_id)
        except wire.WireError:
            continue
        if peer.nonce != my_nonce:
            return peer.nonce, address
    return None


def pushed_to(pushed, source):
    """The introductions pushed to ``source``, parsed (and forgotten)."""
    out = [wire.parse_join_answer(decode(p.data)) for p in pushed if p.to == tuple(source)]
    pushed[:] = [p for p in pushed if p.to != tuple(source)]
    return out


SQUAT = Address("203.0.113.66", 6666)


def squat(intro, keys):
    """Someone who copied the room id joins; it cannot make a JOIN the
    clients verify (it does not know the secret)."""
    bad = derive("room", "guess")._replace(room_id=keys.room_id)
    return join(intro, bad, new_nonce(), SQUAT)


@pytest.mark.parametrize("when", ["first", "in between"])
def test_a_squatter_does_not_stop_the_real_pair(when):
    clock, intro, pushed = make()
    keys = derive("room", "s3cret")
    na, nb = new_nonce(), new_nonce()
    if when == "first":
        squat(intro, keys)
    _, _, ans = join(intro, keys, na, A)
    if when == "first":
        assert ans.kind is wire.Answer.INTRODUCED and genuine(ans, keys, na) is None  # a polls on
    if when == "in between":
        clock.advance(0.5)
        squat(intro, keys)
        assert all(genuine(p, keys, na) is None for p in pushed_to(pushed, A))
    clock.advance(0.5)
    _, _, ans = join(intro, keys, nb, B)
    assert genuine(ans, keys, nb) == (na, A)
    (push,) = pushed_to(pushed, A)
    assert push.nonce == na and genuine(push, keys, na) == (nb, B)  # the newcomer first
    # a's poll, had the push been lost, finds b too
    _, _, ans = join(intro, keys, na, A)
    assert genuine(ans, keys, na) == (nb, B)


def test_a_squatter_that_keeps_polling_cannot_fill_the_room_before_the_pair():
    clock, intro, pushed = make()
    keys = derive("room", "s3cret")
    na, nb = new_nonce(), new_nonce()
    for _ in range(5):
        squat(intro, keys)  # one socket is one member: it only refreshes itself
        clock.advance(1)
    join(intro, keys, na, A)
    _, _, ans = join(intro, keys, nb, B)
    assert genuine(ans, keys, nb) == (na, A)


def test_a_restarted_end_gets_in_at_once_and_meets_the_waiting_peer():
    clock, intro, pushed = make()
    keys = derive("room", "s3cret")
    na, nb = new_nonce(), new_nonce()
    join(intro, keys, na, A)
    join(intro, keys, nb, B)
    # b dies at once (no LEAVE); a was introduced and stopped polling
    clock.advance(1)
    nb2, b2 = new_nonce(), Address(B.host, B.port + 1)
    _, _, ans = join(intro, keys, nb2, b2)
    assert ans.kind is wire.Answer.INTRODUCED  # never 409
    # three seconds later both old entries are gone; a notices the dead
    # peer and joins again: it meets the restarted b, which polls on
    for _ in range(3):
        clock.advance(1)
        join(intro, keys, nb2, b2)
    intro.prune()
    na2 = new_nonce()
    _, _, ans = join(intro, keys, na2, A)
    assert [genuine(ans, keys, na2)] == [(nb2, b2)] and len(ans.peers) == 1


def test_every_member_is_told_of_a_newcomer_listed_first():
    clock, intro, pushed = make()
    keys = derive("room", "s3cret")
    members = [(new_nonce(), Address("192.0.2.%d" % i, 1000 + i)) for i in range(1, 5)]
    for nonce, source in members[:3]:
        join(intro, keys, nonce, source)
        clock.advance(0.1)
    pushed.clear()
    nd, d = members[3]
    join(intro, keys, nd, d)
    assert intro.stats["introductions_pushed"] == 2 + 1 + 3
    for nonce, source in members[:3]:
        (push,) = pushed_to(pushed, source)
        assert push.nonce == nonce and push.peers[0][1] == d
        assert [a for _, a in push.peers[1:]] == [s for n, s in reversed(members[:3]) if n != nonce]
    assert not pushed


def test_introductions_stay_small_and_no_member_is_left_out_of_every_one():
    from natsalon.server.introducer.introductions import MAX_INTRODUCTION

    clock, intro, pushed = make()
    keys = derive("room", "s3cret")
    big = tuple(Address("2001:db8::%x" % i, 1000 + i) for i in range(8))
    squatters = [(derive("room", "guess%d" % i)._replace(room_id=keys.room_id), new_nonce(),
                  Address("203.0.113.%d" % i, 7000)) for i in range(4)]
    na, nb = new_nonce(), new_nonce()
    found = []
    for _ in range(6):  # everyone polls once a second; the squatters (with
        join(intro, keys, na, A)  # the largest JOINs a client makes) after a
        for bad, nonce, source in squatters:
            join(intro, bad, nonce, source, big)
        _, reply, ans = join(intro, keys, nb, B)
        assert len(reply.data) <= MAX_INTRODUCTION and len(ans.peers) < 5
        found.append(genuine(ans, keys, nb))
        clock.advance(1)
    assert all(len(p.data) <= MAX_INTRODUCTION for p in pushed)
    assert None in found and (na, A) in found


def test_a_join_too_large_to_hand_on_is_never_listed():
    clock, intro, pushed = make()
    keys = derive("room", "s3cret")
    from natsalon.stun import Attr, Message, encode

    huge = derive("room", "guess")._replace(room_id=keys.room_id)
    n = new_nonce()
    _, _, ans = send(intro, huge, n, SQUAT)
    msg = Message(Method.JOIN, Class.REQUEST, b"h" * 12, (
        (Attr.NS_ROOM, keys.room_id), (Attr.NS_NONCE, n), (Attr.NS_COOKIE, ans.cookie),
        (Attr.PADDING, b"\0" * 960)))
    intro.handle(decode(encode(msg, sha256_key=huge.k_join)), SQUAT, KEY)
    _, _, ans = join(intro, keys, new_nonce(), A)
    assert ans.kind is wire.Answer.WAITING and [p.to for p in pushed] == [tuple(SQUAT)]


def leave(intro, keys, nonce, token, source=A):
    raw = wire.leave_request(keys.room_id, nonce, token)
    return raw, intro.handle_leave(decode(raw), source, KEY)


def test_leave_with_the_token_frees_the_member_at_once():
    clock, intro, pushed = make()
    keys = derive("room", "s3cret")
    na, token = new_nonce(), wire.new_leave_token()
    _, reply, ans = send(intro, keys, na, A)
    msg, raw = wire.join_request(keys.room_id, na, (), keys.k_join, cookie=ans.cookie,
                                 leave_hash=wire.leave_hash(token))
    intro.handle(decode(raw), A, KEY)
    # a wrong token, or the right one for another nonce: nothing happens, no answer
    assert leave(intro, keys, na, wire.new_leave_token())[1] is None
    assert leave(intro, keys, new_nonce(), token)[1] is None
    assert intro.stats["leave_refused"] == 2 and len(intro.rooms) == 1
    raw, reply = leave(intro, keys, na, token, Address(A.host, 9))  # from anywhere: the token is the proof
    assert reply.to == (A.host, 9) and len(reply.data) == 20 < len(raw)
    msg = decode(reply.data)
    assert (msg.method, msg.cls, msg.transaction_id) == (Method.LEAVE, Class.SUCCESS, decode(raw).transaction_id)
    assert intro.stats["leaves"] == 1 and len(intro.rooms) == 0
    _, _, ans = join(intro, keys, new_nonce(), B)
    assert ans.kind is wire.Answer.WAITING  # nobody left to meet


def test_a_malformed_leave_gets_a_small_400_and_indications_nothing():
    from natsalon.stun import Attr, Message, encode

    clock, intro, pushed = make()
    raw = encode(Message(Method.LEAVE, Class.REQUEST, b"x" * 12, ((Attr.NS_ROOM, b"r" * 16),)))
    reply = intro.handle_leave(decode(raw), A, KEY)
    assert decode(reply.data).get(Attr.ERROR_CODE).code == 400 and len(reply.data) <= 1.6 * len(raw)
    ind = encode(Message(Method.LEAVE, Class.INDICATION, b"x" * 12, ((Attr.NS_ROOM, b"r" * 16),)))
    assert intro.handle_leave(decode(ind), A, KEY) is None
    assert intro.stats["leave_bad"] == 1 and intro.stats["leave_not_request"] == 1


def test_the_salon_drops_a_silent_member_on_its_tick():
    from natsalon.server.testing import UDPClock

    clock = UDPClock()
    svc = SalonService(clock, SalonConfig(interface="127.0.0.1", port=0, alt_port=0, rate_limit=0, rcvbuf=0))
    svc.startService()
    proto, t = svc.protocols[0], svc.protocols[0].transport
    keys = derive("room", "s")
    proto.datagramReceived(join_through(proto, t, keys, new_nonce(), A), tuple(A))
    clock.advance(3)
    assert svc.introducer.rooms.members() == 1
    clock.advance(1)  # the tick after 3.5 s unseen
    assert svc.introducer.rooms.members() == 0 and svc.state.stats["members_expired"] == 1
    svc.stopService()


def test_the_salon_answers_leave():
    from natsalon.server.testing import UDPClock

    clock = UDPClock()
    svc = SalonService(clock, SalonConfig(interface="127.0.0.1", port=0, alt_port=0, rate_limit=0, rcvbuf=0))
    svc.startService()
    proto, t = svc.protocols[0], svc.protocols[0].transport
    keys = derive("room", "s")
    nonce, token = new_nonce(), wire.new_leave_token()
    _, raw = wire.join_request(keys.room_id, nonce, (), keys.k_join, leave_hash=wire.leave_hash(token))
    proto.datagramReceived(raw, tuple(A))
    cookie = wire.parse_join_answer(decode(t.pop()[0][0])).cookie
    _, raw = wire.join_request(keys.room_id, nonce, (), keys.k_join, cookie=cookie, leave_hash=wire.leave_hash(token))
    proto.datagramReceived(raw, tuple(A))
    t.pop()
    proto.datagramReceived(wire.leave_request(keys.room_id, nonce, token), tuple(A))
    (data, to), = t.pop()
    assert to == tuple(A) and decode(data).method == Method.LEAVE
    assert svc.introducer.rooms.members() == 0 and svc.state.stats["leaves"] == 1
    svc.stopService()


def test_introductions_from_parts_are_the_codecs_byte_for_byte():
    """The salon puts its introductions together from prepared attributes
    (natsalon.wire.introparts, Introductions): the same bytes as
    natsalon.wire.introduction for IPv4 and IPv6 recipients and members,
    one or several members, with and without TURN credentials, answer or
    indication, JOINs of every length modulo 4, cached address attributes
    or not."""
    import os
    import random

    from natsalon.server.introducer.introductions import Introductions
    from natsalon.server.introducer.rooms import Member

    rng = random.Random(5)
    keys = derive("room", "s")
    addresses = [A, B, Address("2001:db8::1", 5), Address("2001:db8:ffff::abcd", 65535), Address("0.0.0.0", 0)]
    tails = {}
    for i in range(60):
        members = [Member(new_nonce(), rng.choice(addresses), os.urandom(rng.randrange(60, 200)))
                   for _ in range(rng.randrange(1, 4))]
        turn = rng.choice([None, ("1700000000:room-0011223344556677", "p" * rng.randrange(20, 31))])
        intros = Introductions(keys.room_id, turn, tails if i % 2 else None)
        to, nonce, indication = rng.choice(addresses), new_nonce(), bool(i % 3)
        for _ in range(2):  # the second time with the members' entries kept
            txid = os.urandom(12)
            if indication:
                first, rest = members[0], members[1:]
            else:
                first, rest = None, members
            got = intros.message(txid, to, nonce, first, rest, 1000, indication)
            want = wire.introduction(txid, to, nonce, keys.room_id, members[0].blob, members[0].address,
                                     indication, [(m.blob, m.address) for m in members[1:]], turn)
            assert got == want
    assert tails  # IPv4 address attributes were cached


def test_an_introduction_from_parts_leaves_out_what_does_not_fit_as_before():
    """Members that do not fit within MAX_INTRODUCTION are left out, the
    list rotated by the second; a first member that does not fit means no
    introduction at all."""
    import os

    from natsalon.server.introducer.introductions import MAX_INTRODUCTION, Introductions, fitting
    from natsalon.server.introducer.rooms import Member

    keys = derive("room", "s")
    members = [Member(new_nonce(), Address("192.0.2.%d" % (i + 1), 7), os.urandom(300)) for i in range(4)]
    intros = Introductions(keys.room_id, None)
    for now in range(4):
        data = intros.message(b"t" * 12, A, b"n" * 16, None, members, now)
        ans = wire.parse_join_answer(decode(data))
        assert len(data) <= MAX_INTRODUCTION and len(ans.peers) == 2
        assert ans.peers[0][1] == members[now % 4].address  # rotated by the second
    assert intros.message(b"t" * 12, A, b"n" * 16, Member(new_nonce(), B, os.urandom(1000)), members, 0) is None
    assert fitting(0, [("a", 600), ("b", 600), ("c", 300)], 0) == ["a", "c"]
    assert fitting(0, [("a", 600), ("b", 600), ("c", 300)], 1) == ["b", "c"]


def test_the_salons_join_check_refuses_exactly_what_the_full_parse_refuses():
    """check_join_request (the salon's) and parse_join_request (the
    client's) over random JOINs, most of them malformed somewhere: the
    same WireError reason, or the same room, nonce, cookie, leave hash and
    flags."""
    import os
    import random

    from natsalon.stun import Attr, Message, encode
    from natsalon.wire.join import NS_RELAY, check_join_request
    from natsalon.wire.nat import NS_NAT, NS_SALON_RTT

    rng = random.Random(8)

    def blob(*sizes):
        return os.urandom(rng.choice(sizes))

    def candidates():
        parts = []
        for _ in range(rng.randrange(0, 10)):
            family = rng.choice((4, 6, 4, 4, 6, 5)) if rng.random() < 0.1 else rng.choice((4, 6))
            parts.append(bytes([family]) + os.urandom(2 + (4 if family == 4 else 16)))
        return b"".join(parts)[:rng.choice((None,) * 8 + (5, 12))]

    choices = [
        (Attr.NS_ROOM, lambda: b"r" * 16), (Attr.NS_NONCE, lambda: blob(16, 16, 15)),
        (Attr.NS_CANDIDATES, candidates), (Attr.NS_LEAVE, lambda: blob(16, 16, 3)),
        (Attr.NS_STATUS, lambda: rng.randrange(4)), (NS_NAT, lambda: blob(8, 8, 4, 12)),
        (NS_RELAY, lambda: rng.choice((candidates(), b"\x04\x00\x01\x7f\x00\x00\x01"))),
        (NS_SALON_RTT, lambda: blob(4, 2)), (Attr.NS_COOKIE, lambda: blob(16)),
    ]
    outcomes = set()
    for i in range(3000):
        attrs = tuple((t, make()) for t, make in choices if rng.random() < 0.9)
        msg = Message(Method.JOIN, rng.choice((Class.REQUEST,) * 9 + (Class.INDICATION,)), os.urandom(12), attrs)
        raw = encode(msg, sha256_key=b"k" * 32 if rng.random() < 0.95 else None)
        msg = decode(raw)
        try:
            full = wire.parse_join_request(msg)
        except wire.WireError as e:
            with pytest.raises(wire.WireError) as got:
                check_join_request(msg)
            assert str(got.value) == str(e)
            outcomes.add("".join(c for c in str(e) if not c.isdigit()))
            continue
        light = check_join_request(msg)
        assert light == (full.room_id, full.nonce, full.cookie, full.leave_hash, full.flags)
        outcomes.add("ok")
    assert len(outcomes) >= 12 and {"ok", "more than  candidates", "NS-RELAY with  addresses (want )",
                                    "JOIN with a -byte NS-LEAVE (want )", "truncated candidate address"} <= outcomes


def test_the_pushed_indications_transaction_ids_are_random_and_distinct():
    from natsalon.server.introducer.introductions import TransactionIds

    txids = TransactionIds(batch=4)
    got = [txids() for _ in range(1000)]
    assert all(len(t) == 12 for t in got) and len(set(got)) == 1000


def test_a_copied_nonce_does_not_take_the_members_place():
    clock, intro, pushed = make()
    keys = derive("room", "s3cret")
    na, nb = new_nonce(), new_nonce()
    join(intro, keys, na, A)
    # someone saw a's JOIN on the path and joins with its nonce from its own
    # address (it cannot make a's MAC: the cookie for its address differs)
    thief = derive("room", "guess")._replace(room_id=keys.room_id)
    join(intro, thief, na, SQUAT)
    clock.advance(0.5)
    _, _, ans = join(intro, keys, nb, B)
    assert genuine(ans, keys, nb) == (na, A)


def test_the_waiting_answer_is_the_codecs_byte_for_byte():
    """The introducer puts its most frequent answers together from cached
    parts (natsalon.server.introducer.handler.waiting_answer and
    cookie_answer): the same bytes as natsalon.wire.waiting_response and
    cookie_response, IPv4 and IPv6, cached or not, and the cache stays
    bounded."""
    import os
    import random

    from natsalon.server.introducer import handler

    tails = {}
    rng = random.Random(3)
    sources = [Address("%d.%d.%d.%d" % tuple(rng.randrange(256) for _ in range(4)), rng.randrange(65536))
               for _ in range(200)] + [Address("0.0.0.0", 0), Address("255.255.255.255", 65535),
                                       Address("2001:db8::7", 3478)]
    for _ in range(2):  # the second time from the cache
        for src in sources:
            txid = os.urandom(12)
            assert handler.waiting_answer(txid, src, tails) == wire.waiting_response(txid, src)
    assert len(tails) == 202  # IPv6 is not cached
    for src in sources[:20]:
        txid, cookie = os.urandom(12), os.urandom(16)
        assert handler.cookie_answer(txid, cookie) == wire.cookie_response(txid, cookie)
    assert handler.cookie_answer(b"t" * 12, b"c" * 7) == wire.cookie_response(b"t" * 12, b"c" * 7)
    small = {}
    for src in sources[:25]:
        txid = os.urandom(12)
        assert handler.waiting_answer(txid, src, small, limit=10) == wire.waiting_response(txid, src)
        assert len(small) <= 10
