"""The NAT prober: measure this host's NAT against an RFC 5780 STUN server.

    d = probe(reactor, ("203.0.113.10", 3478), ProbeConfig(hairpin=True))
    d.addCallback(lambda report: report.to_json())

Every test runs at once, each on its own fresh UDP socket, so state left in
the NAT by another test (or by an earlier run) cannot fool it:

- ``R``: a socket connected to the primary address: the mapped address,
  RESPONSE-ORIGIN and OTHER-ADDRESS, this host's source address, and an
  ICMP port-unreachable (``connectionRefused``) when nothing listens;
- ``M``: the mapping test (RFC 5780 section 4.3): one socket asks IP1:P1,
  then IP2:P1, IP2:P2 and IP1:P2 in parallel, and the mapped addresses are
  compared;
- ``F1`` / ``F2``: the filtering tests (section 4.4): a plain request to the
  primary opens the binding, then CHANGE-REQUEST change-IP+port (F1) or
  change-port (F2), whose answer comes from another address;
- ``S1..Sn``: more fresh bindings, samples for port allocation (with every
  other socket's bindings);
- ``H`` / ``B`` (hairpin only): each sends to the other's mapped address;
- ``X1..Xn`` (lifetime only): bindings left idle; after each interval a new
  socket asks the primary to answer to Xi's mapped port (RESPONSE-PORT,
  section 4.6), which only arrives while Xi's binding lives.

Requests to the primary retransmit from :attr:`ProbeConfig.first_rto`
(doubling) until :attr:`ProbeConfig.timeout`; once the server has answered,
tests that may legitimately get no answer use a short schedule derived from
the measured round trip (:meth:`ProbeConfig.quick_policy`), so "no answer"
is a bounded wait, robust to loss (six sends).  The verdicts come from the
pure tables in :mod:`natsalon.client.probe.classify`.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from twisted.internet import defer, task
from twisted.logger import Logger

from natsalon.client.probe import classify
from natsalon.client.probe.classify import Allocation, Behaviour, Classic, PortAllocation
from natsalon.stun import CHANGE_IP, CHANGE_PORT, Address, Attr, Class, Message, Method
from natsalon.client.stunsocket import StunClientProtocol
from natsalon.stun.client import RetransmitPolicy, StunTimeout, new_transaction_id

log = Logger()


class ProbeError(Exception):
    """The probe could not classify: the message is one line for the user."""


class ServerUnreachable(ProbeError):
    """The server's name does not resolve, there is no route to it, or
    nothing listens on its port (ICMP port unreachable)."""


class ServerUnusable(ProbeError):
    """The server answers, but not with what a probe needs (an error
    response, no mapped address)."""


DEFAULT_LIFETIME_INTERVALS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 45, 60, 90, 120, 180, 240, 300)


@dataclass(frozen=True)
class ProbeConfig:
    #: longest wait for the server's first answer (seconds): the bound for "udp-blocked"
    timeout: float = 2.0
    #: first retransmission timeout towards the primary address (doubling)
    first_rto: float = 0.1
    #: floor of the retransmission timeout of the tests once the RTT is known
    min_rto: float = 0.04
    #: sends of a test that may get no answer (RFC 8489 Rc)
    quick_sends: int = 6
    #: extra fresh sockets for port-allocation samples
    port_samples: int = 3
    hairpin: bool = False
    lifetime: bool = False
    #: idle intervals tried for the binding lifetime (seconds, increasing)
    lifetime_intervals: Tuple[float, ...] = DEFAULT_LIFETIME_INTERVALS
    #: longest idle interval tried
    lifetime_max: float = 300.0

    def first_policy(self) -> RetransmitPolicy:
        """Sends at 0, rto, 3 rto, 7 rto... while before ``timeout``; gives up at ``timeout``."""
        offsets, t, rto = [], 0.0, self.first_rto
        while t < self.timeout and len(offsets) < 16:
            offsets.append(t)
            t += rto
            rto *= 2
        return RetransmitPolicy(rto=self.first_rto, sends=len(offsets), max_rto=1e9,
                                last_wait=(self.timeout - offsets[-1]) / self.first_rto)

    def quick_policy(self, rtt: Optional[float]) -> RetransmitPolicy:
        """``quick_sends`` sends from an RTO of twice the RTT (at least
        ``min_rto``), capped at 4 RTO, then a last wait of 4 RTO: about 0.76 s
        on a LAN, and a wrong "no answer" needs all sends or answers lost."""
        rto = max(self.min_rto, 2 * (rtt if rtt is not None else self.first_rto))
        return RetransmitPolicy(rto=rto, sends=self.quick_sends, last_wait=4.0, max_rto=4 * rto)


@dataclass(frozen=True)
class ServerInfo:
    address: Address
    response_origin: Optional[Address] = None
    other_address: Optional[Address] = None
    software: Optional[str] = None
    rfc5780: bool = False
    tested: Tuple[str, ...] = ()
    untested: Tuple[str, ...] = ()  #: "test: reason"
    inconsistencies: Tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "address": str(self.address),
            "response_origin": _s(self.response_origin),
            "other_address": _s(self.other_address),
            "software": self.software,
            "rfc5780": self.rfc5780,
            "tested": list(self.tested),
            "untested": list(self.untested),
            "inconsistencies": list(self.inconsistencies),
        }


@dataclass(frozen=True)
class ProbeReport:
    server: ServerInfo
    answered: bool
    nat: Optional[bool]
    mapped: Optional[Address]
    local: Optional[Address]
    classic: Classic
    mapping: Behaviour
    filtering: Behaviour
    port_allocation: PortAllocation
    port_samples: Tuple[Tuple[int, int], ...]
    hairpinning: Optional[bool]
    lifetime_s: Optional[float]
    elapsed_ms: int
    notes: Tuple[str, ...] = ()

    def to_json(self) -> dict:
        """The documented JSON object (docs/probe.md)."""
        return {
            "nat": self.nat,
            "mapped": _s(self.mapped),
            "local": _s(self.local),
            "classic": self.classic.value,
            "mapping": self.mapping.value,
            "filtering": self.filtering.value,
            "port_allocation": {"kind": self.port_allocation.kind.value, "step": self.port_allocation.step,
                                "samples": [list(s) for s in self.port_samples]},
            "hairpinning": self.hairpinning,
            "lifetime_s": self.lifetime_s,
            "server": self.server.to_json(),
            "elapsed_ms": self.elapsed_ms,
            "notes": list(self.notes),
        }


def _s(addr: Optional[Address]) -> Optional[str]:
    return None if addr is None else str(addr)


def _binding(attrs=()) -> Message:
    return Message(Method.BINDING, Class.REQUEST, new_transaction_id(), tuple(attrs))


def _change(flags: int) -> Tuple[int, int]:
    return (Attr.CHANGE_REQUEST, flags)


class ProbeSocket(StunClientProtocol):
    """A StunClientProtocol that also reports ICMP errors and send errors,
    and hands unsolicited STUN messages whose transaction id it was told
    to expect to a callback (hairpin and lifetime tests)."""

    def __init__(self, clock, name: str, on_refused: Callable[["ProbeSocket"], None]) -> None:
        StunClientProtocol.__init__(self, clock, on_other=self._unsolicited)
        self.name = name
        self.on_refused = on_refused
        self.send_errors: List[OSError] = []
        self.expect: Dict[bytes, Callable[[Message, tuple], None]] = {}
        self.port = None  #: the IListeningPort
        self.closing = False  #: set when the prober closes it

    def _send(self, data: bytes, addr) -> None:
        try:
            StunClientProtocol._send(self, data, addr)
        except OSError as e:
            self.send_errors.append(e)
            raise

    def connectionRefused(self) -> None:
        self.on_refused(self)

    def stopProtocol(self) -> None:
        # The epoll reactor closes a connected UDP socket on the EPOLLERR an
        # ICMP port unreachable raises, without calling connectionRefused.
        if not self.closing:
            self.on_refused(self)
        StunClientProtocol.stopProtocol(self)

    def _unsolicited(self, data: bytes, addr) -> None:
        if len(data) < 20:
            return
        callback = self.expect.get(bytes(data[8:20]))
        if callback is None:
            return
        from natsalon.stun import StunDecodeError, decode
        try:
            msg = decode(data)
        except StunDecodeError:
            return
        callback(msg, addr)

    @property
    def local(self) -> Address:
        host = self.transport.getHost()
        return Address(host.host, host.port)


class _Bound:
    """A socket's binding towards the primary: its first answer."""

    def __init__(self, sock: ProbeSocket, mapped: Address, rtt: float, at: float, msg: Message,
                 source: Address) -> None:
        self.sock, self.mapped, self.rtt, self.at, self.msg, self.source = sock, mapped, rtt, at, msg, source


