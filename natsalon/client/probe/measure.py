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
is a bounded wait, robust to loss (six sends).  The tests are functions of
a :class:`~natsalon.client.probe.run.ProbeRun`, which owns the sockets and
timers and records what they find; the verdicts come from the pure tables
in :mod:`natsalon.client.probe.classify` (:mod:`natsalon.client.probe.report`).
"""

from __future__ import annotations

import socket
from typing import Callable, Iterable, Mapping, Optional, Tuple

from twisted.internet import defer, threads
from twisted.logger import Logger

from natsalon.client.probe.config import ProbeConfig
from natsalon.client.probe.errors import ProbeError, ServerUnreachable, ServerUnusable
from natsalon.client.probe.findings import Bound
from natsalon.client.probe.privacy import address_flags_in_thread
from natsalon.client.probe.report import ProbeReport
from natsalon.client.probe.run import ProbeRun, binding_request, change_request
from natsalon.client.probe.sockets import default_listen
from natsalon.client.probe.summary import summarize
from natsalon.wire.nat import NatSummary
from natsalon.stun import CHANGE_IP, CHANGE_PORT, Address, Attr, Class
from natsalon.stun.client import StunTimeout

__all__ = ["probe", "ProbeConfig", "ProbeReport", "ProbeError", "ServerUnreachable", "ServerUnusable"]

log = Logger()


@defer.inlineCallbacks
def probe(reactor, server: Tuple[str, int], config: ProbeConfig = ProbeConfig(),
          local_ips: Optional[Iterable[str]] = None, listen: Optional[Callable] = None,
          on_early: Optional[Callable[[NatSummary], None]] = None, family: Optional[int] = None,
          address_flags: Optional[Mapping[str, int]] = None):
    """Probe the NAT (or firewall) in front of this host against ``server``
    ``(host, port)``, over the server's IP family.

    Fires with a :class:`ProbeReport` (also for ``udp-blocked``), or fails
    with :class:`ServerUnreachable` / :class:`ServerUnusable`.  ``reactor``
    provides the clock (and ``listenUDP`` / ``resolve`` unless ``listen``
    is given and ``server`` is an IP literal); a host name is resolved to
    an address of IP version ``family`` (4 by default; 6 in the reactor's
    thread pool).  ``local_ips`` are this host's interface addresses and
    ``address_flags`` its IPv6 addresses' flags (:mod:`.privacy`; default:
    both scanned in a thread).  ``on_early`` is called once with the NAT
    summary (:mod:`.summary`) as soon as the mapping and port-allocation
    tests are over (about two round trips), before the filtering tests may
    have to wait out their schedule.
    """
    host = yield _resolve(reactor, server[0], family)
    v6 = ":" in host
    if local_ips is None:
        from natsalon.net.interfaces import local_addresses_in_thread
        local_ips = yield local_addresses_in_thread(reactor)
    if address_flags is None and v6:
        address_flags = yield address_flags_in_thread(reactor)
    run = ProbeRun(reactor, listen or default_listen(reactor, 6 if v6 else 4), Address(host, int(server[1])),
                   config, frozenset(local_ips), address_flags)
    report = yield measure(run, on_early)
    log.debug("probe of {server}: {classic} in {ms} ms", server=server, classic=report.classic.value,
              ms=report.elapsed_ms)
    return report


def ip_version(host: str) -> Optional[int]:
    """4 or 6 for an IP literal, None for a host name."""
    for af, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        try:
            socket.inet_pton(af, host)
        except OSError:
            continue
        return version
    return None


@defer.inlineCallbacks
def _resolve(reactor, host: str, family: Optional[int]):
    """``host`` if it is an IP literal, else an address of IP version
    ``family`` (4 when None) it resolves to; a literal of the other
    version than ``family`` is :class:`ServerUnusable`."""
    version = ip_version(host)
    if version is not None:
        if family is not None and family != version:
            raise ServerUnusable("%s is an IPv%d address, not IPv%d" % (host, version, family))
        return host
    try:
        if family == 6:
            infos = yield threads.deferToThreadPool(reactor, reactor.getThreadPool(), socket.getaddrinfo,
                                                    host, None, socket.AF_INET6, socket.SOCK_DGRAM)
            return infos[0][4][0]
        return (yield reactor.resolve(host))
    except Exception as e:
        raise ServerUnreachable("cannot resolve %s%s: %s" % (host, " to IPv6" if family == 6 else "",
                                                             e.__class__.__name__)) from None


def measure(run: ProbeRun, on_early: Optional[Callable[[NatSummary], None]] = None) -> defer.Deferred:
    """Start every test of ``run.config`` at once; :meth:`ProbeRun.conclude` them."""
    config = run.config
    fast = [measure_primary(run), measure_mapping(run)]
    fast += [measure_sample(run, "S%d" % i) for i in range(config.port_samples)]
    tests = fast + [measure_filtering(run, "F1", CHANGE_IP | CHANGE_PORT), measure_filtering(run, "F2", CHANGE_PORT)]
    if on_early is not None:
        early = defer.DeferredList(fast, consumeErrors=True)
        # a filtering answer that gets through comes when the mapping's do
        # (both are a binding, then one more request): give it a moment
        early.addCallback(lambda _: run.sleep(min(0.03, (run.found.rtt or 0.0) / 2 + 0.005)))
        early.addCallback(lambda _: on_early(summarize(run.found)))
        early.addErrback(lambda f: f.trap(defer.CancelledError))
    if config.hairpin:
        tests.append(measure_hairpinning(run))
    if config.lifetime:
        tests.append(measure_lifetime(run))
    return run.conclude(tests)


@defer.inlineCallbacks
def measure_primary(run: ProbeRun):
    """R: the binding of a socket connected to the primary address."""
    sock = run.sock("R", connect=True)
    bound = yield run.bind(sock)
    run.found.results["R"] = bound


@defer.inlineCallbacks
def measure_sample(run: ProbeRun, name: str):
    """S1..Sn: one more fresh binding, a port-allocation sample."""
    bound = yield run.bind(run.sock(name))
    run.found.results[name] = bound


@defer.inlineCallbacks
def measure_mapping(run: ProbeRun):
    """M: the mapped addresses one socket gets from each server address (m1..m4)."""
    sock = run.sock("M")
    bound = yield run.bind(sock)
    if bound is None:
        return
    run.found.results["m1"] = bound.mapped
    p, o = run.primary, run.found.other
    targets = {}
    if run.found.has_alt_ip():
        targets["m2"] = Address(o.host, p.port)
        targets["m3"] = o
    # IP1:P2; without OTHER-ADDRESS, try the customary alternate port P1+1
    # (natsalon's and coturn's default): any other port of the server
    # that answers is as good a destination for this test.
    alt_port = o.port if o is not None and o.port != p.port else p.port % 65535 + 1
    targets["m4"] = Address(p.host, alt_port)
    names = list(targets)
    answers = yield defer.gatherResults(
        [run.ask(sock, targets[n], () if run.found.rfc5780_off else (change_request(0),)) for n in names],
        consumeErrors=True)
    for name, resp in zip(names, answers):
        if resp is None:
            run.found.cannot("mapping", "%s did not answer" % (targets[name],))
            continue
        mapped = resp.message.mapped_address
        if resp.message.cls != Class.SUCCESS or mapped is None:
            run.found.cannot("mapping", "%s gave no mapped address" % (targets[name],))
            continue
        run.found.check_response("mapping test to %s" % (targets[name],), resp.message, resp.source,
                                 targets[name])
        run.found.results[name] = mapped
        if mapped != bound.mapped:
            run.found.samples.append((sock.local.port, mapped.port))


@defer.inlineCallbacks
def measure_filtering(run: ProbeRun, name: str, flags: int):
    """F1 / F2: whether the answer to CHANGE-REQUEST ``flags`` gets through."""
    label = "change-IP+port" if flags & CHANGE_IP else "change-port"
    sock = run.sock(name)
    bound = yield run.bind(sock)
    if bound is None:
        return
    p, o = run.primary, run.found.other
    if flags & CHANGE_IP:
        if not run.found.has_alt_ip():
            run.found.cannot("filtering " + label, "the server has no alternate IP (no OTHER-ADDRESS"
                             " with another IP)")
            return
        expect = o
    elif o is not None and o.port != p.port:
        expect = Address(p.host, o.port)
    else:
        expect = None  # one-IP server: any other port of the primary IP
    if run.found.rfc5780_off:
        run.found.cannot("filtering " + label, "the server does not support CHANGE-REQUEST")
        return
    resp = yield run.ask(sock, p, (change_request(flags),))
    run.found.results[name] = filtering_outcome(run, label, resp, expect)


def filtering_outcome(run: ProbeRun, label: str, resp, expect: Optional[Address]) -> Optional[bool]:
    """Whether the changed-address answer arrived; None when the server
    answered wrongly, so the test could not tell."""
    found, test = run.found, "filtering " + label
    if resp is None:
        found.tested.append(test)
        return False
    msg, p = resp.message, run.primary
    if msg.cls == Class.ERROR:
        code = msg.get(Attr.ERROR_CODE)
        found.cannot(test, "the server answered error %s" % (code.code if code else "?"))
        return None
    ok_port = resp.source.port != p.port
    ok_ip = (resp.source.host != p.host) if label.startswith("change-IP") else resp.source.host == p.host
    if not (ok_port and ok_ip) or (expect is not None and resp.source != expect):
        found.inconsistent("%s answer came from %s (expected %s): the server does not honour CHANGE-REQUEST"
                           % (label, resp.source, expect or "another port of the primary IP"))
        found.cannot(test, "the server answered from the wrong address")
        return None
    found.check_response(label, msg, resp.source, expect)
    found.tested.append(test)
    return True


@defer.inlineCallbacks
def measure_hairpinning(run: ProbeRun):
    """H / B: whether either socket receives what the other sends to its mapped address."""
    h, b = run.sock("H"), run.sock("B")
    hb, bb = yield defer.gatherResults([run.bind(h), run.bind(b)], consumeErrors=True)
    if hb is None or bb is None:
        run.found.cannot("hairpinning", "no binding to hairpin through")
        return
    seen = defer.Deferred()

    def arrived(msg, addr):
        if not seen.called:
            seen.callback(True)

    sends = []
    for src, dst in ((h, bb), (b, hb)):
        m = binding_request()
        dst.sock.expect[m.transaction_id] = arrived
        d = src.request(m, tuple(dst.mapped), policy=run.quick())
        d.addErrback(lambda f: f.trap(StunTimeout, defer.CancelledError))
        sends.append(d)
    timeout = defer.DeferredList(sends)
    timeout.addCallback(lambda _: seen.called or seen.callback(False))
    result = yield seen
    for d in sends:
        d.cancel()
    run.found.tested.append("hairpinning")
    run.found.results["hairpin"] = result


@defer.inlineCallbacks
def measure_lifetime(run: ProbeRun):
    """X1..Xn: the longest idle time a binding survives, and the first it did not."""
    intervals = [t for t in run.config.lifetime_intervals if t <= run.config.lifetime_max]
    binds = yield defer.gatherResults([run.bind(run.sock("X%d" % i)) for i in range(len(intervals))],
                                     consumeErrors=True)  # cancelled together: one failure is enough
    alive_for, dead_after = None, None
    for interval, bound in zip(intervals, binds):
        if bound is None:
            continue
        yield run.sleep(bound.at + interval - run.clock.seconds())
        idle = run.clock.seconds() - bound.at
        alive = yield still_bound(run, bound)
        if alive is None:
            return
        log.debug("binding idle {idle:.1f}s: {state}", idle=idle, state="alive" if alive else "gone")
        if not alive:
            dead_after = idle
            break
        alive_for = idle
    run.found.tested.append("lifetime")
    run.found.results["lifetime"] = (alive_for, dead_after)


@defer.inlineCallbacks
def still_bound(run: ProbeRun, bound: Bound):
    """Ask the primary, from a new socket, to answer to the idle
    binding's mapped port (RESPONSE-PORT): True if the answer arrives."""
    if run.found.rfc5780_off:
        run.found.cannot("lifetime", "the server does not support RESPONSE-PORT")
        return None
    y = run.sock("Y")
    m = binding_request(((Attr.RESPONSE_PORT, bound.mapped.port), change_request(0)))
    got = defer.Deferred()
    bound.sock.expect[m.transaction_id] = lambda msg, addr: got.called or got.callback(True)
    d = y.request(m, tuple(run.primary), policy=run.quick())

    def ended(result):
        if got.called:
            return None
        if isinstance(result, Exception) or hasattr(result, "trap"):
            got.callback(False)
        else:  # the answer came back to Y itself: an error, or RESPONSE-PORT ignored
            got.callback(None)
            run.found.cannot("lifetime", "the server did not honour RESPONSE-PORT")
        return None

    d.addBoth(ended)
    alive = yield got
    d.cancel()
    return alive
