"""The upgrade's learning (natsalon.client.upgrade): while it runs, a
genuine probe of the peer from a source that is no candidate (its NAT
changed) becomes a peer-reflexive candidate of the connected puncher,
which would refuse it otherwise; forged probes teach nothing."""

from __future__ import annotations

from types import SimpleNamespace

from natsalon import wire
from natsalon.client.punch import CandidateKind, PairState
from natsalon.client.upgrade import MAX_LEARNT, Upgrade, peer_request

from test_punch import Net, open_routes, run

NEW = ("192.0.2.20", 50123)  #: the peer's new mapping


def _connected():
    """Two connected punchers; a's pairs then count as failed, as a
    relayed session's direct pairs (an Upgrade would move to a verified one)."""
    net = Net(open_routes())
    results = run(net)
    assert set(results) == {"a", "b"} and net.a.selected is not None
    for pair in net.a.pairs.values():
        pair.state = PairState.FAILED
    return net


def _request_of_b(net, leaving: bool = False) -> bytes:
    flags = wire.FLAG_CONNECTED | (wire.FLAG_LEAVING if leaving else 0)
    return wire.punch_request(net.nb, net.b.session.k_punch, flags)[1]


def test_a_connected_puncher_refuses_a_new_source_without_an_upgrade():
    net = _connected()
    assert net.a.datagram(_request_of_b(net), NEW)
    assert net.a.refused == 1 and not [p for p in net.a.pairs.values() if p.address == NEW]


def test_an_upgrade_learns_the_peers_new_source_answers_and_verifies_it():
    net = _connected()
    sock = SimpleNamespace(on_punch=net.a.datagram)
    up = Upgrade(net.clock, net.a, 1.0, 10.0, lambda pair: None, socket=sock)
    up.start()
    assert sock.on_punch(_request_of_b(net), NEW)
    pair = net.a.pairs[(net.a.default_socket, NEW)]
    assert pair.kind is CandidateKind.PRFLX and up.learnt == 1 and net.a.refused == 0
    # answered and probed back (a triggered check) towards the new source
    assert [to for who, to, _ in net.log[-2:]] == [NEW, NEW]
    assert pair.state in (PairState.SUCCEEDED_ONE_WAY, PairState.IN_PROGRESS)
    up.stop()
    assert sock.on_punch == net.a.datagram  # restored


def test_forged_leaving_and_extra_sources_teach_nothing():
    net = _connected()
    sock = SimpleNamespace(on_punch=net.a.datagram)
    up = Upgrade(net.clock, net.a, 1.0, 10.0, lambda pair: None, socket=sock)
    up.start()
    forged = wire.punch_request(net.nb, b"k" * 32, wire.FLAG_CONNECTED)[1]
    assert not peer_request(net.a, forged)
    sock.on_punch(forged, NEW)
    assert up.learnt == 0
    assert not peer_request(net.a, _request_of_b(net, leaving=True))
    for port in range(MAX_LEARNT + 3):
        sock.on_punch(_request_of_b(net), ("192.0.2.20", 60000 + port))
    assert up.learnt == MAX_LEARNT
    assert len([p for p in net.a.pairs.values() if p.kind is CandidateKind.PRFLX]) == MAX_LEARNT
    # a probe of an extra socket or a relay (a third argument) is passed on, never learnt from
    up.stop()
