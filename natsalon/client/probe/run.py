"""One probe run's machinery: the sockets it opens, the timers it waits on,
its :class:`~natsalon.client.probe.findings.Findings`, and how it ends.

:class:`ProbeRun` knows no test: it gives each test fresh sockets
(:meth:`ProbeRun.sock`), a request with the run's retransmission schedules
(:meth:`ProbeRun.ask`) and a socket's first binding to the primary address
(:meth:`ProbeRun.bind`); :meth:`ProbeRun.conclude` waits for the tests
(:mod:`natsalon.client.probe.measure`) and fires with the report, or with
the first :class:`~natsalon.client.probe.errors.ProbeError`, closing every
socket and timer either way.
"""

from __future__ import annotations

from typing import Callable, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from twisted.internet import defer, task
from twisted.logger import Logger

from natsalon.client.probe.config import ProbeConfig
from natsalon.client.probe.errors import ProbeError, ServerUnreachable, ServerUnusable
from natsalon.client.probe.findings import Bound, Findings
from natsalon.client.probe.report import build_report
from natsalon.client.probe.sockets import ProbeSocket
from natsalon.stun import Address, Attr, Class, Message, Method
from natsalon.stun.client import RetransmitPolicy, StunTimeout, new_transaction_id

log = Logger()


def binding_request(attrs=()) -> Message:
    return Message(Method.BINDING, Class.REQUEST, new_transaction_id(), tuple(attrs))


def change_request(flags: int) -> Tuple[int, int]:
    return (Attr.CHANGE_REQUEST, flags)


class ProbeRun:
    """One run against the server's ``primary`` address: its sockets, timers, findings and outcome."""

    def __init__(self, clock, listen: Callable, server: Address, config: ProbeConfig,
                 local_ips: FrozenSet[str], address_flags: Optional[Mapping[str, int]] = None) -> None:
        self.clock = clock
        self.listen = listen
        self.primary = server
        self.config = config
        self.local_ips = local_ips
        #: IPv6 address -> IFA_F_* flags (:mod:`.privacy`): is the local address temporary
        self.address_flags = address_flags or {}
        self.started = clock.seconds()
        self.socks: List[ProbeSocket] = []
        self.waits: List[defer.Deferred] = []
        #: cancelling it (Ctrl-C, a caller's timeout) closes every socket at once
        self.done = defer.Deferred(self._cancelled)
        self.cancelled = False
        self.found = Findings(server)

    # -- plumbing ------------------------------------------------------------
    def sock(self, name: str, connect: bool = False) -> ProbeSocket:
        s = ProbeSocket(self.clock, name, self._refused)
        s.port = self.listen(s)
        if connect:
            s.transport.connect(self.primary.host, self.primary.port)
        self.socks.append(s)
        return s

    def _refused(self, sock: ProbeSocket) -> None:
        self.abort(ServerUnreachable("nothing listens on UDP %s (ICMP port unreachable)" % (self.primary,)))
        sock.closing = True

    def sleep(self, seconds: float) -> defer.Deferred:
        d = task.deferLater(self.clock, max(0.0, seconds), lambda: None)
        self.waits.append(d)
        return d

    def close(self) -> None:
        for d in self.waits:
            if not d.called:
                d.cancel()
        for s in self.socks:
            s.closing = True
            s.client.cancel_all()
            if s.port is not None:
                s.port.stopListening()
        self.socks = []

    def _cancelled(self, _) -> None:
        self.cancelled = True  # the cancellations close() causes are ours, not failures
        self.close()

    def abort(self, exc: Exception) -> None:
        if not self.done.called:
            self.done.errback(exc)  # first: the cancellations close() causes are then ignored
            self.close()

    def quick(self) -> RetransmitPolicy:
        return self.config.quick_policy(self.found.rtt)

    # -- requests --------------------------------------------------------------
    @defer.inlineCallbacks
    def ask(self, sock: ProbeSocket, to: Address, attrs=(), policy: Optional[RetransmitPolicy] = None):
        """A request; the Response, or None after the whole schedule."""
        try:
            resp = yield sock.request(binding_request(attrs), tuple(to), policy=policy or self.quick())
        except StunTimeout:
            return None
        self.found.note_rtt(resp.rtt)
        return resp

    @defer.inlineCallbacks
    def bind(self, sock: ProbeSocket):
        """The socket's first request, to the primary: a Bound or None.
        Always carries CHANGE-REQUEST (flags 0), so an RFC 5780 server adds
        RESPONSE-ORIGIN and OTHER-ADDRESS; a server that answers 420 to it
        is asked again with a plain request."""
        attrs = () if self.found.rfc5780_off else (change_request(0),)
        resp = yield self.ask(sock, self.primary, attrs, self.config.first_policy())
        if resp is not None and resp.message.cls == Class.ERROR and attrs:
            code = resp.message.get(Attr.ERROR_CODE)
            if code is not None and code.code == 420:
                self.found.rfc5780_off = True
                self.found.cannot("rfc5780", "the server does not understand CHANGE-REQUEST (420)")
                resp = yield self.ask(sock, self.primary, (), self.config.first_policy())
        if resp is None:
            return None
        msg = resp.message
        if msg.cls == Class.ERROR:
            code = msg.get(Attr.ERROR_CODE)
            raise ServerUnusable("server %s answered with error %s" % (
                self.primary, "%d %s" % (code.code, code.reason) if code else "(no ERROR-CODE)"))
        mapped = msg.mapped_address
        if mapped is None:
            raise ServerUnusable("server %s sent no XOR-MAPPED-ADDRESS" % (self.primary,))
        self.found.check_response("binding", msg, resp.source, self.primary)
        self.found.note_other(msg.get(Attr.OTHER_ADDRESS, msg.get(Attr.CHANGED_ADDRESS)))
        local = sock.local
        self.found.samples.append((local.port, mapped.port))
        return Bound(sock, mapped, resp.rtt, self.clock.seconds(), msg, resp.source)

    # -- the end ---------------------------------------------------------------
    def conclude(self, tests: Sequence[defer.Deferred]) -> defer.Deferred:
        """Fires with the report once every test is over, or with the first failure."""
        all_done = defer.DeferredList(tests, fireOnOneErrback=True, consumeErrors=True)
        all_done.addCallbacks(self._finish, self._failed)
        return self.done

    def _failed(self, failure) -> None:
        if isinstance(failure.value, defer.FirstError):
            failure = failure.value.subFailure
        if self.done.called or self.cancelled:  # already aborted: these are the cancellations
            return None
        if not failure.check(ProbeError):
            log.failure("probe failed", failure)
        self.abort(failure.value)
        return None

    def _finish(self, _) -> None:
        if self.done.called:
            return
        unsent = self._send_failure()
        if unsent is not None:
            self.abort(unsent)
            return
        elapsed = int(round((self.clock.seconds() - self.started) * 1000))
        try:
            report = build_report(self.found, self.config.timeout, self.local_ips, elapsed, self.address_flags)
        except Exception as e:  # a bug: report it, never leave the caller hanging
            log.failure("building the probe report")
            self.abort(e)
            return
        self.close()
        self.done.callback(report)

    def _send_failure(self) -> Optional[ServerUnreachable]:
        """Why nothing answered, when it is that nothing could be sent."""
        if any(isinstance(v, Bound) for v in self.found.results.values()):
            return None
        errors = [e for s in self.socks for e in s.send_errors]
        if not errors:
            return None
        return ServerUnreachable("cannot send to %s: %s" % (self.primary, errors[0].strerror or errors[0]))
