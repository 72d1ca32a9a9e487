"""``twistd natclient``'s service on a Clock: retries, forward-port errors."""

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.logger import LogLevel, Logger

from natsalon.client.tap import ClientService, Options
from natsalon.client.punch import DIRECT, Path
from natsalon.stun import Address


class FakeConn:
    def __init__(self):
        self.path = Path(Address("192.0.2.20", 50000), DIRECT, 0.02)
        self.closed = False
        self.receiver = None

    def set_receiver(self, receiver):
        self.receiver = receiver

    def close(self):
        self.closed = True


class FakePort:
    def __init__(self, port):
        self.port = port
        self.stopped = False

    def getHost(self):
        return Address("127.0.0.1", self.port)

    def stopListening(self):
        self.stopped = True


class FakeReactor(Clock):
    """A Clock whose listenUDP fails ``busy`` times (port taken), then works."""

    def __init__(self, busy):
        Clock.__init__(self)
        self.busy = busy
        self.listened = []

    def listenUDP(self, port, protocol, interface=""):
        if self.busy:
            self.busy -= 1
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        self.listened.append((interface, port, protocol))
        return FakePort(port)


def service(reactor, *extra):
    o = Options()
    o.parseOptions(["--server", "192.0.2.1:3478", "--room", "r", "--secret", "s", "--retry", "10"] + list(extra))
    conns, calls = [], []

    def connect(reactor, *args, **kw):
        calls.append(reactor.seconds())
        conns.append(FakeConn())
        return defer.succeed(conns[-1])

    svc = ClientService(reactor, o, connect=connect)
    events = []
    svc.log = Logger(observer=events.append)
    return svc, conns, calls, events


def test_forward_bind_failure_closes_logs_and_retries():
    reactor = FakeReactor(busy=2)
    svc, conns, calls, events = service(reactor, "--forward", "7000")
    svc.startService()
    # the first connection could not forward: closed, one clear error, a retry pending
    assert calls == [0] and conns[0].closed and svc.conn is None and svc.forward_port is None
    errors = [e for e in events if e["log_level"] == LogLevel.error]
    assert len(errors) == 1 and errors[0]["port"] == 7000 and "Address already in use" in str(errors[0]["reason"])
    assert not [e for e in events if e["log_level"] == LogLevel.critical]
    reactor.advance(9.9)
    assert len(calls) == 1
    reactor.advance(0.1)
    assert calls == [0, 10] and conns[1].closed
    reactor.advance(10)
    # third time the port is free: forwarding, connection kept
    assert len(calls) == 3 and not conns[2].closed
    assert svc.conn is conns[2] and svc.forward_port is not None
    assert reactor.listened[0][:2] == ("127.0.0.1", 7000)
    assert not reactor.getDelayedCalls()
    svc.stopService()
    assert conns[2].closed and svc.forward_port.stopped


def test_connect_failure_retries_and_stop_cancels():
    reactor = Clock()
    o = Options()
    o.parseOptions(["--server", "192.0.2.1", "--room", "r", "--secret", "s", "--retry", "5"])
    calls = []

    def connect(reactor, *args, **kw):
        calls.append(reactor.seconds())
        return defer.fail(RuntimeError("no salon"))

    svc = ClientService(reactor, o, connect=connect)
    svc.log = Logger(observer=lambda e: None)
    svc.startService()
    reactor.advance(5)
    reactor.advance(5)
    assert calls == [0, 5, 10]
    svc.stopService()
    assert not reactor.getDelayedCalls()
