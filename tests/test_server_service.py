"""The salon service on a fake reactor: binding through DatagramService's
public calls, the RFC 5780 port grid, start-up failure, the start-up log
line."""

from __future__ import annotations

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import LogLevel, capturedLogs, formatEvent

from natsalon.server.layout import Layout, hostport
from natsalon.server.service import SalonConfig, SalonService
from natsalon.server.testing import UDPClock
from natsalon.server.udpservice import DatagramService


class BusyClock(UDPClock):
    """A UDPClock on which one port is taken."""

    def __init__(self, busy: int) -> None:
        super().__init__()
        self.busy = busy

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        if port == self.busy:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenUDP(port, protocol, interface, maxPacketSize)


def started(config: SalonConfig, clock=None):
    clock = clock if clock is not None else UDPClock()
    svc = SalonService(clock, config)
    with capturedLogs() as events:
        svc.privilegedStartService()
        svc.startService()
    return svc, clock, [e for e in events if "serving STUN" in e.get("log_format", "")]


def test_bind_is_idempotent_and_unbind_closes():
    clock = UDPClock()
    svc = DatagramService(clock, 0, DatagramProtocol(), "127.0.0.1")
    assert svc.bound_port is None
    port = svc.bind()
    assert svc.bind() is port and len(clock.udp) == 1
    assert svc.bound_port == port.getHost().port == 40000
    svc.unbind()
    assert port.closed and svc.bound_port is None
    assert svc.unbind() is None
    assert svc.bind() is not port  # bound again, on a new socket


def test_start_binds_each_socket_once_and_stop_closes_them():
    svc, clock, _ = started(SalonConfig(interface="192.0.2.1", alt_ip="192.0.2.2", port=0, alt_port=0, rcvbuf=0))
    assert len(clock.udp) == 4
    assert len(svc.state.transports) == 4
    svc.stopService()
    assert all(t.closed for t in clock.udp.values())
    assert svc.state.transports == {}  # no reply can leave from a closed socket
    assert all(s.bound_port is None for s in svc.sockets.values())


def test_alt_ip_sockets_take_the_ports_the_kernel_chose():
    svc, clock, _ = started(SalonConfig(interface="192.0.2.1", alt_ip="192.0.2.2", port=0, alt_port=0, rcvbuf=0))
    assert svc.layout == Layout(("192.0.2.1", "192.0.2.2"), (40000, 40001))
    assert sorted(clock.udp) == [("192.0.2.1", 40000), ("192.0.2.1", 40001),
                                 ("192.0.2.2", 40000), ("192.0.2.2", 40001)]


def test_a_busy_port_is_one_clear_line_and_nothing_stays_bound():
    clock = BusyClock(3479)
    svc = SalonService(clock, SalonConfig(interface="192.0.2.1", alt_ip="192.0.2.2", rcvbuf=0))
    with pytest.raises(SystemExit, match=r"^natsalon: cannot listen on 192\.0\.2\.1:3479: "):
        svc.privilegedStartService()
    assert clock.udp and all(t.closed for t in clock.udp.values())
    assert all(s.bound_port is None for s in svc.sockets.values())


@pytest.mark.parametrize("config,advertised,sockets", [
    (SalonConfig(advertise="203.0.113.10", rcvbuf=0),
     "203.0.113.10:3478, alt port 3479, alt IP none", "0.0.0.0:3478, 0.0.0.0:3479"),
    (SalonConfig(rcvbuf=0, rate_limit=0, introducer=False),
     "*:3478, alt port 3479, alt IP none", "0.0.0.0:3478, 0.0.0.0:3479"),
    (SalonConfig(interface="192.0.2.1", alt_ip="192.0.2.2", advertise="203.0.113.10",
                 advertise_alt="203.0.113.11", rcvbuf=0),
     "203.0.113.10:3478, alt port 3479, alt IP 203.0.113.11",
     "192.0.2.1:3478, 192.0.2.1:3479, 192.0.2.2:3478, 192.0.2.2:3479"),
    (SalonConfig(interface="2001:db8::1", port=0, alt_port=0, rcvbuf=0),
     "[2001:db8::1]:40000, alt port 40001, alt IP none", "[2001:db8::1]:40000, [2001:db8::1]:40001"),
])
def test_start_up_line_says_the_addresses_readably(config, advertised, sockets):
    svc, clock, (event,) = started(config)
    assert event["log_level"] == LogLevel.info
    text = formatEvent(event)
    assert "serving STUN on %s;" % sockets in text
    assert "advertised %s;" % advertised in text
    assert "Layout(" not in text and "None" not in text
    assert ("rate limit off" in text) == (not config.rate_limit)
    assert ("introducer on" in text) == config.introducer


def test_hostport():
    assert hostport("192.0.2.1", 1) == "192.0.2.1:1"
    assert hostport("::", 2) == "[::]:2"
    assert hostport("", 3) == hostport(None, 3) == "*:3"


def test_without_alt_ip_one_line_says_nat_classification_needs_it():
    for config, hinted in ((SalonConfig(port=0, alt_port=0, rcvbuf=0), True),
                           (SalonConfig(interface="192.0.2.1", alt_ip="192.0.2.2", rcvbuf=0), False)):
        svc = SalonService(UDPClock(), config)
        with capturedLogs() as events:
            svc.privilegedStartService()
            svc.startService()
        hints = [formatEvent(e) for e in events if "--alt-ip" in formatEvent(e)]
        assert len(hints) == int(hinted)
        if hinted:
            assert "not classify their NAT" in hints[0] and "--interface IP1 --alt-ip IP2" in hints[0]
        svc.stopService()


def test_start_up_line_names_the_ipv4_sockets_of_a_wildcard_ipv6_salon():
    svc, clock, (event,) = started(SalonConfig(interface="::", port=0, alt_port=0, rcvbuf=0))
    assert "serving STUN on [::]:40000, [::]:40001, 0.0.0.0:40000, 0.0.0.0:40001;" in formatEvent(event)


def test_a_real_socket_let_go_at_once_can_be_bound_again_with_its_protocol():
    from twisted.internet import reactor as real_reactor

    proto = DatagramProtocol()
    svc = DatagramService(real_reactor, 0, proto, "127.0.0.1")
    first = svc.bind()
    svc.unbind(at_once=True)
    assert proto.transport is None and not first.connected
    again = svc.bind()
    try:
        assert proto.transport is again and again.getHost().port > 0
    finally:
        svc.unbind(at_once=True)
