"""The relay fallback (issue 12) on a Clock: the salon's real introducer
and TURN relay, two client machines whose direct path is cut, wired
through the in-memory network of test_session; no sockets."""

from __future__ import annotations

import random

from natsalon.client.punch import RELAY, CandidateKind, LocalSocket
from natsalon.client.relay import Relay
from natsalon.client.session import Phase
from natsalon.server.introducer.cookies import CookieJar
from natsalon.server.introducer.handler import Introducer
from natsalon.server.introducer.rooms import MemoryRooms
from natsalon.server.layout import Layout
from natsalon.server.reflector import ReflectorProtocol, ServerState
from natsalon.server.turn import TurnConfig
from natsalon.server.turn.auth import room_credentials
from natsalon.server.turn.relay import TurnService
from natsalon.stun import Address, Method

from test_session import A, B, SALON, Net

SECRET = b"relay-test-secret"


class _Host:
    def __init__(self, port: int) -> None:
        self.port = port


class _Listening:
    """A relayed socket on the in-memory network."""

    def __init__(self, net: "RelayNet", addr) -> None:
        self.net, self.addr = net, addr

    def write(self, data: bytes, addr) -> None:
        self.net.send(self.addr, tuple(addr), data)

    def getHost(self):
        return _Host(self.addr[1])

    def stopListening(self) -> None:
        self.net.nodes.pop(self.addr, None)


class RelayNet(Net):
    """The session tests' network, with the direct path between A and B
    cut (every datagram between them dropped: no hole can be punched) and
    UDP ports for the salon's relayed sockets."""

    def __init__(self, direct: bool = False, **kw) -> None:
        super().__init__(**kw)
        self.direct = direct
        self.sent = []
        self.relay_host = SALON[0]  #: where relayed sockets are "bound"

    def send(self, src, dst, data: bytes) -> None:
        self.sent.append((src, dst))
        if not self.direct and {src, dst} == {A, B}:
            return
        super().send(src, dst, data)

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        addr = (self.relay_host, port)
        self.attach(addr, protocol)
        return _Listening(self, addr)

    def salon(self, turn: bool = True, secret: bytes = SECRET):
        state = ServerState()
        state.layout = Layout((SALON[0], None), (SALON[1], 3479))
        intro = Introducer(self.clock, MemoryRooms(), CookieJar(b"k" * 32),
                           push=lambda r: state.transports[(0, 0)].write(r.data, r.to))
        state.handlers[Method.JOIN] = intro.handle
        proto = ReflectorProtocol((0, 0), state, rcvbuf=0)
        self.attach(SALON, proto)
        state.transports[(0, 0)] = proto.transport
        self.turn = None
        if turn:
            self.turn = TurnService(self, state, TurnConfig(secrets=(secret,), allow_peer=("0.0.0.0/0",), tcp=False),
                                    "0.0.0.0", SALON[0], rng=random.Random(3))
            intro.turn_credentials = lambda room, now: room_credentials(secret, room, now)
        return intro

    # the Clock is the reactor: TurnService asks it for seconds() and callLater()
    def seconds(self):
        return self.clock.seconds()

    def callLater(self, *a, **kw):
        return self.clock.callLater(*a, **kw)


def _met(net: RelayNet, a, b, then: float = 3.0) -> None:
    """``a`` joins, ``b`` 1.5 s later, then ``then`` seconds run."""
    a.start()
    net.run(1.5)
    b.start()
    net.run(then)


def _pair(net: RelayNet, **settings):
    net.salon()
    a, ca, ea = net.client(A, **settings)
    b, cb, eb = net.client(B, **settings)
    return (a, ca, ea), (b, cb, eb)