class _Run:
    """One probe run: opens sockets, runs the tests, builds the report."""

    def __init__(self, clock, listen: Callable, server: Address, config: ProbeConfig,
                 local_ips: FrozenSet[str]) -> None:
        self.clock = clock
        self.listen = listen
        self.primary = server
        self.config = config
        self.local_ips = local_ips
        self.started = clock.seconds()
        self.socks: List[ProbeSocket] = []
        self.waits: List[defer.Deferred] = []
        self.done = defer.Deferred()
        self.inconsistencies: List[str] = []
        self.untested: List[str] = []
        self.tested: List[str] = []
        self.notes: List[str] = []
        self.samples: List[Tuple[int, int]] = []
        self.rtt: Optional[float] = None
        self.rfc5780_off = False
        self.other: Optional[Address] = None
        self.results: Dict[str, object] = {}

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

    def inconsistent(self, text: str) -> None:
        if text not in self.inconsistencies:
            log.info("server inconsistency: {text}", text=text)
            self.inconsistencies.append(text)

    def cannot(self, test: str, reason: str) -> None:
        entry = "%s: %s" % (test, reason)
        if entry not in self.untested:
            self.untested.append(entry)

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

    def abort(self, exc: Exception) -> None:
        if not self.done.called:
            self.done.errback(exc)  # first: the cancellations close() causes are then ignored
            self.close()

    def _note_rtt(self, rtt: float) -> None:
        if rtt >= 0 and (self.rtt is None or rtt < self.rtt):
            self.rtt = rtt

    def quick(self) -> RetransmitPolicy:
        return self.config.quick_policy(self.rtt)

    def grid(self) -> Dict[Address, Address]:
        """address -> the OTHER-ADDRESS it should advertise (RFC 5780 grid)."""
        o, p = self.other, self.primary
        if o is None:
            return {}
        a01, a10 = Address(p.host, o.port), Address(o.host, p.port)
        return {p: o, o: p, a01: a10, a10: a01}

    def check_response(self, label: str, msg: Message, source: Address,
                       expect_from: Optional[Address]) -> None:
        origin = msg.get(Attr.RESPONSE_ORIGIN, msg.get(Attr.SOURCE_ADDRESS))
        if origin is not None and origin != source:
            self.inconsistent("%s: RESPONSE-ORIGIN %s, but the answer came from %s" % (label, origin, source))
        if expect_from is not None and source != expect_from:
            self.inconsistent("%s: answer from %s, expected from %s" % (label, source, expect_from))
        other = msg.get(Attr.OTHER_ADDRESS, msg.get(Attr.CHANGED_ADDRESS))
        want = self.grid().get(source)
        if other is not None and want is not None and other != want:
            self.inconsistent("%s: OTHER-ADDRESS %s from %s, expected %s" % (label, other, source, want))

    # -- requests --------------------------------------------------------------
    @defer.inlineCallbacks
    def ask(self, sock: ProbeSocket, to: Address, attrs=(), policy: Optional[RetransmitPolicy] = None):
        """A request; the Response, or None after the whole schedule."""
        try:
            resp = yield sock.request(_binding(attrs), tuple(to), policy=policy or self.quick())
        except StunTimeout:
            return None
        self._note_rtt(resp.rtt)
        return resp

    @defer.inlineCallbacks
    def bind(self, sock: ProbeSocket):
        """The socket's first request, to the primary: a _Bound or None.
        Always carries CHANGE-REQUEST (flags 0), so an RFC 5780 server adds
        RESPONSE-ORIGIN and OTHER-ADDRESS; a server that answers 420 to it
        is asked again with a plain request."""
        attrs = () if self.rfc5780_off else (_change(0),)
        resp = yield self.ask(sock, self.primary, attrs, self.config.first_policy())
        if resp is not None and resp.message.cls == Class.ERROR and attrs:
            code = resp.message.get(Attr.ERROR_CODE)
            if code is not None and code.code == 420:
                self.rfc5780_off = True
                self.cannot("rfc5780", "the server does not understand CHANGE-REQUEST (420)")
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
        self.check_response("binding", msg, resp.source, self.primary)
        other = msg.get(Attr.OTHER_ADDRESS, msg.get(Attr.CHANGED_ADDRESS))
        if other is not None:
            if self.other is None:
                self.other = other
            elif other != self.other:
                self.inconsistent("OTHER-ADDRESS changes between answers: %s, %s" % (self.other, other))
        local = sock.local
        self.samples.append((local.port, mapped.port))
        return _Bound(sock, mapped, resp.rtt, self.clock.seconds(), msg, resp.source)

    # -- tests -----------------------------------------------------------------
    @defer.inlineCallbacks
    def test_primary(self):
        sock = self.sock("R", connect=True)
        bound = yield self.bind(sock)
        self.results["R"] = bound

    @defer.inlineCallbacks
    def test_sample(self, name: str):
        bound = yield self.bind(self.sock(name))
        self.results[name] = bound

    def has_alt_ip(self) -> bool:
        return self.other is not None and self.other.host != self.primary.host

    @defer.inlineCallbacks
    def test_mapping(self):
        sock = self.sock("M")
        bound = yield self.bind(sock)
        if bound is None:
            return
        self.results["m1"] = bound.mapped
        p, o = self.primary, self.other
        targets = {}
        if self.has_alt_ip():
            targets["m2"] = Address(o.host, p.port)
            targets["m3"] = o
        # IP1:P2; without OTHER-ADDRESS, try the customary alternate port P1+1
        # (natsalon's and coturn's default): any other port of the server
        # that answers is as good a destination for this test.
        alt_port = o.port if o is not None and o.port != p.port else p.port % 65535 + 1
        targets["m4"] = Address(p.host, alt_port)
        names = list(targets)
        answers = yield defer.gatherResults(
            [self.ask(sock, targets[n], () if self.rfc5780_off else (_change(0),)) for n in names])
        for name, resp in zip(names, answers):
            if resp is None:
                self.cannot("mapping", "%s did not answer" % (targets[name],))
                continue
            mapped = resp.message.mapped_address
            if resp.message.cls != Class.SUCCESS or mapped is None:
                self.cannot("mapping", "%s gave no mapped address" % (targets[name],))
                continue
            self.check_response("mapping test to %s" % (targets[name],), resp.message, resp.source, targets[name])
            self.results[name] = mapped
            if mapped != bound.mapped:
                self.samples.append((sock.local.port, mapped.port))

    @defer.inlineCallbacks
    def test_filter(self, name: str, flags: int):
        label = "change-IP+port" if flags & CHANGE_IP else "change-port"
        sock = self.sock(name)
        bound = yield self.bind(sock)
        if bound is None:
            return
        p, o = self.primary, self.other
        if flags & CHANGE_IP:
            if not self.has_alt_ip():
                self.cannot("filtering " + label, "the server has no alternate IP (no OTHER-ADDRESS"
                            " with another IP)")
                return
            expect = o
        elif o is not None and o.port != p.port:
            expect = Address(p.host, o.port)
        else:
            expect = None  # one-IP server: any other port of the primary IP
        if self.rfc5780_off:
            self.cannot("filtering " + label, "the server does not support CHANGE-REQUEST")
            return
        resp = yield self.ask(sock, p, (_change(flags),))
        self.results[name] = self.filter_outcome(label, resp, expect)

    def filter_outcome(self, label: str, resp, expect: Optional[Address]) -> Optional[bool]:
        if resp is None:
            self.tested.append("filtering " + label)
            return False
        msg, p = resp.message, self.primary
        if msg.cls == Class.ERROR:
            code = msg.get(Attr.ERROR_CODE)
            self.cannot("filtering " + label, "the server answered error %s" % (code.code if code else "?"))
            return None
        ok_port = resp.source.port != p.port
        ok_ip = (resp.source.host != p.host) if label.startswith("change-IP") else resp.source.host == p.host
        if not (ok_port and ok_ip) or (expect is not None and resp.source != expect):
            self.inconsistent("%s answer came from %s (expected %s): the server does not honour"
                              " CHANGE-REQUEST" % (label, resp.source, expect or "another port of the primary IP"))
            self.cannot("filtering " + label, "the server answered from the wrong address")
            return None
        self.check_response(label, msg, resp.source, expect)
        self.tested.append("filtering " + label)
        return True

    @defer.inlineCallbacks
    def test_hairpin(self):
        h, b = self.sock("H"), self.sock("B")
        hb, bb = yield defer.gatherResults([self.bind(h), self.bind(b)])
        if hb is None or bb is None:
            self.cannot("hairpinning", "no binding to hairpin through")
            return
        seen = defer.Deferred()

        def arrived(msg, addr):
            if not seen.called:
                seen.callback(True)

        sends = []
        for src, dst in ((h, bb), (b, hb)):
            m = _binding()
            dst.sock.expect[m.transaction_id] = arrived
            d = src.request(m, tuple(dst.mapped), policy=self.quick())
            d.addErrback(lambda f: f.trap(StunTimeout, defer.CancelledError))
            sends.append(d)
        timeout = defer.DeferredList(sends)
        timeout.addCallback(lambda _: seen.called or seen.callback(False))
        result = yield seen
        for d in sends:
            d.cancel()
        self.tested.append("hairpinning")
        self.results["hairpin"] = result

    @defer.inlineCallbacks
    def test_lifetime(self):
        intervals = [t for t in self.config.lifetime_intervals if t <= self.config.lifetime_max]
        binds = yield defer.gatherResults([self.bind(self.sock("X%d" % i)) for i in range(len(intervals))])
        alive_for, dead_after = None, None
        for interval, bound in zip(intervals, binds):
            if bound is None:
                continue
            yield self.sleep(bound.at + interval - self.clock.seconds())
            idle = self.clock.seconds() - bound.at
            alive = yield self.still_bound(bound)
            if alive is None:
                return
            log.debug("binding idle {idle:.1f}s: {state}", idle=idle, state="alive" if alive else "gone")
            if not alive:
                dead_after = idle
                break
            alive_for = idle
        self.tested.append("lifetime")
        self.results["lifetime"] = (alive_for, dead_after)

    @defer.inlineCallbacks
    def still_bound(self, bound: _Bound):
        """Ask the primary, from a new socket, to answer to the idle
        binding's mapped port (RESPONSE-PORT): True if the answer arrives."""
        if self.rfc5780_off:
            self.cannot("lifetime", "the server does not support RESPONSE-PORT")
            return None
        y = self.sock("Y")
        m = _binding(((Attr.RESPONSE_PORT, bound.mapped.port), _change(0)))
        got = defer.Deferred()
        bound.sock.expect[m.transaction_id] = lambda msg, addr: got.called or got.callback(True)
        d = y.request(m, tuple(self.primary), policy=self.quick())

        def ended(result):
            if got.called:
                return None
            if isinstance(result, Exception) or hasattr(result, "trap"):
                got.callback(False)
            else:  # the answer came back to Y itself: an error, or RESPONSE-PORT ignored
                got.callback(None)
                self.cannot("lifetime", "the server did not honour RESPONSE-PORT")
            return None

        d.addBoth(ended)
        alive = yield got
        d.cancel()
        return alive

    # -- the run ---------------------------------------------------------------
    def start(self) -> defer.Deferred:
        tests = [self.test_primary(), self.test_mapping(),
                 self.test_filter("F1", CHANGE_IP | CHANGE_PORT), self.test_filter("F2", CHANGE_PORT)]
        tests += [self.test_sample("S%d" % i) for i in range(self.config.port_samples)]
        if self.config.hairpin:
            tests.append(self.test_hairpin())
        if self.config.lifetime:
            tests.append(self.test_lifetime())
        all_done = defer.DeferredList(tests, fireOnOneErrback=True, consumeErrors=True)
        all_done.addCallbacks(self.finish, self.failed)
        return self.done

    def failed(self, failure) -> None:
        exc = failure.value.subFailure.value if isinstance(failure.value, defer.FirstError) else failure.value
        if self.done.called:  # already aborted: these are the cancellations
            return None
        if not isinstance(exc, ProbeError):
            log.failure("probe failed", failure.value.subFailure
                        if isinstance(failure.value, defer.FirstError) else failure)
        self.abort(exc)
        return None

    def finish(self, _) -> None:
        if self.done.called:
            return
        try:
            report = self.report()
        except Exception as e:  # a bug: report it, never leave the caller hanging
            log.failure("building the probe report")
            self.abort(e)
            return
        self.close()
        self.done.callback(report)

    def report(self) -> ProbeReport:
        r = self.results
        answered = any(isinstance(v, _Bound) for v in r.values())
        primary = r.get("R")
        if not answered:
            errors = [e for s in self.socks for e in s.send_errors]
            if errors:
                raise ServerUnreachable("cannot send to %s: %s" % (self.primary, errors[0].strerror or errors[0]))
        if primary is None:
            primary = next((v for v in r.values() if isinstance(v, _Bound)), None)
        mapped = primary.mapped if primary is not None else None
        local = primary.sock.local if primary is not None else None
        nat = None
        if mapped is not None:
            nat = classify.is_nat(mapped, local.port, set(self.local_ips) | {local.host})
        mapping = classify.mapping_behaviour(r.get("m1"), r.get("m2"), r.get("m3"), r.get("m4"))
        filtering = classify.filtering_behaviour(r.get("F1"), r.get("F2"))
        notes = list(mapping.notes) + list(filtering.notes)
        if not answered:
            mapping = filtering = classify.Verdict(Behaviour.UNKNOWN)
            notes = ["no answer from %s within %.1f s and no error: UDP is blocked (or the server is down"
                     " and silent)" % (self.primary, self.config.timeout)]
        elif mapping.behaviour is not Behaviour.UNKNOWN:
            self.tested.append("mapping")
        classic = classify.classic_type(answered, nat, mapping.behaviour, filtering.behaviour)
        alloc = classify.port_allocation(self.samples) if answered else PortAllocation(Allocation.UNKNOWN)
        hairpin = r.get("hairpin")
        lifetime_s = None
        if "lifetime" in r:
            alive_for, dead_after = r["lifetime"]
            lifetime_s = None if alive_for is None else round(alive_for, 1)
            if dead_after is None and alive_for is not None:
                notes.append("the binding outlived the longest idle interval tried (%.1f s)" % alive_for)
            elif dead_after is not None:
                notes.append("binding lifetime between %s and %.1f s idle" % (
                    "0" if alive_for is None else "%.1f" % alive_for, dead_after))
        msg = primary.msg if primary is not None else None
        server = ServerInfo(
            address=self.primary,
            response_origin=msg.get(Attr.RESPONSE_ORIGIN) if msg else None,
            other_address=self.other,
            software=msg.get(Attr.SOFTWARE) if msg else None,
            rfc5780=bool(msg and (msg.has(Attr.RESPONSE_ORIGIN) or msg.has(Attr.OTHER_ADDRESS))
                         and not self.rfc5780_off),
            tested=tuple(dict.fromkeys(self.tested)),
            untested=tuple(self.untested),
            inconsistencies=tuple(self.inconsistencies),
        )
        elapsed = int(round((self.clock.seconds() - self.started) * 1000))
        return ProbeReport(server, answered, nat, mapped, local, classic, mapping.behaviour,
                           filtering.behaviour, alloc, tuple(self.samples), hairpin, lifetime_s,
                           elapsed, tuple(notes))


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return False
    return True


