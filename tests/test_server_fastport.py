"""ReflectorPort's inline read loop, driven through a fake socket: each
datagram is rate-limited once, and the loop answers exactly what the
protocol's own path (``datagramReceived``) answers."""

from __future__ import annotations

import errno
import struct

import pytest
from twisted.internet.task import Clock

from natsalon.server.fastport import ReflectorPort
from natsalon.server.layout import Layout
from natsalon.server.ratelimit import SourceLimiter
from natsalon.server.reflector import ReflectorProtocol, ServerState
from natsalon.stun import CHANGE_PORT, Address, Attr, Class, Message, Method, decode, encode
from natsalon.testing import FakeDatagramTransport

V4 = [("198.51.100.7", 40000), ("198.51.100.8", 40001)]
# two IPv6 sources in two /64s (the rate limit counts IPv6 by /64)
V6 = [("2001:db8::7", 40000), ("2001:db8:1::8", 40001)]


class FakeSocket:
    """What ReflectorPort uses of a socket: recvfrom (EAGAIN when empty)
    and sendto; an IPv6 socket's recvfrom gives 4-tuples."""

    def __init__(self, datagrams, v6: bool) -> None:
        self.inbox = [(data, addr + (0, 0) if v6 else addr) for data, addr in datagrams]
        self.sent = []
        self.refuse = None

    def recvfrom(self, size: int):
        if not self.inbox:
            raise BlockingIOError(errno.EAGAIN, "would block")
        return self.inbox.pop(0)

    def sendto(self, data: bytes, addr) -> int:
        if self.refuse is not None:
            raise OSError(self.refuse, "refused")
        self.sent.append((bytes(data), tuple(addr)))
        return len(data)

    def fileno(self) -> int:
        return -1


class CountingLimiter(SourceLimiter):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.asked = []

    def allow(self, source: str) -> bool:
        self.asked.append(source)
        return super().allow(source)


def server(ip: str, limiter=None, fast_plain: bool = True):
    state = ServerState(limiter=limiter)
    state.fast_plain = fast_plain
    state.layout = Layout((ip, None), (3478, 3479))
    return state, ReflectorProtocol((0, 0), state, rcvbuf=0)


def through_port(ip: str, datagrams, limiter=None, fast_plain: bool = True):
    """Feed ``datagrams`` to a ReflectorPort's doRead; return what it sent
    and the state."""
    state, proto = server(ip, limiter, fast_plain)
    port = ReflectorPort(3478, proto, ip, 8192, Clock())
    port.socket = FakeSocket(datagrams, ":" in ip)
    proto.makeConnection(port)
    port.doRead()
    proto.flush_stats()
    return port.socket.sent, state


def through_protocol(ip: str, datagrams, limiter=None, fast_plain: bool = True):
    """The same datagrams through ``datagramReceived`` and a fake transport."""
    state, proto = server(ip, limiter, fast_plain)
    transport = FakeDatagramTransport(ip, 3478)
    proto.makeConnection(transport)
    for data, addr in datagrams:
        proto.datagramReceived(data, addr)
    proto.flush_stats()
    return transport.written, state


def request(n: int, *attrs) -> bytes:
    return encode(Message(Method.BINDING, Class.REQUEST, struct.pack("!4xQ", n), tuple(attrs)))


def mixed(sources):
    """Plain Binding requests (some repeated, to hit the tail cache), a
    CHANGE-REQUEST, garbage and an unknown method, from two sources."""
    out = []
    for n in range(12):
        src = sources[n % 2]
        if n % 5 == 3:
            out.append((request(n, (Attr.CHANGE_REQUEST, CHANGE_PORT)), src))
        elif n == 7:
            out.append((b"\x00\x01\x00\x00" + b"junk" * 4, src))
        elif n == 8:
            out.append((encode(Message(0x0ABC, Class.REQUEST, struct.pack("!4xQ", n))), src))
        else:
            out.append((request(n), src))
    return out


@pytest.mark.parametrize("ip,sources", [("192.0.2.1", V4), ("2001:db8::1", V6)])
def test_ipv6_and_ipv4_plain_binding_charged_once(ip, sources):
    limiter = CountingLimiter(1)
    src = sources[0]
    sent, state = through_port(ip, [(request(1), src)], limiter)
    assert limiter.asked == [src[0]]
    (data, to), = sent
    assert to == src
    assert decode(data).get(Attr.XOR_MAPPED_ADDRESS) == Address(*src)
    assert state.stats["rate_limited"] == 0 and state.stats["answered"] == 1


@pytest.mark.parametrize("ip,sources", [("192.0.2.1", V4), ("2001:db8::1", V6)])
@pytest.mark.parametrize("limit", [None, 4])
@pytest.mark.parametrize("fast_plain", [True, False])
def test_read_loop_answers_what_the_protocol_answers(ip, sources, limit, fast_plain):
    results = []
    for feed in (through_port, through_protocol):
        limiter = CountingLimiter(limit) if limit else None
        sent, state = feed(ip, mixed(sources), limiter, fast_plain)
        results.append((sent, state.stats, limiter.asked if limiter else None))
    (port_sent, port_stats, port_asked), (proto_sent, proto_stats, proto_asked) = results
    assert port_sent == proto_sent
    assert port_stats == proto_stats
    assert port_asked == proto_asked
    if limit:
        assert port_stats["rate_limited"] == 12 - 2 * limit
    assert port_stats["internal_error"] == 0


def test_refused_send_is_counted_not_raised():
    state, proto = server("192.0.2.1")
    port = ReflectorPort(3478, proto, "192.0.2.1", 8192, Clock())
    src = V4[0]
    port.socket = FakeSocket([(request(1), src), (request(2), src)], False)
    proto.makeConnection(port)
    port.socket.refuse = errno.ENOBUFS
    port.doRead()  # the first goes through answer(), the second through the cached tail
    proto.flush_stats()
    assert state.stats["send_failed"] == 2
    assert state.stats["internal_error"] == 0 and state.stats["answered"] == 0


def test_loop_answers_new_ipv4_sources_inline():
    """The loop's reason to exist: a plain request from a source never
    seen before (most of a public server's traffic) is answered without
    calling out to the protocol, whose path costs ~2.5x more per packet."""
    state, proto = server("192.0.2.1")
    handed = []
    proto.answer = lambda data, addr: handed.append(addr)
    port = ReflectorPort(3478, proto, "192.0.2.1", 8192, Clock())
    sources = [("198.51.100.%d" % i, 40000 + i) for i in range(1, 50)]
    port.socket = FakeSocket([(request(i), src) for i, src in enumerate(sources)], False)
    proto.makeConnection(port)
    port.doRead()
    assert handed == []
    assert [to for _, to in port.socket.sent] == sources