def test_no_direct_path_connects_through_the_relay_and_carries_frames():
    net = RelayNet()
    (a, ca, ea), (b, cb, eb) = _pair(net, relay_after=1.0)
    _met(net, a, b)
    assert ca.phase is cb.phase is Phase.CONNECTED
    for core, events in ((ca, ea), (cb, eb)):
        path = core.connection.path
        assert path.kind == RELAY
        names = [e["event"] for e in events]
        assert "relay-allocating" in names and "relay-allocated" in names and "relayed" in names
        relayed = [e for e in events if e["event"] == "relayed"][0]
        assert relayed["server"] == "%s:%d" % SALON
        # the head start, then about the allocation and a few round trips
        assert 1000 <= relayed["relay_ms"] <= 1600, relayed
    assert len(net.turn.core) == 2  # both allocated; either side's allocation may carry a direction
    got = {"a": [], "b": []}
    ca.connection.set_receiver(got["a"].append)
    cb.connection.set_receiver(got["b"].append)
    for i in range(50):
        assert ca.connection.send(b"a%d" % i)
        assert cb.connection.send(b"b%d" % i)
    net.run(0.5)
    assert got["b"] == [b"a%d" % i for i in range(50)]
    assert got["a"] == [b"b%d" % i for i in range(50)]
    # the relay saw only AEAD frames and PUNCH probes, and data goes as
    # ChannelData once a channel is bound
    assert any(alloc.channels for alloc in net.turn.core.allocations())
    a.stop()
    b.stop()
    net.run(1.0)
    assert len(net.turn.core) == 0  # both allocations released (Refresh 0)


def test_a_direct_path_wins_and_no_allocation_is_made():
    net = RelayNet(direct=True)
    (a, ca, ea), (b, cb, eb) = _pair(net, relay_after=1.0)
    _met(net, a, b)
    assert ca.connection.path.kind == cb.connection.path.kind == "direct"
    assert not [e for e in ea + eb if e["event"].startswith("relay")]
    assert len(net.turn.core) == 0


def test_without_credentials_no_relay_and_the_punch_fails():
    net = RelayNet()
    net.salon(turn=False)
    a, ca, ea = net.client(A, punch_timeout=2.0)
    b, cb, eb = net.client(B, punch_timeout=2.0)
    _met(net, a, b, 2.5)
    assert ca.phase is Phase.BACKING_OFF
    assert not [e for e in ea if e["event"].startswith("relay")]


def test_relay_local_socket_is_a_relayed_pair():
    local = LocalSocket(lambda d, a: None, "relay", relayed=SALON)
    from natsalon.client.punch import Candidate, CandidatePair
    pair = CandidatePair(local, Candidate(Address(*A), CandidateKind.PRFLX))
    assert pair.relayed and pair.path_kind == RELAY and pair.rank == CandidateKind.RELAY.rank
    plain = CandidatePair(LocalSocket(lambda d, a: None), Candidate(Address(*A), CandidateKind.RELAY))
    assert plain.path_kind == RELAY
    assert CandidatePair(LocalSocket(lambda d, a: None), Candidate(Address(*A), CandidateKind.SRFLX)).path_kind \
        == "direct"


def test_relay_send_without_allocation_raises_and_close_is_idempotent():
    net = RelayNet()
    net.salon()
    sock = net.client(A)[1].socket
    relay = Relay(net.clock, sock, SALON, room_credentials(SECRET, b"r" * 16, net.clock.seconds()))
    try:
        relay.send(b"x", B)
    except OSError:
        pass
    else:
        raise AssertionError("sent without an allocation")
    d = relay.start(B[0])
    got = []
    d.addCallback(got.append)
    net.run(0.5)
    assert got and got[0].host == SALON[0] and len(net.turn.core) == 1
    closed = []
    net.sent.clear()
    relay.close().addCallback(closed.append)
    # the release leaves at once, not at the next turn of the reactor (a
    # client that closes its socket right after, at shutdown, still releases)
    assert net.sent == [(A, SALON)]
    relay.close().addCallback(closed.append)
    net.run(0.5)
    assert closed == [False, True] and len(net.turn.core) == 0
    assert SALON not in sock.relays


