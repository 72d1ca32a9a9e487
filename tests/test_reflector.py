"""The reflector protocol with fake transports: every answer and every
refusal of the salon's STUN sockets, without the network."""

from __future__ import annotations

import os
import random
import struct

import pytest

from natsalon.server import binding
from natsalon.server.layout import Layout
from natsalon.server.ratelimit import SourceLimiter
from natsalon.server.reflector import ReflectorProtocol, ServerState
from natsalon.stun import (
    CHANGE_IP,
    CHANGE_PORT,
    Address,
    Attr,
    Class,
    Message,
    Method,
    decode,
    encode,
)
from natsalon.testing import FakeDatagramTransport

IP1, IP2 = "192.0.2.1", "192.0.2.2"
CLIENT = ("198.51.100.7", 40000)


def make_server(two_ips=True, limiter=None):
    layout = Layout((IP1, IP2 if two_ips else None), (3478, 3479))
    state = ServerState(limiter=limiter)
    state.layout = layout
    protos, transports = {}, {}
    for key in layout.keys():
        proto = ReflectorProtocol(key, state, rcvbuf=0)
        fake = FakeDatagramTransport(layout.ips[key[0]], layout.ports[key[1]])
        proto.makeConnection(fake)
        protos[key], transports[key] = proto, fake
    return state, protos, transports


def request(*attrs, method=Method.BINDING, cls=Class.REQUEST, **kw):
    return encode(Message(method, cls, os.urandom(12), tuple(attrs)), **kw)


def only_reply(transports):
    sent = [(key, data, addr) for key, t in transports.items() for data, addr in t.pop()]
    assert len(sent) == 1, sent
    key, data, addr = sent[0]
    return key, decode(data), addr, data


def test_plain_binding_fast_path_is_32_bytes():
    state, protos, transports = make_server()
    req = request()
    assert len(req) == 20
    protos[(0, 0)].datagramReceived(req, CLIENT)
    key, msg, addr, data = only_reply(transports)
    assert key == (0, 0) and addr == CLIENT
    assert len(data) == 32 and len(data) / len(req) <= 1.6
    assert msg.cls == Class.SUCCESS and msg.method == Method.BINDING
    assert msg.transaction_id == req[8:20]
    assert msg.get(Attr.XOR_MAPPED_ADDRESS) == Address(*CLIENT)
    assert msg.attributes == ((Attr.XOR_MAPPED_ADDRESS, Address(*CLIENT)),)


def test_fast_path_matches_full_encoder():
    req = request()
    fast = binding.fast_response(req, binding.xor_mapped_tail(*CLIENT))
    full = encode(Message(Method.BINDING, Class.SUCCESS, req[8:20], ((Attr.XOR_MAPPED_ADDRESS, Address(*CLIENT)),)))
    assert fast == full


def test_ipv6_source_gets_xor_mapped_ipv6():
    state, protos, transports = make_server()
    src = ("2001:db8::5", 5555)
    protos[(0, 0)].datagramReceived(request(), src)
    key, msg, addr, _ = only_reply(transports)
    assert addr == src and msg.get(Attr.XOR_MAPPED_ADDRESS) == Address(*src)


@pytest.mark.parametrize("flags,via", [(0, (0, 0)), (CHANGE_PORT, (0, 1)), (CHANGE_IP, (1, 0)),
                                       (CHANGE_IP | CHANGE_PORT, (1, 1))])
def test_change_request_replies_from_the_right_socket(flags, via):
    state, protos, transports = make_server()
    protos[(0, 0)].datagramReceived(request((Attr.CHANGE_REQUEST, flags)), CLIENT)
    key, msg, addr, _ = only_reply(transports)
    assert key == via and addr == CLIENT
    ips, ports = (IP1, IP2), (3478, 3479)
    assert msg.get(Attr.RESPONSE_ORIGIN) == Address(ips[via[0]], ports[via[1]])
    assert msg.get(Attr.OTHER_ADDRESS) == Address(ips[1 - via[0]], ports[1 - via[1]])
    assert msg.get(Attr.XOR_MAPPED_ADDRESS) == Address(*CLIENT)


def test_change_request_relative_to_receiving_socket():
    state, protos, transports = make_server()
    protos[(1, 1)].datagramReceived(request((Attr.CHANGE_REQUEST, CHANGE_IP)), CLIENT)
    key, msg, _, _ = only_reply(transports)
    assert key == (0, 1)


