"""The client machine (natsalon.client.session) on a Clock: two clients and
the salon's real reflector + introducer wired through an in-memory network
that can cut paths; no sockets."""

from typing import Dict, Tuple

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from natsalon.client.connection import Connection
from natsalon.client.demux import ClientSocket
from natsalon.client.errors import PunchFailed, SalonUnreachable
from natsalon.client.session import ClientMachine, Core, Phase, Settings
from natsalon.crypto.secret import derive
from natsalon.server.introducer.cookies import CookieJar
from natsalon.server.introducer.handler import Introducer
from natsalon.server.introducer.rooms import MemoryRooms
from natsalon.server.layout import Layout
from natsalon.server.reflector import ReflectorProtocol, ServerState
from natsalon.stun import Method

SALON = ("203.0.113.10", 3478)
A = ("192.0.2.1", 40000)
B = ("198.51.100.7", 50000)
KEYS = derive("room", "secret")


class Wire:
    """A transport on the in-memory network: ``write`` delivers after
    ``delay`` to whoever owns the destination, unless the net drops it."""

    def __init__(self, net: "Net", addr: Tuple[str, int]) -> None:
        self.net = net
        self.addr = addr

    def write(self, data: bytes, addr) -> None:
        self.net.send(self.addr, tuple(addr), data)


class Net:
    def __init__(self, delay: float = 0.01) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.delay = delay
        self.nodes: Dict[Tuple[str, int], object] = {}
        self.cut = set()  #: addresses whose traffic (both ways) is dropped
        self.salon_down = False

    def attach(self, addr, proto) -> None:
        self.nodes[addr] = proto
        proto.transport = Wire(self, addr)

    def send(self, src, dst, data: bytes) -> None:
        if src in self.cut or dst in self.cut:
            return
        if self.salon_down and SALON in (src, dst):
            return
        target = self.nodes.get(dst)
        if target is not None:
            self.clock.callLater(self.delay, target.datagramReceived, data, src)

    def salon(self) -> Introducer:
        state = ServerState()
        state.layout = Layout((SALON[0], None), (SALON[1], 3479))
        intro = Introducer(self.clock, MemoryRooms(), CookieJar(b"k" * 32),
                           push=lambda r: state.transports[(0, 0)].write(r.data, r.to))
        state.handlers[Method.JOIN] = intro.handle
        proto = ReflectorProtocol((0, 0), state, rcvbuf=0)
        self.attach(SALON, proto)
        state.transports[(0, 0)] = proto.transport
        return intro

    def client(self, addr, **settings):
        sock = ClientSocket(self.clock)
        self.attach(addr, sock)
        conn = Connection(self.clock, sock)
        sock.on_frame = conn.frame_received
        events = []
        conn.on_event = events.append
        s = Settings(**settings)
        core = Core(self.clock, sock, SALON, KEYS, [], conn, s, emit=events.append)
        machine = ClientMachine(core)
        conn.on_close = machine.stop
        return machine, core, events

    def run(self, seconds: float, step: float = 0.01) -> None:
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)


def fixed(delay):
    return lambda attempt: delay


def test_two_machines_meet_punch_and_carry_frames():
    net = Net()
    net.salon()
    a, ca, _ = net.client(A)
    b, cb, _ = net.client(B)
    got = {}
    a.when_connected().addCallback(lambda c: got.__setitem__("a", c))
    a.start()
    net.run(1.5)
    assert ca.phase is Phase.WAITING
    b.start()
    b.when_connected().addCallback(lambda c: got.__setitem__("b", c))
    net.run(1.0)
    assert ca.phase is cb.phase is Phase.CONNECTED
    assert got["a"] is ca.connection and got["b"] is cb.connection
    assert got["a"].path.address == B and got["b"].path.address == A
    received = []
    got["b"].set_receiver(received.append)
    assert got["a"].send(b"hello")
    net.run(0.1)
    assert received == [b"hello"]
    # when_connected while connected fires at once
    now = []
    a.when_connected().addCallback(now.append)
    assert now == [ca.connection]
    a.stop()
    b.stop()
    assert ca.phase is cb.phase is Phase.STOPPED
    assert not net.clock.getDelayedCalls() or all(
        not c.active() or c.func.__name__ == "datagramReceived" for c in net.clock.getDelayedCalls())


