"""Several salons sharing their rooms, from the client's side, on a Clock:
the choice of salon (natsalon.client.salons), the Joiner moving on when
its salon is silent, unreachable or answers 503 (retry later), and the
client machine re-joining the other salon when its own dies while it
waits or re-punches.  Two real introducers share one registry on an
in-memory network; no sockets."""

from __future__ import annotations

from typing import Dict, Tuple

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from natsalon.client.connection import Connection
from natsalon.client.demux import ClientSocket
from natsalon.client.errors import SalonUnreachable
from natsalon.client.join import Joiner, retry_later_delay
from natsalon.client.options import OptionError, check
from natsalon.client.salons import Salons
from natsalon.client.session import ClientMachine, Core, Phase, Settings
from natsalon.crypto.secret import derive, new_nonce
from natsalon.server.introducer.cookies import CookieJar
from natsalon.server.introducer.errors import RegistryUnavailable
from natsalon.server.introducer.handler import Introducer
from natsalon.server.introducer.rooms import MemoryRooms
from natsalon.server.layout import Layout
from natsalon.server.reflector import ReflectorProtocol, ServerState
from natsalon.stun import Method

S1 = ("203.0.113.10", 3478)
S2 = ("203.0.113.11", 3478)
A = ("192.0.2.1", 40000)
B = ("198.51.100.7", 50000)
KEYS = derive("room", "secret")


# -- the choice of salon, with plain numbers ---------------------------------

def test_salons_move_on_rest_and_come_back():
    s = Salons([S1, S2, S1], rest=30)
    assert s.servers == (S1, S2) and s.current == S1 and len(s) == 2
    assert s.failed(100) == S2 and s.current == S2
    # both failed lately: none to move to; the next attempt starts at the
    # one that failed longest ago
    assert s.failed(101) is None and s.current == S1
    assert s.resting(S1, 110) and s.resting(S2, 110)
    # S1 fails again at 131: S2 (failed at 101) has rested 30 s, so it is next
    assert s.failed(131) == S2
    assert s.failed(132) is None and s.current == S1  # S1 failed at 131, before S2
    s.answered()  # S1 answers: no longer resting
    assert not s.resting(S1, 133) and s.resting(S2, 133)
    assert s.failed(133) is None and s.current == S2  # S2 failed at 132, S1 at 133


def test_one_salon_never_moves():
    s = Salons([S1])
    assert s.failed(1) is None and s.current == S1 and s.failed(1000) is None
    with pytest.raises(ValueError):
        Salons([])


def test_server_option_takes_a_list():
    raw = {"server": "192.0.2.1, 192.0.2.2:4000,192.0.2.1", "room": "r", "secret": "s", "timeout": "30",
           "punch-timeout": "10", "keepalive": "5", "dead-after": "2", "retry": "30", "port": "0"}
    o = check(raw, environ={})
    assert o.servers == (("192.0.2.1", 3478), ("192.0.2.2", 4000)) and o.server == ("192.0.2.1", 3478)
    assert check(dict(raw, server="192.0.2.9"), environ={}).servers == (("192.0.2.9", 3478),)
    for bad in ("192.0.2.1,", "192.0.2.1,,192.0.2.2", "192.0.2.1,[2001:db8::1]:3478", "192.0.2.1,x:0"):
        with pytest.raises(OptionError, match="^--server: "):
            check(dict(raw, server=bad), environ={})


def test_retry_later_delays_grow_to_eight_seconds():
    assert [retry_later_delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]


# -- two salons, one registry, an in-memory network ------------------------

class Wire:
    def __init__(self, net: "Net", addr) -> None:
        self.net = net
        self.addr = addr

    def write(self, data: bytes, addr) -> None:
        self.net.send(self.addr, tuple(addr), data)


class DownRooms:
    """The shared registry, unreachable while ``down`` (Redis stopped)."""

    def __init__(self, rooms: MemoryRooms) -> None:
        self.rooms = rooms
        self.down = False

    def _call(self, name, *args):
        if self.down:
            return defer.fail(RegistryUnavailable("not connected"))
        return defer.succeed(getattr(self.rooms, name)(*args))

    def join(self, *args):
        return self._call("join", *args)

    def leave(self, *args):
        return self._call("leave", *args)

    def prune(self, now):
        return self._call("prune", now)