def test_a_relayed_pair_upgrades_to_direct_when_a_path_opens():
    net = RelayNet()
    (a, ca, ea), (b, cb, eb) = _pair(net, relay_after=1.0, upgrade_interval=1.0, release_after=2.0)
    _met(net, a, b)
    assert ca.connection.path.kind == cb.connection.path.kind == RELAY
    conn_a, conn_b = ca.connection, cb.connection
    got = []
    conn_b.set_receiver(got.append)
    for i in range(20):
        conn_a.send(b"x%d" % i)
    net.run(0.2)
    net.direct = True  # the NAT lets the direct path through now
    sent = 20
    for _ in range(40):  # frames flow across the switch
        conn_a.send(b"x%d" % sent)
        sent += 1
        net.run(0.1)
    assert conn_a.path.kind == conn_b.path.kind == "direct"
    assert conn_a.path.address == B and conn_b.path.address == A
    for events in (ea, eb):
        up = [e for e in events if e["event"] == "upgraded"]
        assert len(up) == 1 and up[0]["path"] == "direct", events
    net.run(0.5)
    assert got == [b"x%d" % i for i in range(sent)]  # nothing lost across the switch
    assert conn_a.rejected == conn_b.rejected == 0
    net.run(3.0)
    assert len(net.turn.core) == 0  # the allocations were released after the switch
    a.stop()
    b.stop()


def test_no_upgrade_past_its_budget():
    net = RelayNet()
    (a, ca, ea), (b, cb, eb) = _pair(net, relay_after=1.0, upgrade_interval=1.0, upgrade_budget=3.0)
    _met(net, a, b, 8.0)
    net.direct = True
    net.run(3.0)
    assert ca.connection.path.kind == RELAY
    assert len(net.turn.core) == 2  # still relayed, allocations kept
    a.stop()
    b.stop()


def test_parse_turn_uri():
    from natsalon.client.options import TurnServer, parse_turn

    assert parse_turn("turn:u:p@192.0.2.9") == TurnServer("192.0.2.9", 3478, "u", "p")
    assert parse_turn("turn:1795712400:room-ab:cGFzcw==@turn.example:5349?transport=udp") == TurnServer(
        "turn.example", 5349, "1795712400:room-ab", "cGFzcw==")
    assert parse_turn("turn:a%40b:p%3Aq@h").credentials == ("a@b", "p:q")
    for bad, why in (("turns:u:p@h", "TLS"), ("turn:u:p@h?transport=tcp", "UDP only"), ("turn:h", "credentials"),
                     ("turn:u@h", "USER:PASS"), ("stun:u:p@h", "not a turn")):
        try:
            parse_turn(bad)
        except ValueError as e:
            assert why in str(e), (bad, e)
        else:
            raise AssertionError(bad)


def test_another_turn_server_than_the_salon():
    """--turn: the salon runs no relay, the client allocates at another TURN
    server (here a second host with the same core) with its own credentials."""
    from natsalon.client.options import TurnServer
    from natsalon.server.turn import mint

    net = RelayNet()
    net.salon(turn=False)
    other = ("198.51.100.99", 3478)
    state = ServerState()
    state.layout = Layout((other[0], None), (other[1], 3479))
    proto = ReflectorProtocol((0, 0), state, rcvbuf=0)
    net.attach(other, proto)
    state.transports[(0, 0)] = proto.transport
    net.relay_host = other[0]
    service = TurnService(net, state, TurnConfig(secrets=(SECRET,), allow_peer=("0.0.0.0/0",), tcp=False),
                          "0.0.0.0", other[0], rng=random.Random(5))
    user, password = mint(SECRET, "me", 2 ** 31 - 1)
    a, ca, ea = net.client(A, relay_after=1.0)
    b, cb, eb = net.client(B, relay_after=1.0)
    ca.turn = cb.turn = TurnServer(other[0], other[1], user, password)
    _met(net, a, b)
    assert ca.connection.path is not None and cb.connection.path is not None, (ea, eb)
    assert ca.connection.path.kind == cb.connection.path.kind == RELAY
    assert [e["server"] for e in ea if e["event"] == "relayed"] == ["198.51.100.99:3478"]
    assert len(service.core) == 2
    a.stop()
    b.stop()
    net.run(1.0)
    assert len(service.core) == 0