def test_one_ip_server_change_port_works_change_ip_is_420():
    state, protos, transports = make_server(two_ips=False)
    assert set(protos) == {(0, 0), (0, 1)}
    protos[(0, 0)].datagramReceived(request((Attr.CHANGE_REQUEST, CHANGE_PORT)), CLIENT)
    key, msg, _, _ = only_reply(transports)
    assert key == (0, 1) and msg.cls == Class.SUCCESS
    assert msg.get(Attr.OTHER_ADDRESS) is None  # RFC 5780: only with a second IP
    assert msg.get(Attr.RESPONSE_ORIGIN) == Address(IP1, 3479)
    protos[(0, 0)].datagramReceived(request((Attr.CHANGE_REQUEST, CHANGE_IP)), CLIENT)
    key, msg, _, _ = only_reply(transports)
    assert key == (0, 0) and msg.cls == Class.ERROR
    assert msg.get(Attr.ERROR_CODE).code == 420
    assert msg.get(Attr.UNKNOWN_ATTRIBUTES) == (Attr.CHANGE_REQUEST,)


def test_response_port_changes_only_the_port():
    state, protos, transports = make_server()
    protos[(0, 0)].datagramReceived(request((Attr.RESPONSE_PORT, 9999)), CLIENT)
    _, msg, addr, _ = only_reply(transports)
    assert addr == (CLIENT[0], 9999)
    assert msg.get(Attr.XOR_MAPPED_ADDRESS) == Address(*CLIENT)


def test_padding_pads_response_up_to_request_size_never_beyond():
    state, protos, transports = make_server()
    req = request((Attr.CHANGE_REQUEST, 0), (Attr.PADDING, b"\x00" * 400))
    protos[(0, 0)].datagramReceived(req, CLIENT)
    _, msg, _, data = only_reply(transports)
    assert len(req) - 8 < len(data) <= len(req)
    assert msg.has(Attr.PADDING)


def test_response_carries_fingerprint_when_request_did():
    state, protos, transports = make_server()
    protos[(0, 0)].datagramReceived(request((Attr.SOFTWARE, "x"), fingerprint=True), CLIENT)
    _, msg, _, _ = only_reply(transports)
    assert msg.attributes[-1][0] == Attr.FINGERPRINT


def test_classic_rfc3489_request_gets_mapped_address():
    state, protos, transports = make_server()
    txid = b"\x01" * 16
    req = encode(Message(Method.BINDING, Class.REQUEST, txid, ((Attr.CHANGE_REQUEST, 0),), classic=True))
    protos[(0, 0)].datagramReceived(req, CLIENT)
    _, msg, addr, data = only_reply(transports)
    assert msg.classic and msg.transaction_id == txid
    assert data[4:20] == txid
    assert msg.get(Attr.MAPPED_ADDRESS) == Address(*CLIENT)
    assert msg.get(Attr.SOURCE_ADDRESS) == Address(IP1, 3478)
    assert msg.get(Attr.CHANGED_ADDRESS) == Address(IP2, 3479)
    assert not msg.has(Attr.XOR_MAPPED_ADDRESS)


def test_unknown_comprehension_required_attribute_is_420():
    state, protos, transports = make_server()
    protos[(0, 0)].datagramReceived(request((0x7777, b"abcd"), (0xFFF0, b"ok")), CLIENT)
    _, msg, _, _ = only_reply(transports)
    assert msg.cls == Class.ERROR and msg.get(Attr.ERROR_CODE).code == 420
    assert msg.get(Attr.UNKNOWN_ATTRIBUTES) == (0x7777,)


def test_malformed_attribute_in_valid_header_is_400():
    state, protos, transports = make_server()
    txid = os.urandom(12)
    # XOR-MAPPED-ADDRESS with an unknown family
    bad = struct.pack("!HHI", 0x0001, 12, 0x2112A442) + txid + struct.pack("!HHBBH", 0x0020, 8, 0, 9, 1) + b"\0" * 4
    protos[(0, 0)].datagramReceived(bad, CLIENT)
    _, msg, addr, _ = only_reply(transports)
    assert addr == CLIENT and msg.get(Attr.ERROR_CODE).code == 400
    assert msg.transaction_id == txid
    assert state.stats["dropped_malformed"] == 1


@pytest.mark.parametrize("data", [b"", b"hello", b"\xff" * 20, b"\x00\x01\x00\x04" + b"\0" * 16,
                                  b"GET / HTTP/1.0\r\n\r\n"])
def test_garbage_is_dropped_and_counted(data):
    state, protos, transports = make_server()
    protos[(0, 0)].datagramReceived(data, CLIENT)
    assert all(not t.written for t in transports.values())
    assert state.stats["dropped_malformed"] == 1


