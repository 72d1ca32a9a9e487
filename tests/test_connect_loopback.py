"""connect() end to end on loopback: a real salon, two clients, real reactor."""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from natsalon.client.tap import Options as ClientOptions
from natsalon.client.api import ConnectTimeout, connect
from natsalon.server.service import SalonConfig, SalonService
from twisted.python import usage


@pytest_twisted.inlineCallbacks
def test_two_clients_connect_and_exchange():
    salon = SalonService(reactor, SalonConfig(interface="127.0.0.1", port=0, alt_port=0, rate_limit=0))
    salon.startService()
    try:
        server = ("127.0.0.1", salon.layout.ports[0])
        da = connect(reactor, server, "room", b"secret", interface="127.0.0.1", timeout=10)
        db = connect(reactor, server, "room", b"secret", interface="127.0.0.1", timeout=10)
        a, b = yield defer.gatherResults([da, db])
        # the LAN candidate (127.0.0.1:port) is the public endpoint too: "direct"
        assert a.path.kind == b.path.kind == "direct"
        got = []
        done = defer.Deferred()

        def recv(data):
            got.append(data)
            if len(got) == 100:
                done.callback(None)

        b.set_receiver(recv)
        for i in range(100):
            a.send(b"%d" % i)
        yield done.addTimeout(5, reactor)
        assert got == [b"%d" % i for i in range(100)]
        assert (yield a.peer_confirmed(2)) is True
        a.close()
        b.close()
    finally:
        yield salon.stopService()


@pytest_twisted.inlineCallbacks
def test_lonely_client_times_out_with_phase():
    salon = SalonService(reactor, SalonConfig(interface="127.0.0.1", port=0, alt_port=0, rate_limit=0))
    salon.startService()
    try:
        server = "127.0.0.1:%d" % salon.layout.ports[0]
        with pytest.raises(ConnectTimeout, match="waiting for the peer"):
            yield connect(reactor, server, "alone", b"s", interface="127.0.0.1", timeout=1.5)
    finally:
        yield salon.stopService()


def test_client_tap_options():
    o = ClientOptions()
    o.parseOptions(["--server", "192.0.2.1:3478", "--room", "r", "--secret", "s", "--forward", "7000",
                    "--deliver", "127.0.0.1:51820", "--keepalive", "10"])
    assert o.forward == ("127.0.0.1", 7000) and o.deliver == ("127.0.0.1", 51820) and o.keepalive == 10
    with pytest.raises(usage.UsageError, match="secret"):
        ClientOptions().parseOptions(["--server", "192.0.2.1", "--room", "r"])
    with pytest.raises(usage.UsageError, match="required"):
        ClientOptions().parseOptions(["--room", "r", "--secret", "s"])


class FakeStun:
    """The salon side of Joiner's transactions: each request gets the next
    scripted answer (a decoded STUN message) after ``rtt``."""

    def __init__(self, clock, answers, rtt=0.05):
        self.clock = clock
        self.answers = answers
        self.rtt = rtt
        self.requests = []

    def request(self, msg, addr, policy=None, sha256_key=None):
        from collections import namedtuple

        self.requests.append((self.clock.seconds(), msg))
        d = defer.Deferred()
        answer = self.answers(msg)
        self.clock.callLater(self.rtt, d.callback, namedtuple("Response", "message")(answer))
        return d


def test_joiner_survives_cookie_rollovers_while_waiting():
    # a long wait: the salon's cookie secret rolls over every 30 s, so a poll
    # now and then is refused with a fresh cookie; 12 rollovers, more than the
    # 5 refusals in a row that mean "the salon keeps refusing our cookie"
    from natsalon import wire
    from natsalon.client.demux import ClientSocket
    from natsalon.client.join import Joiner
    from natsalon.crypto.secret import derive, new_nonce
    from natsalon.stun import Address, Attr, decode

    clock = task.Clock()
    me = Address("192.0.2.1", 40000)
    state = {"cookie": b"c0", "n": 0}

    def answers(msg):
        if msg.get(Attr.NS_COOKIE) != state["cookie"]:
            return decode(wire.cookie_response(msg.transaction_id, state["cookie"]))
        return decode(wire.waiting_response(msg.transaction_id, me))

    def rollover():
        state["n"] += 1
        state["cookie"] = b"c%d" % state["n"]

    sock = ClientSocket(clock)
    sock.stun = FakeStun(clock, answers)
    keys = derive("room", "s")
    joiner = Joiner(clock, sock, ("192.0.2.9", 3478), keys, new_nonce(), (), poll=1.0)
    failures = []
    d = joiner.start()
    d.addErrback(failures.append)
    for _ in range(12):
        clock.pump([1.0] * 30)
        rollover()
    clock.pump([1.0] * 5)
    assert not failures, failures[0] if failures else None
    assert joiner.waiting and joiner.observed == me
    assert state["n"] == 12 and joiner.cookie == b"c12"
    d.cancel()
    d.addErrback(lambda f: None)


def test_joiner_gives_up_when_cookie_always_refused():
    from natsalon import wire
    from natsalon.client.demux import ClientSocket
    from natsalon.client.errors import ConnectFailed
    from natsalon.client.join import Joiner
    from natsalon.crypto.secret import derive, new_nonce
    from natsalon.stun import decode

    clock = task.Clock()
    sock = ClientSocket(clock)
    sock.stun = FakeStun(clock, lambda msg: decode(wire.cookie_response(msg.transaction_id, new_nonce())))
    joiner = Joiner(clock, sock, ("192.0.2.9", 3478), derive("room", "s"), new_nonce(), ())
    failures = []
    joiner.start().addErrback(failures.append)
    clock.pump([0.05] * 20)
    assert failures and failures[0].check(ConnectFailed)
    assert "keeps refusing our cookie" in str(failures[0].value)
    assert len(sock.stun.requests) == 6
