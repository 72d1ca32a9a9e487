"""A room registry that answers later (as one across the network will):
JOINs are answered when it does, through the real reflector protocol;
its failures are counted and dropped; its prunes never pile up."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, capturedLogs
from zope.interface.verify import verifyObject

from natsalon import wire
from natsalon.crypto.secret import derive, new_nonce
from natsalon.server.introducer.cookies import CookieJar
from natsalon.server.introducer.handler import Introducer
from natsalon.server.introducer.rooms import IRoomRegistry, MemoryRooms
from natsalon.server.service import SalonConfig, SalonService
from natsalon.server.testing import LaterRooms, UDPClock
from natsalon.stun import Address, Class, Method, decode

A = ("192.0.2.1", 40000)
B = ("198.51.100.7", 50000)
KEYS = derive("room", "s3cret")


@pytest.fixture
def salon():
    clock = UDPClock()
    clock.advance(1000)
    rooms = LaterRooms()
    svc = SalonService(clock, SalonConfig(interface="127.0.0.1", port=0, alt_port=0, rate_limit=0, rcvbuf=0),
                       rooms=rooms)
    svc.startService()
    rooms.answer()  # the prune of the first tick, at start
    yield svc, clock, rooms, svc.protocols[0], svc.protocols[0].transport
    svc.stopService()


def with_cookie(proto, transport, nonce, src):
    """A JOIN carrying the cookie the salon issued to ``src`` (the cookie
    round trip never asks the registry)."""
    _, raw = wire.join_request(KEYS.room_id, nonce, (), KEYS.k_join)
    proto.datagramReceived(raw, src)
    (data, to), = transport.pop()
    cookie = wire.parse_join_answer(decode(data)).cookie
    assert cookie is not None and to == src
    return wire.join_request(KEYS.room_id, nonce, (), KEYS.k_join, cookie=cookie)[1]


def test_later_rooms_provides_the_interface():
    verifyObject(IRoomRegistry, LaterRooms())


def test_join_answered_when_the_registry_answers(salon):
    svc, clock, rooms, proto, transport = salon
    na, nb = new_nonce(), new_nonce()
    raw = with_cookie(proto, transport, na, A)
    answered = svc.state.stats["answered"]
    proto.datagramReceived(raw, A)
    assert transport.pop() == [] and len(rooms.queued) == 1
    assert svc.state.stats["answered"] == answered
    rooms.answer()
    (data, to), = transport.pop()
    assert to == A and wire.parse_join_answer(decode(data)).kind is wire.Answer.WAITING
    assert svc.state.stats["answered"] == answered + 1 and svc.state.stats["join_waiting"] == 1

    proto.datagramReceived(with_cookie(proto, transport, nb, B), B)
    assert transport.pop() == []
    rooms.answer()
    out = {to: decode(data) for data, to in transport.pop()}
    assert set(out) == {A, B}
    assert wire.parse_join_answer(out[B]).kind is wire.Answer.INTRODUCED
    assert out[A].cls == Class.INDICATION and out[A].method == Method.JOIN  # pushed to the waiting member
    assert wire.parse_join_answer(out[A]).nonce == na
    assert svc.state.stats["introductions_pushed"] == 1
    assert svc.state.stats["internal_error"] == 0


def test_answers_in_the_order_the_registry_gives_them(salon):
    svc, clock, rooms, proto, transport = salon
    proto.datagramReceived(with_cookie(proto, transport, new_nonce(), A), A)
    proto.datagramReceived(with_cookie(proto, transport, new_nonce(), B), B)
    assert len(rooms.queued) == 2 and transport.pop() == []
    rooms.answer()
    assert [to for _, to in transport.pop()] == [A]
    rooms.answer()
    assert sorted(to for _, to in transport.pop()) == [A, B]


def test_registry_failure_is_counted_logged_and_dropped(salon):
    svc, clock, rooms, proto, transport = salon
    nonce = new_nonce()
    raw = with_cookie(proto, transport, nonce, A)
    proto.datagramReceived(raw, A)
    with capturedLogs() as events:
        rooms.fail()
    assert transport.pop() == []
    stats = svc.state.stats
    assert stats["join_registry_failed"] == 1 and stats["not_answered"] == 1
    assert stats["internal_error"] == 0
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1 and failures[0]["log_failure"].check(RuntimeError)
    assert all(A[0] not in repr(e) for e in events if e["log_level"] > LogLevel.debug)
    # the client's retransmission is answered once the registry is back
    proto.datagramReceived(raw, A)
    rooms.answer()
    (data, to), = transport.pop()
    assert to == A and wire.parse_join_answer(decode(data)).kind is wire.Answer.WAITING


def test_handler_failing_later_is_counted_and_consumed(salon):
    svc, clock, rooms, proto, transport = salon
    raw = with_cookie(proto, transport, new_nonce(), A)
    later = Deferred()
    svc.state.handlers[Method.JOIN] = lambda msg, source, key: later
    proto.datagramReceived(raw, A)
    with capturedLogs() as events:
        later.errback(ZeroDivisionError("a bug"))
    assert svc.state.stats["internal_error"] == 1
    assert later.result is None  # the failure was handled: no "Unhandled error in Deferred"
    assert any(e.get("log_failure") is not None and e["log_failure"].check(ZeroDivisionError) for e in events)
    assert all(A[0] not in repr(e) for e in events if e["log_level"] > LogLevel.debug)
    assert transport.pop() == []


def test_reply_for_a_closed_socket_is_dropped(salon):
    svc, clock, rooms, proto, transport = salon
    proto.datagramReceived(with_cookie(proto, transport, new_nonce(), A), A)
    transport.stopListening()  # the socket went away while the registry thought
    assert svc.state.transports.get(proto.key) is None
    rooms.answer()
    assert transport.pop() == []
    assert svc.state.stats["dropped_no_socket"] == 1


def test_synchronous_registry_answers_without_a_deferred():
    clock = UDPClock()
    intro = Introducer(clock, MemoryRooms(), CookieJar(b"k" * 32))
    nonce = new_nonce()
    _, raw = wire.join_request(KEYS.room_id, nonce, (), KEYS.k_join)
    cookie = wire.parse_join_answer(decode(intro.handle(decode(raw), Address(*A), (0, 0)).data)).cookie
    _, raw = wire.join_request(KEYS.room_id, nonce, (), KEYS.k_join, cookie=cookie)
    reply = intro.handle(decode(raw), Address(*A), (0, 0))
    assert not isinstance(reply, Deferred)
    assert wire.parse_join_answer(decode(reply.data)).kind is wire.Answer.WAITING


def test_prunes_never_overlap_and_failures_do_not_stop_them():
    clock = UDPClock()
    rooms = LaterRooms(MemoryRooms(member_timeout=10))
    intro = Introducer(clock, rooms, CookieJar(b"k" * 32))
    for n, src in enumerate((A, B)):
        rooms.rooms.join(bytes([n]) * 16, _member(src), 0.0)
    clock.advance(11)
    d = intro.prune()
    assert intro.prune() is None and intro.prune() is None
    assert len(rooms.queued) == 1 and intro.stats["rooms_prune_skipped"] == 2
    rooms.answer()
    assert intro.stats["members_expired"] == 2 and d.result is None
    intro.prune()
    with capturedLogs() as events:
        rooms.fail()
    assert intro.stats["rooms_prune_failed"] == 1
    assert any("log_failure" in e for e in events)
    intro.prune()  # the failed prune no longer counts as running
    assert len(rooms.queued) == 1


def test_salon_tick_goes_on_while_a_prune_is_pending(salon):
    svc, clock, rooms, proto, transport = salon
    svc.state.limiter = limiter = _CountingLimiter()
    clock.advance(1)
    assert len(rooms.queued) == 1
    clock.advance(1)
    clock.advance(1)
    # no second prune while the first runs, yet the tick went on
    assert len(rooms.queued) == 1 and svc.state.stats["rooms_prune_skipped"] == 2
    assert limiter.windows == 3
    rooms.answer()
    clock.advance(1)
    assert len(rooms.queued) == 1 and limiter.windows == 4


class _CountingLimiter:
    def __init__(self) -> None:
        self.windows = 0

    def allow(self, source: str) -> bool:
        return True

    def new_window(self) -> None:
        self.windows += 1


def _member(src):
    from natsalon.server.introducer.rooms import Member
    from natsalon.stun import Address

    return Member(new_nonce(), Address(*src), b"", (0, 0))


def test_stopping_the_salon_cancels_a_running_prune(salon):
    svc, clock, rooms, proto, transport = salon
    clock.advance(1)
    (pending, _), = rooms.queued
    with capturedLogs() as events:
        svc.stopService()
    assert pending.called and pending.result is None
    assert svc.state.stats["rooms_prune_failed"] == 0
    assert not [e for e in events if "log_failure" in e]
    svc.introducer.prune()  # no longer counts as running
    assert len(rooms.queued) == 2


def test_leave_answered_when_the_registry_answers_and_its_failure_counted(salon):
    svc, clock, rooms, proto, transport = salon
    nonce, token = new_nonce(), wire.new_leave_token()
    _, raw = wire.join_request(KEYS.room_id, nonce, (), KEYS.k_join, leave_hash=wire.leave_hash(token))
    proto.datagramReceived(raw, A)
    cookie = wire.parse_join_answer(decode(transport.pop()[0][0])).cookie
    _, raw = wire.join_request(KEYS.room_id, nonce, (), KEYS.k_join, cookie=cookie, leave_hash=wire.leave_hash(token))
    proto.datagramReceived(raw, A)
    rooms.answer()
    transport.pop()
    leave = wire.leave_request(KEYS.room_id, nonce, token)
    proto.datagramReceived(leave, A)
    with capturedLogs() as events:
        rooms.fail()
    assert transport.pop() == [] and svc.state.stats["leave_registry_failed"] == 1
    assert all(A[0] not in repr(e) for e in events if e["log_level"] > LogLevel.debug)
    proto.datagramReceived(leave, A)  # asked again
    assert transport.pop() == []
    rooms.answer()
    (data, to), = transport.pop()
    assert to == A and decode(data).method == Method.LEAVE and decode(data).cls == Class.SUCCESS
    assert svc.state.stats["leaves"] == 1 and rooms.rooms.members() == 0