def test_oversized_datagram_is_dropped():
    state, protos, transports = make_server()
    protos[(0, 0)].datagramReceived(request((Attr.PADDING, b"\0" * 3000)), CLIENT)
    assert all(not t.written for t in transports.values())
    assert state.stats["dropped_oversized"] == 1


@pytest.mark.parametrize("cls", [Class.INDICATION, Class.SUCCESS, Class.ERROR])
def test_non_requests_are_not_answered(cls):
    state, protos, transports = make_server()
    protos[(0, 0)].datagramReceived(request(cls=cls), CLIENT)
    assert all(not t.written for t in transports.values())


def test_unknown_method_request_is_400():
    state, protos, transports = make_server()
    protos[(0, 0)].datagramReceived(request(method=0x0ABC), CLIENT)
    _, msg, _, _ = only_reply(transports)
    assert msg.method == 0x0ABC and msg.get(Attr.ERROR_CODE).code == 400


def test_rate_limit_per_source_with_window_reset():
    state, protos, transports = make_server(limiter=SourceLimiter(3, max_sources=2))
    p = protos[(0, 0)]
    for _ in range(5):
        p.datagramReceived(request(), CLIENT)
    assert len(transports[(0, 0)].pop()) == 3
    assert state.stats["rate_limited"] == 2
    p.datagramReceived(request(), ("198.51.100.8", 1))
    assert len(transports[(0, 0)].pop()) == 1  # another source is unaffected
    state.limiter.new_window()
    p.datagramReceived(request(), CLIENT)
    assert len(transports[(0, 0)].pop()) == 1


def test_rate_limiter_memory_is_bounded():
    limiter = SourceLimiter(5, max_sources=100, overflow_limit=10)
    allowed = sum(limiter.allow("10.0.%d.%d" % (i // 256, i % 256)) for i in range(10000))
    assert len(limiter) == 100
    assert allowed == 100 + 10


def test_handler_exception_never_escapes():
    state, protos, transports = make_server()

    def boom(msg, source, key):
        raise RuntimeError("bug")

    state.handlers[Method.JOIN] = boom
    protos[(0, 0)].datagramReceived(request(method=Method.JOIN), CLIENT)
    assert state.stats["internal_error"] == 1
    protos[(0, 0)].datagramReceived(request(), CLIENT)  # still serving
    assert len(transports[(0, 0)].pop()) == 1


def test_fuzzed_datagrams_never_raise_and_replies_go_to_source_ip():
    state, protos, transports = make_server()
    rng = random.Random(5780)
    base = [request(), request((Attr.CHANGE_REQUEST, 6)), request((Attr.RESPONSE_PORT, 7)),
            request((Attr.PADDING, b"x" * 40), fingerprint=True)]
    for i in range(3000):
        data = bytearray(rng.choice(base))
        for _ in range(rng.randint(0, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data) + 1)]
        protos[rng.choice(list(protos))].datagramReceived(bytes(data), CLIENT)
    sent = [addr for t in transports.values() for _, addr in t.pop()]
    assert sent, "some mutated requests must still be answered"
    assert all(addr[0] == CLIENT[0] for addr in sent)
    assert state.stats["internal_error"] == 0


def test_full_plain_answers_mode_adds_rfc5780_attributes():
    state, protos, transports = make_server()
    state.fast_plain = False
    protos[(0, 0)].datagramReceived(request(), CLIENT)
    _, msg, _, data = only_reply(transports)
    assert msg.get(Attr.RESPONSE_ORIGIN) == Address(IP1, 3478)
    assert msg.get(Attr.OTHER_ADDRESS) == Address(IP2, 3479)
    assert len(data) == 56


@pytest.mark.parametrize("req", [
    request(method=0x0ABC),                                   # unknown method, 20 bytes
    request((0x7777, b"abcd")),                               # unknown attribute, 28 bytes
])
def test_error_answers_never_exceed_1_6x_the_request(req):
    state, protos, transports = make_server(two_ips=False)
    protos[(0, 0)].datagramReceived(req, CLIENT)
    _, msg, _, data = only_reply(transports)
    assert msg.cls == Class.ERROR
    assert len(data) <= 1.6 * len(req)


def test_error_too_large_to_send_is_dropped():
    assert binding.error_response(1, b"x" * 12, False, 420, unknown=tuple(range(40)), request_size=20) is None
    assert binding.error_response(1, b"x" * 12, False, 400, request_size=20) is not None