class Net:
    def __init__(self, delay: float = 0.01) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.delay = delay
        self.nodes: Dict[Tuple[str, int], object] = {}
        self.dead = set()  #: salons killed: their datagrams go nowhere
        self.registry = DownRooms(MemoryRooms())
        self.introducers = {}

    def attach(self, addr, proto) -> None:
        self.nodes[addr] = proto
        proto.transport = Wire(self, addr)

    def send(self, src, dst, data: bytes) -> None:
        if src in self.dead or dst in self.dead:
            return
        target = self.nodes.get(dst)
        if target is not None:
            self.clock.callLater(self.delay, target.datagramReceived, data, src)

    def salon(self, addr) -> Introducer:
        state = ServerState()
        state.layout = Layout((addr[0], None), (addr[1], 3479))
        intro = Introducer(self.clock, self.registry, CookieJar(b"shared" * 6),
                           push=lambda r: state.transports[(0, 0)].write(r.data, r.to))
        state.handlers[Method.JOIN] = intro.handle
        proto = ReflectorProtocol((0, 0), state, rcvbuf=0)
        self.attach(addr, proto)
        state.transports[(0, 0)] = proto.transport
        self.introducers[addr] = intro
        return intro

    def sock(self, addr) -> ClientSocket:
        sock = ClientSocket(self.clock)
        self.attach(addr, sock)
        return sock

    def client(self, addr, servers=(S1, S2), **settings):
        sock = self.sock(addr)
        conn = Connection(self.clock, sock)
        sock.on_frame = conn.frame_received
        events = []
        conn.on_event = events.append
        salons = Salons(servers)
        core = Core(self.clock, sock, salons.current, KEYS, [], conn, Settings(**settings), emit=events.append,
                    salons=salons)
        machine = ClientMachine(core)
        conn.on_close = machine.stop
        return machine, core, events

    def run(self, seconds: float, step: float = 0.01) -> None:
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)


def joiner(net: Net, addr, servers, **kw):
    switched = []
    j = Joiner(net.clock, net.sock(addr), servers[0], KEYS, new_nonce(), (), salons=Salons(servers),
               on_switch=switched.append, **kw)
    outcome = []
    j.start().addBoth(outcome.append)
    return j, switched, outcome


def test_a_silent_salon_is_left_for_the_next():
    net = Net()
    net.salon(S2)  # S1 runs nothing: JOINs to it go unanswered
    j, switched, outcome = joiner(net, A, [S1, S2])
    net.run(3.7)
    assert switched == [] and j.server == S1
    net.run(0.1)  # 3.75 s of silence
    assert switched == [S2] and j.server == S2
    net.run(0.2)
    assert j.waiting and not outcome  # registered through S2
    _, _, outcome_b = joiner(net, B, [S2, S1])
    net.run(0.2)
    assert outcome_b[0].peer.nonce == j.nonce
    net.run(1.1)  # A's next poll (at S2) is answered with B
    assert outcome[0].peer.nonce == outcome_b[0].nonce


def test_every_salon_silent_fails_the_join_and_the_next_starts_where_it_failed_first():
    net = Net()
    j, switched, outcome = joiner(net, A, [S1, S2])
    net.run(7.6)
    assert switched == [S2] and len(outcome) == 1 and outcome[0].check(SalonUnreachable)
    assert j.salons.current == S1
    assert not [c for c in net.clock.getDelayedCalls() if c.active()]


def test_an_icmp_unreachable_moves_on_at_once_but_not_when_stale():
    net = Net()
    net.salon(S1)
    net.salon(S2)
    j, switched, outcome = joiner(net, A, [S1, S2])
    j.unreachable(SalonUnreachable("port unreachable"), S2)  # not our salon: ignored
    assert switched == []
    j.unreachable(SalonUnreachable("port unreachable"), S1)
    assert switched == [S2]
    net.run(0.2)
    assert j.waiting and not outcome


def test_503_with_one_salon_is_retried_later_until_the_registry_is_back():
    net = Net()
    net.salon(S1)
    net.registry.down = True
    j, switched, outcome = joiner(net, A, [S1])
    net.run(0.05)  # cookie, then the JOIN with it: 503
    assert net.introducers[S1].stats["join_retry_later"] == 1
    times = [net.clock.seconds()]
    stats = net.introducers[S1].stats
    while len(times) < 6:
        count = stats["join_retry_later"]
        net.run(0.01)
        if stats["join_retry_later"] > count:
            times.append(net.clock.seconds())
    gaps = [round(b - a) for a, b in zip(times, times[1:])]
    assert gaps == [1, 2, 4, 8, 8] and not outcome and switched == []
    net.registry.down = False
    net.run(8.1)
    assert j.waiting and not outcome
    joiner(net, B, [S1])
    net.run(1.2)
    assert outcome and not isinstance(outcome[0], Exception) and outcome[0].peer_address.host == B[0]


