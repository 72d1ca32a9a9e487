"""coturn's turnutils_uclient against the salon's TURN relay with both
families on loopback: the client reaches the salon over IPv4, asks for an
IPv6 relayed address (``-x``: REQUESTED-ADDRESS-FAMILY) and relays through
it to turnutils_peer on ::1, over channels and Send indications."""

from __future__ import annotations

import os
import shutil
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, utils

from natsalon.server.layout import Family
from natsalon.server.service import SalonConfig, SalonService
from natsalon.server.turn import TurnConfig
from test_turn_interop import SECRET, Queue, Quiet, need, uclient_totals
from loopback6 import has_ipv6_loopback as _has_ipv6_loopback

pytestmark = pytest.mark.interop



@pytest.fixture
def salon():
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    turn = TurnConfig(secrets=(SECRET,), allow_peer=("127.0.0.0/8", "::1/128"), relay_ip="127.0.0.1",
                      second_relay_ip="::1")
    svc = SalonService(reactor, SalonConfig(interface="127.0.0.1", port=0, alt_port=0, rcvbuf=0, rate_limit=0,
                                            second=Family("::1"), turn=turn))
    svc.startService()
    yield svc
    pytest_twisted.blockon(defer.maybeDeferred(svc.stopService))
    assert len(svc.turn.core) == 0


@pytest.fixture
def peer6():
    """turnutils_peer (a UDP echo server) on ::1."""
    need("turnutils_peer")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    proc = Quiet()
    transport = reactor.spawnProcess(proc, shutil.which("turnutils_peer"),
                                     ["turnutils_peer", "-L", "::1", "-p", str(port)], env=os.environ)
    probe = Queue()
    listening = reactor.listenUDP(0, probe, interface="::1")

    @defer.inlineCallbacks
    def wait_up():
        for _ in range(50):
            probe.transport.write(b"ping", ("::1", port))
            try:
                yield probe.get(0.1)
                return
            except defer.TimeoutError:
                pass
        raise RuntimeError("turnutils_peer did not answer on ::1")

    try:
        pytest_twisted.blockon(wait_up())
        yield port
    finally:
        listening.stopListening()
        transport.signalProcess("TERM")
        pytest_twisted.blockon(proc.ended)


@pytest.mark.parametrize("mode", ["channels", "send-indications"])
@pytest_twisted.inlineCallbacks
def test_turnutils_uclient_relays_through_an_ipv6_relayed_address(salon, peer6, mode):
    need("turnutils_uclient")
    n = 200
    args = ["-x", "-c", "-W", SECRET.decode(), "-u", "alice", "-e", "::1", "-r", str(peer6),
            "-p", str(salon.layout.ports[0]), "-n", str(n), "-l", "100", "-z", "2"]
    if mode == "send-indications":
        args.append("-s")
    ended = []  # the relayed addresses of the allocations, as they end
    salon.turn.core.on_delete.append(lambda alloc: ended.append(alloc.relayed_addresses()))
    out, err, rc = yield utils.getProcessOutputAndValue(shutil.which("turnutils_uclient"), args + ["127.0.0.1"],
                                                        env=os.environ)
    text = (out + err).decode("utf-8", "replace")
    assert rc == 0, text
    assert uclient_totals(text) == (n, n, 0), text
    stats = salon.state.stats
    assert stats["turn_allocations"] >= 1 and stats["turn_440"] == 0 and stats["turn_443"] == 0
    assert salon.turn.core.to_peer_packets >= n and salon.turn.core.to_client_packets >= n
    salon.turn.core.close_all()
    assert ended and all([a.host for a in addrs] == ["::1"] for addrs in ended), ended
