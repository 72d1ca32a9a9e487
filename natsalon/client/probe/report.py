"""The probe's result: :class:`ProbeReport` (with :class:`ServerInfo`), its
JSON object and its table, and :func:`build_report`, which turns a run's
:class:`~natsalon.client.probe.findings.Findings` into verdicts by the
tables of :mod:`natsalon.client.probe.classify`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Mapping, Optional, Tuple

from natsalon.client.probe import classify
from natsalon.client.probe.classify import Allocation, Behaviour, Classic, PortAllocation
from natsalon.client.probe.findings import Bound, Findings
from natsalon.client.probe.privacy import is_temporary
from natsalon.client.probe.summary import summarize
from natsalon.stun import Address, Attr, Message
from natsalon.wire.nat import NatSummary


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
    #: what a client's JOIN says of this NAT (:mod:`natsalon.client.probe.summary`)
    summary: Optional[NatSummary] = None
    #: the IP version probed (the server's)
    family: int = 4
    #: IPv6: whether the local address is a temporary (privacy) address
    #: (RFC 8981); None for IPv4 or when it could not be told
    temporary: Optional[bool] = None

    def to_json(self) -> dict:
        """The object ``natsalon probe --json`` prints (keys in the README)."""
        return {
            "family": self.family,
            "nat": self.nat,
            "mapped": _s(self.mapped),
            "local": _s(self.local),
            "classic": self.classic.value,
            "mapping": self.mapping.value,
            "filtering": self.filtering.value,
            "port_allocation": {"kind": self.port_allocation.kind.value, "step": self.port_allocation.step,
                                "samples": [list(s) for s in self.port_samples],
                                "last_port": self.summary.last_port if self.summary is not None else None},
            "hairpinning": self.hairpinning,
            "lifetime_s": self.lifetime_s,
            "temporary_address": self.temporary,
            "server": self.server.to_json(),
            "elapsed_ms": self.elapsed_ms,
            "notes": list(self.notes),
        }


def _s(addr: Optional[Address]) -> Optional[str]:
    return None if addr is None else str(addr)


def build_report(found: Findings, timeout: float, local_ips: Iterable[str], elapsed_ms: int,
                 address_flags: Mapping[str, int] = {}) -> ProbeReport:
    """The verdicts on what the run found; ``timeout`` is the wait that
    bounded "no answer", ``local_ips`` this host's interface addresses,
    ``address_flags`` its IPv6 addresses' flags (:mod:`.privacy`)."""
    r = found.results
    bindings = [v for v in r.values() if isinstance(v, Bound)]
    answered = bool(bindings)
    primary = r.get("R") or (bindings[0] if bindings else None)
    mapped = primary.mapped if primary is not None else None
    local = primary.sock.local if primary is not None else None
    nat = None
    if mapped is not None:
        nat = classify.is_nat(mapped, local.port, set(local_ips) | {local.host})
    mapping, filtering, notes = _behaviours(found, answered, timeout)
    tested = list(found.tested)
    if answered and mapping is not Behaviour.UNKNOWN:
        tested.append("mapping")
    classic = classify.classic_type(answered, nat, mapping, filtering)
    alloc = classify.port_allocation(found.samples) if answered else PortAllocation(Allocation.UNKNOWN)
    lifetime_s = _lifetime(r["lifetime"], notes) if "lifetime" in r else None
    server = _server_info(found, primary.msg if primary is not None else None, tested)
    family = 6 if ":" in found.primary.host else 4
    temporary = is_temporary(local.host, address_flags) if family == 6 and local is not None else None
    return ProbeReport(server, answered, nat, mapped, local, classic, mapping, filtering, alloc,
                       tuple(found.samples), r.get("hairpin"), lifetime_s, elapsed_ms, tuple(notes),
                       summarize(found, final=True), family, temporary)