def test_stop_cancels_every_pending_call_in_each_state():
    for wait in (0.0, 0.5, 1.5):  # joining, waiting (polling), and a lonely member's later polls
        net = Net()
        net.salon()
        a, ca, _ = net.client(A)
        waiter = a.when_connected()
        failures = []
        waiter.addErrback(failures.append)
        a.start()
        net.run(wait)
        a.stop()
        net.run(30)  # nothing else happens: no polls, no retransmissions
        assert ca.phase is Phase.STOPPED
        assert failures and failures[0].check(defer.CancelledError)
        assert not [c for c in net.clock.getDelayedCalls() if c.active()]


def test_salon_unreachable_backs_off_with_growing_delays():
    net = Net()  # no salon attached: JOINs go nowhere
    delays = []
    policy = lambda n: delays.append(n) or 2.0 * n  # noqa: E731
    a, ca, events = net.client(A, retry=policy)
    first = a.when_connected(fail_after_failures=1)
    later = a.when_connected(fail_after_failures=2)
    errors = []
    first.addErrback(errors.append)
    later.addErrback(errors.append)
    a.start()
    net.run(10.5)  # the JOIN schedule gives up after 9.75 s
    assert ca.phase is Phase.BACKING_OFF and delays == [1]
    assert len(errors) == 1 and errors[0].check(SalonUnreachable)
    net.run(2.0)  # 2 s of backoff, then a new join
    assert ca.phase is Phase.JOINING
    net.run(10)
    assert ca.phase is Phase.BACKING_OFF and delays == [1, 2] and len(errors) == 2
    a.stop()
    assert not [c for c in net.clock.getDelayedCalls() if c.active()]


def test_path_lost_rejoins_and_reconnects_with_the_same_connection():
    net = Net()
    net.salon()
    a, ca, events_a = net.client(A, keepalive=5, dead_after=3, retry=fixed(1.0))
    b, cb, events_b = net.client(B, keepalive=5, dead_after=3, retry=fixed(1.0))
    a.start()
    b.start()
    net.run(2)
    conn = ca.connection
    assert ca.phase is cb.phase is Phase.CONNECTED
    # keepalives hold the path for minutes
    net.run(120, step=0.1)
    assert ca.phase is Phase.CONNECTED and not [e for e in events_a if e["event"] == "path-lost"]
    # cut B off (its NAT dropped the binding): A notices within dead_after + 1 intervals
    net.cut.add(B)
    t = 0.0
    while ca.phase is Phase.CONNECTED and t < 60:
        net.run(0.1)
        t += 0.1
    assert t <= 4 * 5 + 0.2
    names = [e["event"] for e in events_a]
    assert names[:5] == ["joined", "introduced", "punching", "path-lost", "joined"] or \
        names[:6] == ["joined", "waiting", "introduced", "punching", "path-lost", "joined"], names
    assert conn.path is None and not conn.send(b"x")
    assert ca.phase in (Phase.JOINING, Phase.WAITING, Phase.BACKING_OFF)
    # B comes back: it notices too, both re-join (the old pairing lingers,
    # so the first re-joins may be refused) and meet again
    net.cut.clear()
    t = 0.0
    while not (ca.phase is cb.phase is Phase.CONNECTED) and t < 120:
        net.run(0.1)
        t += 0.1
    assert ca.phase is cb.phase is Phase.CONNECTED, (ca.phase, cb.phase, events_a[-3:])
    assert ca.connection is conn and conn.path.address == B
    assert any(e["event"] == "connected" and e.get("repunched") for e in events_a)
    a.stop()
    b.stop()