def _restart_salon(net: RelayNet, down: float, secret: bytes = SECRET) -> None:
    """The salon's process dies (its allocations, relayed sockets and rooms
    with it) and a new one starts ``down`` seconds later."""
    for addr in [n for n in net.nodes if n[0] == net.relay_host and n != SALON]:
        del net.nodes[addr]
    net.salon_down = True
    net.run(down)
    net.salon_down = False
    net.salon(secret=secret)


def test_a_lost_relay_is_allocated_again_and_the_session_goes_on():
    net = RelayNet()
    (a, ca, ea), (b, cb, eb) = _pair(net, relay_after=1.0, upgrade_budget=0)
    _met(net, a, b)
    assert ca.connection.path.kind == cb.connection.path.kind == RELAY
    conn_a, conn_b = ca.connection, cb.connection
    got = {"a": [], "b": []}
    conn_a.set_receiver(got["a"].append)
    conn_b.set_receiver(got["b"].append)
    joined = [e["event"] for e in ea + eb].count("joined")
    _restart_salon(net, 1.0)
    net.run(6.0)
    for core, events in ((ca, ea), (cb, eb)):
        names = [e["event"] for e in events]
        assert "relay-lost" in names and "relay-recovered" in names, events
        lost = [e for e in events if e["event"] == "relay-lost"][0]
        assert "437" in lost["reason"] or "ICMP" in lost["reason"] or "refresh" in lost["reason"], lost
        recovered = [e for e in events if e["event"] == "relay-recovered"][0]
        assert recovered["server"] == "%s:%d" % SALON and recovered["recover_ms"] < 5000, recovered
        assert "path-lost" not in names  # no re-join: the same session, the same Connection
        assert core.phase is Phase.CONNECTED and core.connection.path.kind == RELAY
    assert [e["event"] for e in ea + eb].count("joined") == joined
    assert conn_a is ca.connection and conn_b is cb.connection
    assert len(net.turn.core) == 2  # the new salon's allocations
    for i in range(30):
        assert conn_a.send(b"a%d" % i)
        assert conn_b.send(b"b%d" % i)
    net.run(0.5)
    assert got["b"] == [b"a%d" % i for i in range(30)]
    assert got["a"] == [b"b%d" % i for i in range(30)]
    assert conn_a.rejected == conn_b.rejected == 0
    a.stop()
    b.stop()
    net.run(1.0)
    assert len(net.turn.core) == 0  # the new allocations released on stop


def test_a_salon_restarted_with_another_secret_hands_out_fresh_credentials():
    """The introduction's credentials die with the salon's secret (a salon
    with no --cookie-secret-file draws a new one at each start): the 401 of
    the new allocation sends both sides back to the salon for fresh ones."""
    net = RelayNet()
    (a, ca, ea), (b, cb, eb) = _pair(net, relay_after=1.0, upgrade_budget=0)
    _met(net, a, b)
    assert ca.connection.path.kind == cb.connection.path.kind == RELAY
    conn_a, conn_b = ca.connection, cb.connection
    got = []
    conn_b.set_receiver(got.append)
    _restart_salon(net, 1.0, secret=b"another secret of the new process")
    net.run(8.0)
    for core, events in ((ca, ea), (cb, eb)):
        names = [e["event"] for e in events]
        assert "relay-recovered" in names and "relay-failed" not in names and "path-lost" not in names, events
        assert core.connection.path.kind == RELAY
    assert conn_a is ca.connection and conn_b is cb.connection
    assert len(net.turn.core) == 2  # allocated with credentials only the new secret verifies
    for i in range(20):
        assert conn_a.send(b"a%d" % i)
    net.run(0.5)
    assert got == [b"a%d" % i for i in range(20)] and conn_b.rejected == 0
    a.stop()
    b.stop()