def default_listen(reactor) -> Callable:
    """``listen(protocol) -> IListeningPort`` on a fresh IPv4 UDP port."""
    return lambda proto: reactor.listenUDP(0, proto, interface="0.0.0.0")


@defer.inlineCallbacks
def probe(reactor, server: Tuple[str, int], config: ProbeConfig = ProbeConfig(),
          local_ips: Optional[Iterable[str]] = None, listen: Optional[Callable] = None):
    """Probe the NAT in front of this host against ``server`` ``(host, port)``.

    Fires with a :class:`ProbeReport` (also for ``udp-blocked``), or fails
    with :class:`ServerUnreachable` / :class:`ServerUnusable`.  ``reactor``
    provides the clock (and ``listenUDP`` / ``resolve`` unless ``listen``
    is given and ``server`` is an IPv4 literal); ``local_ips`` are this
    host's interface addresses (default: :mod:`natsalon.net.interfaces`, scanned
    in a thread).
    """
    host, port = server
    if not _is_ipv4(host):
        try:
            host = yield reactor.resolve(host)
        except Exception as e:
            raise ServerUnreachable("cannot resolve %s: %s" % (server[0], e.__class__.__name__)) from None
    if local_ips is None:
        from natsalon.net.interfaces import local_addresses_in_thread
        local_ips = yield local_addresses_in_thread(reactor)
    run = _Run(reactor, listen or default_listen(reactor), Address(host, int(port)), config,
               frozenset(local_ips))
    report = yield run.start()
    log.debug("probe of {server}: {classic} in {ms} ms", server=server, classic=report.classic.value,
              ms=report.elapsed_ms)
    return report
