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
from twisted.internet import utils

from test_turn_family_client import SECRET, dual_salon  # noqa: F401 (dual_salon: a fixture)
from test_turn_interop import echo_peer, need, uclient_totals

pytestmark = pytest.mark.interop


@pytest.fixture
def peer6():
    """turnutils_peer (a UDP echo server) on ::1."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    yield from echo_peer("::1", port)


@pytest.mark.parametrize("mode", ["channels", "send-indications"])
@pytest_twisted.inlineCallbacks
def test_turnutils_uclient_relays_through_an_ipv6_relayed_address(dual_salon, peer6, mode):
    salon = dual_salon
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
