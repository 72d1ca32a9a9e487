"""Prometheus metrics (``--metrics [HOST:]PORT``).

The hot paths count into plain integers (``ServerState.stats``, the TURN
allocations' fields, the client ``Connection``'s counters); the
collectors here read them when Prometheus scrapes, in the reactor thread,
so nothing is counted twice and nothing is locked.  The page is served by
``twisted.web`` (:class:`MetricsPage` wraps
``prometheus_client.generate_latest``): a scrape is one short call in the
reactor, no thread, no blocking I/O.

Every label set is bounded: labels name a state, a reason, a code or a
direction, never a source address or a room.
"""

from __future__ import annotations

import time
from typing import Dict, Iterable, Iterator, Optional, Tuple

from natsalon.stun import Class, Method
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web import resource, server

import natsalon

log = Logger()

#: allocation lifetime buckets, seconds (TURN allocations live minutes to hours)
LIFETIME_BUCKETS = (10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)

#: ServerState.stats key -> reason label of natsalon_dropped_total
DROP_REASONS = {
    "dropped_malformed": "malformed",
    "dropped_unknown_method": "unknown_method",
    "dropped_oversized": "oversized",
    "rate_limited": "rate_limited",
    "dropped_no_socket": "no_socket",
    "not_answered": "no_answer",
    "not_answered_too_large": "answer_too_large",
    "send_failed": "send_failed",
    "internal_error": "internal_error",
}
#: JOIN outcomes (natsalon.server.introducer.rooms.Outcome values and the
#: introducer's own refusals) -> outcome label of natsalon_joins_total
#: TURN error codes always exported (others appear once answered)
TURN_CODES = ("400", "401", "403", "437", "438", "441", "442", "486", "508")
METHOD_NAMES = {m.value: m.name.lower() for m in Method}
CLASS_NAMES = {c.value: {"SUCCESS": "success", "ERROR": "error"}.get(c.name, c.name.lower()) for c in Class}
JOIN_OUTCOMES = ("waiting", "introduced", "full", "too_many_rooms", "too_many_from_source", "cookie_sent",
                 "bad", "not_request", "registry_failed")


class MetricsPage(resource.Resource):
    """``GET /metrics``: the registry in Prometheus's text format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)

    render_HEAD = render_GET


class _Root(resource.Resource):
    def render_GET(self, request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"natsalon: metrics at /metrics\n"


def site(registry: CollectorRegistry) -> server.Site:
    root = _Root()
    root.putChild(b"metrics", MetricsPage(registry))
    s = server.Site(root)
    s.noisy = False
    s.log = lambda request: None  # no access log line per scrape
    return s


class MetricsService(service.Service):
    """The metrics listener: bound in ``privilegedStartService`` like the
    salon's sockets; a port that cannot be bound ends start-up with one
    line.  ``port.getHost()`` tells the bound port (``--metrics 0``)."""

    def __init__(self, reactor, registry: CollectorRegistry, host: str, port: int) -> None:
        self.reactor = reactor
        self.registry = registry
        self.host = host
        self.port_number = port
        self.port = None

    def _listen(self) -> None:
        if self.port is not None:
            return
        try:
            self.port = self.reactor.listenTCP(self.port_number, site(self.registry), interface=self.host)
        except CannotListenError as e:
            raise SystemExit("cannot listen for metrics on %s:%d: %s" % (self.host, self.port_number,
                                                                           e.socketError)) from None

    def privilegedStartService(self) -> None:
        self._listen()
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        self._listen()
        service.Service.startService(self)
        a = self.port.getHost()
        log.info("metrics on http://{host}:{port}/metrics", host=a.host if ":" not in a.host else "[%s]" % a.host,
                 port=a.port)

    def stopService(self):
        service.Service.stopService(self)
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


def registry(*collectors) -> CollectorRegistry:
    """A registry with the process metrics and ``collectors``."""
    reg = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    for c in collectors:
        reg.register(c)
    return reg


class _Base:
    """What both daemons export: build info and uptime."""

    prefix = "natsalon"

    def __init__(self, clock, started: Optional[float] = None) -> None:
        self.clock = clock
        self.started = clock.seconds() if started is None else started
        self.wall_started = time.time()

    def describe(self) -> Iterable[Metric]:
        return []  # collected at scrape time only (the values live in the daemon)

    def _common(self) -> Iterator[Metric]:
        p = self.prefix
        info = GaugeMetricFamily(p + "_build_info", "The running natsalon version.", labels=["version"])
        info.add_metric([natsalon.__version__], 1)
        yield info
        yield GaugeMetricFamily(p + "_uptime_seconds", "Seconds since the daemon started.",
                                value=max(0.0, self.clock.seconds() - self.started))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(cls, name: str, doc: str, label: str, values: Iterable[Tuple[str, float]]):
    m = cls(name, doc, labels=[label])
    for key, value in values:
        m.add_metric([key], value)
    return m


class TurnTotals:
    """Totals of ended TURN allocations (the live ones are read at scrape
    time): registered as the TURN core's ``on_delete`` observer."""

    def __init__(self, clock, buckets=LIFETIME_BUCKETS) -> None:
        self.clock = clock
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.lifetime_sum = 0.0
        self.relayed_bytes = 0
        self.dropped = 0

    def ended(self, alloc) -> None:
        lifetime = max(0.0, self.clock.seconds() - alloc.started)
        self.lifetime_sum += lifetime
        for i, bound in enumerate(self.buckets):
            if lifetime <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.relayed_bytes += alloc.relayed_bytes
        self.dropped += alloc.dropped

    def histogram(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, n in zip(self.buckets + (float("inf"),), self.counts):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.lifetime_sum)