def test_503_moves_to_the_next_salon_and_back_after_a_while_when_both_say_it():
    net = Net()
    net.salon(S1)
    net.salon(S2)
    net.registry.down = True
    j, switched, outcome = joiner(net, A, [S1, S2])
    net.run(0.1)
    # S1: 503 -> S2 at once: 503 -> back to S1 (failed longest ago) after 2 s
    assert switched == [S2, S1]
    assert net.introducers[S1].stats["join_retry_later"] == net.introducers[S2].stats["join_retry_later"] == 1
    net.registry.down = False
    net.run(3)
    assert j.waiting and j.server == S1 and not outcome


def test_a_waiting_member_whose_salon_dies_rejoins_the_other_and_connects():
    net = Net()
    net.salon(S1)
    net.salon(S2)
    a, ca, events_a = net.client(A)
    a.start()
    net.run(1.5)
    assert ca.phase is Phase.WAITING and ca.server == S1
    net.dead.add(S1)  # killed while A waits
    net.run(1.0 + 3.8)  # its next poll goes unanswered for 3.75 s
    assert ca.phase is Phase.WAITING and ca.server == S2
    assert {"event": "salon", "server": "%s:%d" % S2} in events_a
    b, cb, _ = net.client(B, servers=(S1, S2))  # B is told both too: S1 is dead
    b.start()
    net.run(6)
    assert ca.phase is cb.phase is Phase.CONNECTED and cb.server == S2
    a.stop()
    b.stop()


def test_a_member_repunching_after_its_salon_died_rejoins_the_other():
    net = Net()
    net.salon(S1)
    net.salon(S2)
    a, ca, events_a = net.client(A, keepalive=5, dead_after=2, retry=lambda n: 1.0)
    b, cb, events_b = net.client(B, keepalive=5, dead_after=2, retry=lambda n: 1.0)
    a.start()
    b.start()
    net.run(2)
    assert ca.phase is cb.phase is Phase.CONNECTED and ca.server == cb.server == S1
    conn = ca.connection
    original = net.send

    def lossy(src, dst, data):  # the peers lose each other for a while
        if {src, dst} != {A, B}:
            original(src, dst, data)

    net.send = lossy
    net.dead.add(S1)
    t = 0.0
    while ca.phase is Phase.CONNECTED and t < 30:
        net.run(0.1)
        t += 0.1
    net.send = original
    t = 0.0
    while not (ca.phase is cb.phase is Phase.CONNECTED) and t < 60:
        net.run(0.1)
        t += 0.1
    assert ca.phase is cb.phase is Phase.CONNECTED, (events_a[-4:], events_b[-4:])
    assert ca.server == cb.server == S2 and ca.connection is conn
    assert any(e["event"] == "connected" and e.get("repunched") for e in events_a)
    a.stop()
    b.stop()


class FakeResolver:
    """``reactor.nameResolver`` answering from a table (IHostnameResolver)."""

    def __init__(self, table) -> None:
        self.table = table
        self.asked = []

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None, transportSemantics="TCP"):
        from twisted.internet.address import IPv4Address

        self.asked.append((hostName, portNumber, transportSemantics))
        receiver.resolutionBegan(None)
        for ip in self.table.get(hostName, ()):
            receiver.addressResolved(IPv4Address("UDP", ip, portNumber))
        receiver.resolutionComplete()
        return receiver


def test_a_name_with_several_addresses_is_several_salons():
    from twisted.internet.error import DNSLookupError

    from natsalon.client.api import resolve_servers, server_list

    class FakeReactor:
        nameResolver = FakeResolver({"salon.example": ["203.0.113.10", "203.0.113.11"]})

    assert server_list("a:1,b") == [("a", 1), ("b", 3478)] and server_list(("a", 1)) == [("a", 1)]
    assert server_list([("a", 1), "b:2"]) == [("a", 1), ("b", 2)]
    got = []
    resolve_servers(FakeReactor(), "salon.example:4000,192.0.2.5,203.0.113.11:4000").addBoth(got.append)
    assert got == [[("203.0.113.10", 4000), ("203.0.113.11", 4000), ("192.0.2.5", 3478)]]
    assert FakeReactor.nameResolver.asked == [("salon.example", 4000, "UDP")]
    resolve_servers(FakeReactor(), "nowhere.example").addBoth(got.append)
    assert got[1].check(DNSLookupError)
