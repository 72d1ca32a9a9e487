"""The salon service on real loopback sockets: four RFC 5780 sockets on
127.0.0.1 and 127.0.0.2, ports chosen by the kernel, answered over UDP."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from natsalon.server.service import SalonConfig, SalonService
from natsalon.stun import CHANGE_IP, CHANGE_PORT, Address, Attr, Class, Message, Method
from natsalon.client.stunsocket import StunClientProtocol
from natsalon.stun.client import RetransmitPolicy

FAST = RetransmitPolicy(rto=0.1, sends=4, last_wait=4)


@pytest.fixture
def salon():
    svc = SalonService(reactor, SalonConfig(interface="127.0.0.1", alt_ip="127.0.0.2", port=0, alt_port=0,
                                            rcvbuf=0))
    svc.startService()
    yield svc
    pytest_twisted.blockon(defer.maybeDeferred(svc.stopService))


@pytest.fixture
def client():
    proto = StunClientProtocol(reactor, FAST)
    port = reactor.listenUDP(0, proto, interface="127.0.0.1")
    yield proto, port.getHost().port
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@pytest_twisted.inlineCallbacks
def test_rfc5780_grid_over_real_sockets(salon, client):
    proto, local_port = client
    layout = salon.layout
    assert layout.ips == ("127.0.0.1", "127.0.0.2")
    primary = ("127.0.0.1", layout.ports[0])
    for flags, origin_key in [(0, (0, 0)), (CHANGE_PORT, (0, 1)), (CHANGE_IP, (1, 0)),
                              (CHANGE_IP | CHANGE_PORT, (1, 1))]:
        msg = Message(Method.BINDING, Class.REQUEST, os.urandom(12), ((Attr.CHANGE_REQUEST, flags),))
        resp = yield proto.request(msg, primary)
        assert resp.message.cls == Class.SUCCESS
        assert resp.message.get(Attr.XOR_MAPPED_ADDRESS) == Address("127.0.0.1", local_port)
        assert resp.source == layout.address(origin_key)
        assert resp.message.get(Attr.RESPONSE_ORIGIN) == layout.address(origin_key)
        assert resp.message.get(Attr.OTHER_ADDRESS) == layout.other(origin_key)


@pytest_twisted.inlineCallbacks
def test_plain_request_and_stats(salon, client):
    proto, local_port = client
    msg = Message(Method.BINDING, Class.REQUEST, os.urandom(12))
    resp = yield proto.request(msg, ("127.0.0.1", salon.layout.ports[0]))
    assert resp.message.attributes == ((Attr.XOR_MAPPED_ADDRESS, Address("127.0.0.1", local_port)),)
    salon.flush_stats()
    assert salon.state.stats["answered"] >= 1


@pytest_twisted.inlineCallbacks
def test_ipv6_loopback():
    import socket

    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind(("::1", 0))
        s.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    svc = SalonService(reactor, SalonConfig(interface="::1", port=0, alt_port=0, rcvbuf=0))
    svc.startService()
    proto = StunClientProtocol(reactor, FAST)
    port = reactor.listenUDP(0, proto, interface="::1")
    try:
        local = port.getHost().port
        for attrs in ((), ((Attr.CHANGE_REQUEST, CHANGE_PORT),)):
            msg = Message(Method.BINDING, Class.REQUEST, os.urandom(12), attrs)
            resp = yield proto.request(msg, ("::1", svc.layout.ports[0]))
            assert resp.message.get(Attr.XOR_MAPPED_ADDRESS) == Address("::1", local)
        assert resp.source == Address("::1", svc.layout.ports[1])
    finally:
        yield port.stopListening()
        yield svc.stopService()