def _behaviours(found: Findings, answered: bool, timeout: float) -> Tuple[Behaviour, Behaviour, List[str]]:
    """``(mapping, filtering, notes)``: both unknown when nothing answered."""
    if not answered:
        return Behaviour.UNKNOWN, Behaviour.UNKNOWN, [
            "no answer from %s within %.1f s and no error: UDP is blocked (or the server is down"
            " and silent)" % (found.primary, timeout)]
    r = found.results
    mapping = classify.mapping_behaviour(r.get("m1"), r.get("m2"), r.get("m3"), r.get("m4"))
    filtering = classify.filtering_behaviour(r.get("F1"), r.get("F2"))
    return mapping.behaviour, filtering.behaviour, list(mapping.notes) + list(filtering.notes)


def _lifetime(measured: Tuple[Optional[float], Optional[float]], notes: List[str]) -> Optional[float]:
    """The lifetime to report from ``(alive_for, dead_after)``; the bracket goes to ``notes``."""
    alive_for, dead_after = measured
    if dead_after is None and alive_for is not None:
        notes.append("the binding outlived the longest idle interval tried (%.1f s)" % alive_for)
    elif dead_after is not None:
        notes.append("binding lifetime between %s and %.1f s idle" % (
            "0" if alive_for is None else "%.1f" % alive_for, dead_after))
    return None if alive_for is None else round(alive_for, 1)


def _server_info(found: Findings, msg: Optional[Message], tested: List[str]) -> ServerInfo:
    """What the server is, from its first answer (``msg``), and what was tested with it."""
    return ServerInfo(
        address=found.primary,
        response_origin=msg.get(Attr.RESPONSE_ORIGIN) if msg else None,
        other_address=found.other,
        software=msg.get(Attr.SOFTWARE) if msg else None,
        rfc5780=bool(msg and (msg.has(Attr.RESPONSE_ORIGIN) or msg.has(Attr.OTHER_ADDRESS))
                     and not found.rfc5780_off),
        tested=tuple(dict.fromkeys(tested)),
        untested=tuple(found.untested),
        inconsistencies=tuple(found.inconsistencies),
    )


def _yes(value: Optional[bool], untested: str) -> str:
    if value is None:
        return untested
    return "yes" if value else "no"


_TEMPORARY = {True: "temporary (privacy address, RFC 8981)", False: "stable (not a temporary address)",
              None: "unknown (not a known address of this host)"}


def format_table(report: ProbeReport) -> str:
    """The report as the aligned two-column table ``natsalon probe`` prints."""
    j = report.to_json()
    pa = report.port_allocation
    alloc = pa.kind.value + (" (step %d)" % pa.step if pa.step is not None else "")
    if report.summary is not None and report.summary.last_port is not None:
        alloc += ", last mapped port %d" % report.summary.last_port
    nat = _yes(report.nat, "unknown")
    if report.family == 6 and report.nat:
        nat += ", NAT66 or NPTv6"
    if report.mapped is not None:
        nat += " (mapped %s, local %s)" % (report.mapped, report.local)
    server = j["server"]
    srv = server["address"]
    extras = []
    if server["other_address"]:
        extras.append("other address " + server["other_address"])
    extras.append("RFC 5780" if server["rfc5780"] else "no RFC 5780")
    if server["software"]:
        extras.append(server["software"])
    rows = [
        ("family", "IPv%d" % report.family),
        ("NAT", nat),
        ("classic type", report.classic.value),
        ("mapping", report.mapping.value),
        ("filtering", report.filtering.value),
        ("port allocation", alloc),
        ("hairpinning", _yes(report.hairpinning, "not tested (--hairpin)")),
        ("binding lifetime", "not tested (--lifetime)" if "lifetime" not in server["tested"]
         and report.lifetime_s is None else
         ("%s s" % report.lifetime_s if report.lifetime_s is not None else "unknown")),
        ("server", "%s (%s)" % (srv, ", ".join(extras))),
    ]
    if report.family == 6:
        rows.insert(2, ("local address", _TEMPORARY[report.temporary]))
    rows += [("not tested", u) for u in server["untested"]]
    rows += [("inconsistency", i) for i in server["inconsistencies"]]
    rows += [("note", n) for n in report.notes]
    rows.append(("elapsed", "%d ms" % report.elapsed_ms))
    width = max(len(k) for k, _ in rows)
    return "\n".join("%-*s  %s" % (width, k, v) for k, v in rows)