class SalonCollector(_Base):
    """The salon's metrics, read from a running
    :class:`natsalon.server.service.SalonService`."""

    def __init__(self, salon, clock=None, turn_totals: Optional[TurnTotals] = None) -> None:
        super().__init__(clock if clock is not None else salon.reactor)
        self.salon = salon
        self.turn_totals = turn_totals

    def collect(self) -> Iterator[Metric]:
        salon = self.salon
        salon.flush_stats()  # the sockets' own fast-path counts, folded in now
        stats = dict(salon.state.stats)
        yield from self._common()
        yield _labelled(CounterMetricFamily, "natsalon_answers", "Answers sent. success: every answer a method "
                        "handler made (Binding, JOIN, TURN; their error answers too); 400: the reflector's own 400 "
                        "for a request it could not decode or has no handler for.", "code",
                        [("success", stats.get("answered", 0)), ("400", stats.get("answered_400", 0))])
        yield self._messages(salon)
        yield _labelled(CounterMetricFamily, "natsalon_dropped", "Datagrams dropped or left unanswered, by reason.",
                        "reason", [(label, stats.get(key, 0)) for key, label in DROP_REASONS.items()])
        limiter = salon.state.limiter
        yield GaugeMetricFamily("natsalon_rate_limiter_sources", "Source IPs the rate limiter tracks in this "
                                "second's window.", value=len(limiter) if limiter is not None else 0)
        yield GaugeMetricFamily("natsalon_rate_limit", "Requests per second answered per source IP (0: no limit).",
                                value=limiter.limit if limiter is not None else 0)
        yield GaugeMetricFamily("natsalon_sockets", "STUN sockets bound.",
                                value=len(salon.state.transports))
        yield from self._introducer(stats)
        yield from self._turn(stats)
        yield _labelled(CounterMetricFamily, "natsalon_events", "Every counter the salon keeps, by name "
                        "(the log's stats line).", "event", sorted(stats.items()))

    @staticmethod
    def _messages(salon) -> CounterMetricFamily:
        """STUN messages by method and class; methods outside the salon's
        own set are counted as "other" (the label set stays bounded
        whatever the senders put in their headers)."""
        counts: Dict[Tuple[str, str], int] = {}
        for (method, cls), n in salon.state.messages.items():
            key = (METHOD_NAMES.get(method, "other"), CLASS_NAMES.get(cls, "other"))
            counts[key] = counts.get(key, 0) + n
        m = CounterMetricFamily("natsalon_messages", "STUN messages received and decoded, by method and class "
                                "(the plain Binding requests the read loops answer inline included).",
                                labels=["method", "class"])
        for (method, cls), n in sorted(counts.items()):
            m.add_metric([method, cls], n)
        return m

    def _introducer(self, stats: Dict[str, int]) -> Iterator[Metric]:
        intro = self.salon.introducer
        yield GaugeMetricFamily("natsalon_introducer_enabled", "1 when the salon answers JOIN.",
                                value=0 if intro is None else 1)
        rooms = getattr(intro, "rooms", None)
        members = getattr(rooms, "members", None)
        if rooms is not None and callable(members):
            try:
                held, count = len(rooms), members()
            except TypeError:  # a registry that does not count (a remote one)
                held = count = None
            if isinstance(held, int) and isinstance(count, int):
                yield GaugeMetricFamily("natsalon_rooms", "Rooms held (with at least one member).", value=held)
                yield GaugeMetricFamily("natsalon_room_members", "Members in all rooms (each polls every "
                                        "second while it waits).", value=count)
        yield _labelled(CounterMetricFamily, "natsalon_joins", "JOIN requests by outcome.", "outcome",
                        [(o, stats.get("join_" + o, 0)) for o in JOIN_OUTCOMES])
        yield _counter("natsalon_introductions", "Introductions pushed to the members already in a room.",
                       stats.get("introductions_pushed", 0))
        yield _counter("natsalon_members_expired", "Members dropped after missing their polls.",
                       stats.get("members_expired", 0))
        yield _labelled(CounterMetricFamily, "natsalon_leaves", "LEAVE requests: accepted (the member's token "
                        "matched) or refused.", "result",
                        [("accepted", stats.get("leaves", 0)), ("refused", stats.get("leave_refused", 0))])

    def _turn(self, stats: Dict[str, int]) -> Iterator[Metric]:
        turn = self.salon.turn
        yield GaugeMetricFamily("natsalon_turn_enabled", "1 when the TURN relay runs.", value=0 if turn is None else 1)
        if turn is None:
            return
        core = turn.core
        allocs = core.allocations()
        yield GaugeMetricFamily("natsalon_turn_allocations", "TURN allocations now.", value=len(allocs))
        yield _counter("natsalon_turn_allocations_created", "TURN allocations made.", stats.get("turn_allocations", 0))
        yield _labelled(CounterMetricFamily, "natsalon_turn_allocations_ended", "TURN allocations ended, by reason.",
                        "reason", [(r, stats.get("turn_allocations_" + r, 0)) for r in ("expired", "deleted", "closed")])
        yield GaugeMetricFamily("natsalon_turn_permissions", "TURN permissions now.",
                                value=sum(len(a.permissions) for a in allocs))
        yield _counter("natsalon_turn_permissions_created", "TURN permissions made.", stats.get("turn_permissions", 0))
        yield GaugeMetricFamily("natsalon_turn_channels", "TURN channel bindings now.",
                                value=sum(len(a.bindings) for a in allocs))
        yield _counter("natsalon_turn_channels_created", "TURN channel bindings made.", stats.get("turn_channels", 0))
        yield from self._turn_traffic(core, allocs)
        yield _labelled(CounterMetricFamily, "natsalon_turn_refusals", "Allocate requests refused: user quota (486; "
                        "for room credentials the user is the room), source IP quota (486), salon full (508), no "
                        "relay port free (508).", "reason",
                        [("user_quota", stats.get("turn_user_quota", 0)),
                         ("source_quota", stats.get("turn_source_quota", 0)),
                         ("capacity", stats.get("turn_full", 0)),
                         ("no_relay_port", stats.get("turn_no_relay_port", 0))])
        codes = {c: 0 for c in TURN_CODES}
        codes.update((k[5:], v) for k, v in stats.items() if k.startswith("turn_") and k[5:].isdigit())
        codes = sorted(codes.items())
        yield _labelled(CounterMetricFamily, "natsalon_turn_errors", "TURN error answers, by code (401: challenge).",
                        "code", codes)
        totals = self.turn_totals
        if totals is not None:
            yield totals.histogram("natsalon_turn_allocation_lifetime_seconds",
                                   "How long ended TURN allocations lived.")

    def _turn_traffic(self, core, allocs) -> Iterator[Metric]:
        """What the relay carried: the core's per-direction counters (the
        inline read loops fold theirs in once per batch)."""
        yield _labelled(CounterMetricFamily, "natsalon_turn_packets", "Datagrams relayed, by direction "
                        "(client_to_peer: ChannelData and Send indications; peer_to_client: ChannelData and Data "
                        "indications).", "direction",
                        [("client_to_peer", core.to_peer_packets), ("peer_to_client", core.to_client_packets)])
        total = core.relayed_bytes()
        yield _labelled(CounterMetricFamily, "natsalon_turn_bytes", "Payload bytes relayed, by direction.",
                        "direction", [("client_to_peer", total - core.to_client_bytes),
                                      ("peer_to_client", core.to_client_bytes)])
        yield _counter("natsalon_turn_relayed_bytes", "Payload bytes relayed, both directions together.", total)
        totals = self.turn_totals
        ended_dropped = totals.dropped if totals is not None else 0
        yield _counter("natsalon_turn_relay_dropped", "Datagrams an allocation dropped: over its bandwidth or byte "
                       "quota, to/from a peer without permission or channel, or refused by the socket.",
                       ended_dropped + sum(a.dropped for a in allocs))
        yield _labelled(CounterMetricFamily, "natsalon_turn_limit_drops", "Datagrams dropped for want of credit, by "
                        "the limit that ran out: the bandwidth caps (per allocation, per user or room) or the byte "
                        "quota.", "limit", [("bandwidth", core.dropped_bandwidth), ("byte_quota", core.dropped_quota)])