def test_a_silent_peer_is_no_lost_relay():
    """The peer goes quiet but the allocation is fine (the check's Refresh
    succeeds): nothing is re-allocated, and the keepalive ends the path."""
    net = RelayNet()
    (a, ca, ea), (b, cb, eb) = _pair(net, relay_after=1.0, upgrade_budget=0)
    _met(net, a, b)
    assert ca.connection.path.kind == RELAY
    refreshes = len(ea)
    net.cut.add(B)
    net.run(8.0)
    names = [e["event"] for e in ea[refreshes:]]
    assert "relay-lost" not in names and "relay-allocated" not in names, ea[refreshes:]
    net.run(8.0)
    assert "path-lost" in [e["event"] for e in ea[refreshes:]]
    a.stop()
    b.stop()


def test_connected_event_names_the_server_and_no_strategy_for_a_relayed_path():
    from types import SimpleNamespace

    from natsalon.cli.connect import connected_event
    from natsalon.client.punch import Path

    info = {"elapsed": 0.5, "punch": 0.25}
    relayed = SimpleNamespace(path=Path(Address(*SALON), RELAY, 0.01), info=info)
    ev = connected_event(relayed, "203.0.113.10:3478")
    assert ev["path"] == "relay" and ev["server"] == "203.0.113.10:3478" and ev["strategy"] == "relay"
    assert connected_event(relayed, "203.0.113.10:3478", "198.51.100.20:3478")["server"] == "198.51.100.20:3478"
    direct = SimpleNamespace(path=Path(Address(*B), "direct", 0.01, strategy="birthday"), info=info)
    ev = connected_event(direct, "203.0.113.10:3478", "198.51.100.20:3478")
    assert ev["server"] == "203.0.113.10:3478" and ev["strategy"] == "birthday"


def test_a_repunched_relayed_path_says_its_server():
    net = RelayNet()
    (a, ca, ea), (b, cb, eb) = _pair(net, relay_after=1.0, upgrade_budget=0, keepalive=1.0)
    _met(net, a, b)
    net.cut.add(B)  # the peer vanishes for a while: both re-join, relayed again
    net.run(4.0)
    net.cut.clear()
    net.run(8.0)
    again = [e for e in ea if e["event"] == "connected" and e.get("repunched")]
    assert again and again[-1]["path"] == RELAY, ea
    assert again[-1]["server"] == "%s:%d" % SALON and again[-1]["strategy"] == "relay"
    a.stop()
    b.stop()


def test_a_relay_that_cannot_be_allocated_again_is_left_to_the_keepalive():
    """The restarted salon runs no TURN: three Allocates fail, the watch
    says relay-failed and stops; the keepalive ends the path and the
    machine re-joins (no relay now: the punch fails and it backs off)."""
    net = RelayNet()
    (a, ca, ea), (b, cb, eb) = _pair(net, relay_after=1.0, upgrade_budget=0, punch_timeout=2.0)
    _met(net, a, b)
    assert ca.connection.path.kind == RELAY
    for addr in [n for n in net.nodes if n[0] == net.relay_host and n != SALON]:
        del net.nodes[addr]
    net.salon(turn=False)
    net.run(60.0)
    names = [e["event"] for e in ea]
    assert "relay-lost" in names and "relay-recovered" not in names, ea
    failed = [e for e in ea if e["event"] == "relay-failed"]
    assert failed and failed[0]["reason"].startswith("allocating again"), ea
    assert names.index("relay-failed") < names.index("path-lost")
    a.stop()
    b.stop()
