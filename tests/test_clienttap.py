"""``twistd natclient``'s service on a Clock: the forward port is bound
before the machine starts, opening is retried with backoff, stop cancels."""

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.logger import LogLevel, Logger

from natsalon.client.service import ClientService
from natsalon.client.tap import Options
from natsalon.stun import Address


class FakeConn:
    def set_receiver(self, receiver):
        self.receiver = receiver


class FakeClient:
    def __init__(self):
        self.connection = FakeConn()
        self.started = self.stopped = False

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True


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


def service(reactor, *extra, fail=0):
    o = Options()
    o.parseOptions(["--server", "192.0.2.1:3478", "--room", "r", "--secret", "s", "--retry", "10"] + list(extra))
    o.retry_policy = lambda attempt: 5.0 * attempt  # deterministic backoff for the test
    clients, calls = [], []

    def open_client(reactor, *args, **kw):
        calls.append(reactor.seconds())
        if len(calls) <= fail:
            return defer.fail(OSError("no route to the salon"))
        clients.append(FakeClient())
        return defer.succeed(clients[-1])

    svc = ClientService(reactor, o, open_client=open_client)
    events = []
    svc.log = Logger(observer=events.append)
    return svc, clients, calls, events


def test_forward_port_bound_before_the_machine_starts_and_retried():
    reactor = FakeReactor(busy=2)
    svc, clients, calls, events = service(reactor, "--forward", "7000")
    svc.startService()
    # the forward port is taken: the client is never started, one clear error, a retry pending
    assert calls == [0] and clients[0].stopped and not clients[0].started and svc.client is None
    errors = [e for e in events if e["log_level"] == LogLevel.error]
    assert len(errors) == 1 and "Address already in use" in str(errors[0]["reason"])
    reactor.advance(4.9)
    assert len(calls) == 1
    reactor.advance(0.1)
    assert calls == [0, 5] and clients[1].stopped and not clients[1].started
    reactor.advance(10)
    # third time the port is free: forwarding, then the machine starts
    assert len(calls) == 3 and clients[2].started and not clients[2].stopped
    assert svc.client is clients[2] and svc.forward_port is not None
    assert reactor.listened[0][:2] == ("127.0.0.1", 7000)
    assert not reactor.getDelayedCalls()
    svc.stopService()
    assert clients[2].stopped and svc.forward_port.stopped


def test_open_failure_retries_with_backoff_and_stop_cancels():
    reactor = Clock()
    svc, clients, calls, events = service(reactor, fail=10)
    svc.startService()
    reactor.advance(5)
    reactor.advance(10)
    assert calls == [0, 5, 15]
    svc.stopService()
    assert not reactor.getDelayedCalls() and not clients


def test_retry_option_is_the_backoff_cap():
    o = Options()
    o.parseOptions(["--server", "192.0.2.1", "--room", "r", "--secret", "s", "--retry", "8"])
    delays = [o.retry_policy(n) for n in range(1, 30)]
    assert all(1.0 <= d <= 9.0 for d in delays)  # initial 1 s, capped at 8 s, plus < 1 s of jitter
    assert delays[-1] >= 8.0 and delays[0] < 3.0
