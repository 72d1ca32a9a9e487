"""The connection (frames over the current path) and the keepalive that
watches the path, on a Clock with two real punchers (tests/test_punch.py's
fake network)."""

from natsalon.client.connection import Connection
from natsalon.client.keepalive import Keepalive
from natsalon.crypto.secret import derive, session_keys

from test_punch import A_LAN, A_PUB, B_LAN, Net, open_routes, run


class FakeSock:
    def __init__(self):
        self.written = []

    def write(self, data, addr):
        self.written.append((data, addr))


def test_keepalive_holds_a_live_path_and_reports_a_dead_one():
    net = Net(open_routes())
    r = run(net)
    dead = []
    ka = Keepalive(net.clock, net.a, r["a"].address, interval=15, dead_after=3, on_dead=dead.append)
    kb = Keepalive(net.clock, net.b, r["b"].address, interval=15, dead_after=3, on_dead=dead.append)
    ka.start()
    kb.start()
    # keepalives hold the path for minutes
    for _ in range(300 * 10):
        net.clock.advance(0.1)
    assert not dead
    sent_before = sum(1 for who, to, ok in net.log if who == "a")
    assert sent_before > 300 / 15  # about one probe per interval (plus answers)
    # the path dies: detected within dead_after + 1 keepalive intervals
    net.routes.clear()
    t = 0.0
    while not dead and t < 100:
        net.clock.advance(0.1)
        t += 0.1
    assert dead and t <= 4 * 15 + 0.2 and dead[0] >= 3 * 15
    ka.stop()
    kb.stop()
    assert not [c for c in net.clock.getDelayedCalls() if c.active() and "tick" in c.func.__name__.lower()]


def test_detached_connection_sends_nothing_and_drops_frames():
    net = Net(open_routes())
    r = run(net)
    sa, sb = FakeSock(), FakeSock()
    ca, cb = Connection(net.clock, sa), Connection(net.clock, sb)
    keys = derive("room", "s")
    ca.attach(net.a, session_keys(keys, net.na, net.nb), r["a"])
    cb.attach(net.b, session_keys(keys, net.nb, net.na), r["b"])
    got = []
    cb.set_receiver(got.append)
    assert ca.send(b"one")
    cb.detach()
    cb.frame_received(sa.written[0][0], tuple(A_PUB))
    assert got == [] and not cb.connected
    ca.detach()
    assert not ca.send(b"two") and len(sa.written) == 1
    closed = []
    ca.on_close = lambda: closed.append(1)
    ca.close()
    ca.close()
    assert closed == [1] and ca.closed


def test_connection_frames_and_tamper_counted():
    net = Net(open_routes())
    r = run(net)
    keys = derive("room", "s")
    sa, sb = FakeSock(), FakeSock()
    ca = Connection(net.clock, sa)
    cb = Connection(net.clock, sb)
    ca.attach(net.a, session_keys(keys, net.na, net.nb), r["a"])
    cb.attach(net.b, session_keys(keys, net.nb, net.na), r["b"])
    got = []
    cb.set_receiver(got.append)
    for i in range(10):
        assert ca.send(b"m%d" % i)
    for data, addr in sa.written:
        cb.frame_received(data, tuple(A_PUB))
    bad = bytearray(sa.written[0][0])
    bad[-1] ^= 1
    cb.frame_received(bytes(bad), tuple(A_PUB))
    cb.frame_received(sa.written[1][0], tuple(A_PUB))  # replay
    assert got == [b"m%d" % i for i in range(10)]
    assert cb.rejected == 2
    ca.close()
    cb.close()



def test_plain_frames_only_from_the_selected_path():
    # --no-encrypt: the source address is the only check; a mere candidate
    # (here b's unverified LAN address) is not the peer
    net = Net(open_routes(), lan_a=[A_LAN], lan_b=[B_LAN], lan_grace=0.05)
    r = run(net)
    assert r["b"].address == A_PUB and A_LAN in net.b.paths
    sa, sb = FakeSock(), FakeSock()
    ca = Connection(net.clock, sa, encrypt=False)
    cb = Connection(net.clock, sb, encrypt=False)
    keys = derive("room", "s")
    ca.attach(net.a, session_keys(keys, net.na, net.nb), r["a"])
    cb.attach(net.b, session_keys(keys, net.nb, net.na), r["b"])
    got = []
    cb.set_receiver(got.append)
    assert ca.send(b"hello")
    frame = sa.written[0][0]
    cb.frame_received(frame, tuple(A_LAN))
    cb.frame_received(frame, ("203.0.113.9", 4000))
    assert got == [] and cb.rejected == 2
    cb.frame_received(frame, tuple(A_PUB))
    assert got == [b"hello"]
    ca.close()
    cb.close()