#: the client's path kinds (natsalon.client.punch: LAN, DIRECT; relayed paths)
PATH_KINDS = ("lan", "direct", "relay")


class ClientCollector(_Base):
    """``twistd natclient``'s metrics, read from its
    :class:`natsalon.client.service.ClientService` (and the events it
    reports to :class:`EventCounts`)."""

    prefix = "natclient"

    def __init__(self, client_service, events: "EventCounts", clock=None) -> None:
        super().__init__(clock if clock is not None else client_service.reactor)
        self.svc = client_service
        self.events = events

    def collect(self) -> Iterator[Metric]:
        from natsalon.client.session import Phase

        yield from self._common()
        client = self.svc.client
        core = client.core if client is not None else None
        conn = client.connection if client is not None else None
        phase = core.phase if core is not None else (Phase.STOPPED if not self.svc.running else Phase.IDLE)
        yield _labelled(GaugeMetricFamily, "natclient_state", "The client machine's state (1 for the current one).",
                        "state", [(p.value, 1 if p is phase else 0) for p in Phase])
        path = conn.path if conn is not None else None
        kind = path.kind if path is not None else None
        yield _labelled(GaugeMetricFamily, "natclient_path", "The kind of the path to the peer (1 for the current "
                        "one; all 0 without a path).", "kind", [(k, 1 if k == kind else 0) for k in PATH_KINDS])
        if path is not None:
            yield GaugeMetricFamily("natclient_rtt_seconds", "Round-trip time of the path, measured while punching.",
                                    value=path.rtt)
            puncher = conn.puncher
            if puncher is not None:
                heard = puncher.last_heard(path.address)
                if heard >= 0:
                    yield GaugeMetricFamily("natclient_peer_silence_seconds", "Seconds since the peer was last heard "
                                            "on the path.", value=max(0.0, self.clock.seconds() - heard))
        yield _labelled(CounterMetricFamily, "natclient_frames", "Payload frames to and from the peer.", "direction",
                        [("sent", conn.sent if conn else 0), ("received", conn.received if conn else 0)])
        yield _labelled(CounterMetricFamily, "natclient_payload_bytes", "Payload bytes to and from the peer.",
                        "direction", [("sent", getattr(conn, "sent_bytes", 0) if conn else 0),
                                      ("received", getattr(conn, "received_bytes", 0) if conn else 0)])
        yield _labelled(CounterMetricFamily, "natclient_frames_rejected", "Frames from the peer rejected, by reason.",
                        "reason", [("auth_or_source", conn.rejected if conn else 0)])
        fwd = getattr(self.svc.forward_port, "protocol", None)  # None: no --forward (zeros)
        yield _labelled(CounterMetricFamily, "natclient_forwarded_datagrams", "Datagrams the forward port carried.",
                        "direction", [("to_peer", getattr(fwd, "to_peer", 0)), ("from_peer", getattr(fwd, "from_peer", 0))])
        yield _counter("natclient_forward_dropped", "Datagrams the forward port dropped (no path, no local receiver).",
                       getattr(fwd, "dropped", 0))
        connects = core.connects if core is not None else 0
        yield _counter("natclient_connects", "Paths verified (the first connect and every re-punch).", connects)
        yield _counter("natclient_repunches", "Paths verified again after a lost path or a re-join.",
                       max(0, connects - 1))
        yield _counter("natclient_rejoins", "Joins after the first (re-joins after a failure or a lost path).",
                       max(0, self.events.counts.get("joined", 0) - 1))
        yield _counter("natclient_upgrades", "Relayed paths moved to a direct path (upgraded events).",
                       self.events.counts.get("upgraded", 0))
        yield GaugeMetricFamily("natclient_failures_in_a_row", "Failed attempts since the last connect.",
                                value=core.failures if core is not None else 0)
        yield _labelled(CounterMetricFamily, "natclient_events", "The client's events, by name.", "event",
                        sorted(self.events.counts.items()))


class EventCounts:
    """Counts the client's events by name (a bounded set: joined, waiting,
    introduced, punching, connected, path-lost, peer-left, ...)."""

    #: names beyond this many are counted as "other" (label sets stay bounded)
    LIMIT = 64

    def __init__(self) -> None:
        self.counts: Dict[str, int] = {}

    def __call__(self, event: dict) -> None:
        name = str(event.get("event", "other"))
        if name not in self.counts and len(self.counts) >= self.LIMIT:
            name = "other"
        self.counts[name] = self.counts.get(name, 0) + 1