def test_punch_failure_is_counted_and_retried():
    net = Net()
    net.salon()
    a, ca, _ = net.client(A, punch_timeout=2, retry=fixed(1.0))
    b, cb, _ = net.client(B, punch_timeout=2, retry=fixed(1.0))
    net.cut_pairs = True
    errors = []
    a.when_connected(fail_after_failures=1).addErrback(errors.append)
    # the peers cannot reach each other, but both reach the salon
    original = net.send

    def send(src, dst, data):
        if {src, dst} == {A, B}:
            return
        original(src, dst, data)

    net.send = send
    a.start()
    b.start()
    net.run(5)
    assert errors and errors[0].check(PunchFailed)
    assert ca.phase in (Phase.BACKING_OFF, Phase.JOINING, Phase.WAITING, Phase.PUNCHING)
    a.stop()
    b.stop()
    assert not [c for c in net.clock.getDelayedCalls() if c.active() and c.func.__name__ != "datagramReceived"]


def test_inputs_without_a_transition_are_refused():
    from automat import NoTransition

    net = Net()
    a, ca, _ = net.client(A)
    with pytest.raises(NoTransition):
        a._retry()
    a.stop()
    with pytest.raises(NoTransition):
        a._path_lost(1.0)


def test_a_clean_stop_says_goodbye_and_the_peer_rejoins_at_once():
    net = Net()
    net.salon()
    a, ca, events_a = net.client(A, keepalive=5, dead_after=3, retry=fixed(1.0))
    b, cb, events_b = net.client(B, keepalive=5, dead_after=3, retry=fixed(1.0))
    a.start()
    b.start()
    net.run(2)
    assert ca.phase is cb.phase is Phase.CONNECTED
    sent_to_salon = []
    original = net.send

    def send(src, dst, data):
        if src == B and dst == SALON:
            sent_to_salon.append(data)
        original(src, dst, data)

    net.send = send
    b.stop()
    net.run(0.05)  # one hop: A hears the goodbye at once, not after 15 s of silence
    names = [e["event"] for e in events_a]
    assert "peer-left" in names and names[names.index("peer-left") + 1] == "joined", names
    assert ca.phase is not Phase.CONNECTED and ca.connection.path is None
    # B told the salon too: a LEAVE with its token
    from natsalon import wire
    from natsalon.stun import Method, decode

    leaves = [decode(d) for d in sent_to_salon if decode(d).method == Method.LEAVE]
    assert len(leaves) == 1 and wire.parse_leave_request(leaves[0]).room_id == KEYS.room_id
    a.stop()


def test_a_forged_goodbye_and_replayed_probes_change_nothing():
    net = Net()
    net.salon()
    a, ca, events_a = net.client(A, keepalive=5)
    b, cb, _ = net.client(B, keepalive=5)
    captured = []
    original = net.send

    def send(src, dst, data):
        if src == B and dst == A:
            captured.append(data)
        original(src, dst, data)

    net.send = send
    a.start()
    b.start()
    net.run(2)
    assert ca.phase is Phase.CONNECTED
    # a LEAVING probe keyed with another session's key, and every probe B sent replayed
    from natsalon import wire
    from natsalon.crypto.secret import new_nonce

    _, forged = wire.punch_request(new_nonce(), b"k" * 32, wire.FLAG_LEAVING)
    net.nodes[A].datagramReceived(forged, B)
    for data in captured:
        net.nodes[A].datagramReceived(data, B)
    net.run(1)
    assert ca.phase is Phase.CONNECTED and "peer-left" not in [e["event"] for e in events_a]
    a.stop()
    b.stop()


def test_a_peer_in_the_other_payload_mode_is_a_clear_error_on_both_sides():
    from natsalon.client.errors import ModeMismatch

    net = Net()
    net.salon()
    a, ca, _ = net.client(A)
    b, cb, _ = net.client(B)
    cb.connection.encrypt = False  # natsalon connect --no-encrypt
    errors = {}
    a.when_connected(fail_after_failures=1).addErrback(lambda f: errors.__setitem__("a", f))
    b.when_connected(fail_after_failures=1).addErrback(lambda f: errors.__setitem__("b", f))
    a.start()
    b.start()
    net.run(2)
    assert errors["a"].check(ModeMismatch) and errors["b"].check(ModeMismatch)
    assert "the peer does not encrypt (--no-encrypt) and we do" in str(errors["a"].value)
    assert "the peer encrypts and we do not (--no-encrypt)" in str(errors["b"].value)
    a.stop()
    b.stop()
