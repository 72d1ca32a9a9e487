"""connect() end to end on loopback: a real salon, two clients, real reactor."""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from natsalon.clienttap import Options as ClientOptions
from natsalon.connect import ConnectTimeout, connect
from natsalon.salon import SalonConfig, SalonService
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
