"""From measurements to verdicts: pure functions, no sockets, no clock.

The prober (:mod:`natsalon.client.probe.measure`) measures; this module decides.  Every
verdict is either measured or ``unknown``: nothing is guessed.

Mapping (RFC 5780 section 4.3), from the mapped addresses one socket gets
from the server's primary address ``IP1:P1`` and from ``IP2:P1``,
``IP2:P2`` and ``IP1:P2``:

==========================================  ===============================
measured                                    mapping
==========================================  ===============================
m(IP2:P1) == m(IP1:P1)                      endpoint-independent
m(IP2:P1) != m(IP1:P1), m(IP2:P2) == m(IP2:P1)  address-dependent
m(IP2:P1) != m(IP1:P1), m(IP2:P2) != m(IP2:P1)  address-and-port-dependent
one-IP server: m(IP1:P2) != m(IP1:P1)       address-and-port-dependent
one-IP server: m(IP1:P2) == m(IP1:P1)       unknown (endpoint-independent
                                            or address-dependent)
==========================================  ===============================

Filtering (RFC 5780 section 4.4), from whether a socket whose only binding
goes to ``IP1:P1`` receives the answer to CHANGE-REQUEST change-IP+port
(sent from ``IP2:P2``) and to change-port (sent from ``IP1:P2``):

==================  ===============  ===============================
change IP+port      change port      filtering
==================  ===============  ===============================
received            (any)            endpoint-independent
not received        received         address-dependent
not received        not received     address-and-port-dependent
not received        not tested       unknown
not tested          not received     address-and-port-dependent
not tested          received         unknown (endpoint-independent
                                     or address-dependent)
not tested          not tested       unknown
==================  ===============  ===============================

The classic (RFC 3489) type: :data:`CLASSIC_TABLE`, first matching row wins.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import List, NamedTuple, Optional, Sequence, Tuple

from natsalon.stun import Address


class Behaviour(str, enum.Enum):
    """RFC 4787 / RFC 5780 mapping or filtering behaviour."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    UNKNOWN = "unknown"


class Classic(str, enum.Enum):
    """RFC 3489 NAT type."""

    OPEN = "open"
    FULL_CONE = "full-cone"
    RESTRICTED_CONE = "restricted-cone"
    PORT_RESTRICTED_CONE = "port-restricted-cone"
    SYMMETRIC = "symmetric"
    SYMMETRIC_UDP_FIREWALL = "symmetric-udp-firewall"
    UDP_BLOCKED = "udp-blocked"
    UNKNOWN = "unknown"


class Allocation(str, enum.Enum):
    PRESERVING = "preserving"
    SEQUENTIAL = "sequential"
    RANDOM = "random"
    UNKNOWN = "unknown"


EIM = EIF = Behaviour.ENDPOINT_INDEPENDENT
ADM = ADF = Behaviour.ADDRESS_DEPENDENT
APDM = APDF = Behaviour.ADDRESS_AND_PORT_DEPENDENT
UNKNOWN = Behaviour.UNKNOWN

#: matches any value in :data:`CLASSIC_TABLE`
ANY = object()

#: ``(answered, nat, mapping, filtering) -> classic``; the first row that
#: matches wins.  ``answered``: the server answered at all; ``nat``: the
#: mapped address is not one of this host's interface addresses.
CLASSIC_TABLE: Tuple[Tuple[object, object, object, object, Classic], ...] = (
    # answered  nat    mapping  filtering
    (False,     ANY,   ANY,     ANY,      Classic.UDP_BLOCKED),
    (True,      False, ANY,     EIF,      Classic.OPEN),
    (True,      False, ANY,     ADF,      Classic.SYMMETRIC_UDP_FIREWALL),
    (True,      False, ANY,     APDF,     Classic.SYMMETRIC_UDP_FIREWALL),
    (True,      True,  EIM,     EIF,      Classic.FULL_CONE),
    (True,      True,  EIM,     ADF,      Classic.RESTRICTED_CONE),
    (True,      True,  EIM,     APDF,     Classic.PORT_RESTRICTED_CONE),
    (True,      True,  ADM,     ANY,      Classic.SYMMETRIC),
    (True,      True,  APDM,    ANY,      Classic.SYMMETRIC),
    (ANY,       ANY,   ANY,     ANY,      Classic.UNKNOWN),
)


def classic_type(answered: bool, nat: Optional[bool], mapping: Behaviour,
                 filtering: Behaviour) -> Classic:
    """The classic type by :data:`CLASSIC_TABLE`."""
    values = (answered, nat, mapping, filtering)
    for row in CLASSIC_TABLE:
        if all(want is ANY or want == got for want, got in zip(row[:4], values)):
            return row[4]
    raise AssertionError("CLASSIC_TABLE has a catch-all row")  # pragma: no cover


def is_nat(mapped: Address, local_port: int, local_ips: Sequence[str]) -> bool:
    """True when the mapped address is not this socket's own address: its IP
    is none of this host's interface addresses, or the port was changed
    (IPv6 too: NAT66, or NPTv6's prefix translation)."""
    return _ip(mapped.host) not in {_ip(ip) for ip in local_ips} or mapped.port != local_port


def _ip(text: str):
    """An address in a comparable form (IPv6 text has many spellings)."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text


class Verdict(NamedTuple):
    behaviour: Behaviour
    notes: Tuple[str, ...] = ()


def mapping_behaviour(primary: Optional[Address], alt_ip: Optional[Address] = None,
                      alt_both: Optional[Address] = None,
                      alt_port: Optional[Address] = None) -> Verdict:
    """Mapping from the mapped addresses one socket got from ``IP1:P1``
    (``primary``), ``IP2:P1`` (``alt_ip``), ``IP2:P2`` (``alt_both``) and
    ``IP1:P2`` (``alt_port``); None means not tested or not answered."""
    if primary is None:
        return Verdict(UNKNOWN, ("no mapped address from the primary address",))
    notes: List[str] = []
    port_dependent = None if alt_port is None else alt_port != primary
    if alt_ip is not None:
        if alt_ip == primary:
            verdict = EIM
        elif alt_both is None:
            return Verdict(UNKNOWN, ("mapping changes with the destination IP, but IP2:P2 did not answer:"
                                     " address-dependent or address-and-port-dependent",))
        elif alt_both == alt_ip:
            verdict = ADM
        else:
            verdict = APDM
        if port_dependent is not None and port_dependent != (verdict is APDM):
            notes.append("inconsistent mapping: IP1:P2 gave %s, IP1:P1 gave %s, but the IP tests say %s"
                         % (alt_port, primary, verdict.value))
        return Verdict(verdict, tuple(notes))
    if port_dependent is True:
        return Verdict(APDM, ("mapping changes with the destination port (no alternate IP tested)",))
    if port_dependent is False:
        return Verdict(UNKNOWN, ("mapping kept towards another port of the same IP: endpoint-independent or"
                                 " address-dependent; telling them apart needs a server with two IPs",))
    return Verdict(UNKNOWN, ("no alternate server address answered",))


def filtering_behaviour(change_both: Optional[bool], change_port: Optional[bool]) -> Verdict:
    """Filtering from whether the change-IP+port and change-port answers
    arrived (True/False) or could not be tested (None)."""
    if change_both is True:
        notes = ()
        if change_port is False:
            notes = ("inconsistent filtering: the change-IP+port answer came through,"
                     " the change-port answer did not",)
        return Verdict(EIF, notes)
    if change_both is False:
        if change_port is True:
            return Verdict(ADF)
        if change_port is False:
            return Verdict(APDF)
        return Verdict(UNKNOWN, ("change-port test not possible: address-dependent or"
                                 " address-and-port-dependent",))
    if change_port is False:
        return Verdict(APDF, ("change-IP test not possible, but the change-port answer was filtered",))
    if change_port is True:
        return Verdict(UNKNOWN, ("change-IP test not possible: endpoint-independent or address-dependent;"
                                 " telling them apart needs a server with two IPs",))
    return Verdict(UNKNOWN, ("no filtering test possible",))


class PortAllocation(NamedTuple):
    kind: Allocation
    step: Optional[int] = None


#: mapped ports of distinct flows spread at most this much per flow on
#: average count as sequential (other flows through the NAT take ports in
#: between); random allocation over thousands of ports is far wider.
SEQUENTIAL_MAX_SPREAD = 16


def port_allocation(samples: Sequence[Tuple[int, int]]) -> PortAllocation:
    """``samples``: ``(local_port, mapped_port)`` of distinct NAT bindings
    (fresh sockets or destinations).  Preserving: every mapped port is the
    local one.  Sequential: the distinct mapped ports lie close together;
    the step is the smallest positive gap between them; also when they form
    two such runs (the allocator wrapped around its range while we sampled).
    Random otherwise.
    Fewer than two samples, or fewer than three distinct mapped ports when
    not preserving: unknown."""
    if len(samples) < 2:
        return PortAllocation(Allocation.UNKNOWN)
    if all(local == mapped for local, mapped in samples):
        return PortAllocation(Allocation.PRESERVING)
    ports = sorted({mapped for _, mapped in samples})
    if len(ports) < 3:
        return PortAllocation(Allocation.UNKNOWN)
    gaps = [b - a for a, b in zip(ports, ports[1:])]
    if _tight(ports):
        return PortAllocation(Allocation.SEQUENTIAL, min(gaps))
    low, high = _split(ports)
    if len(ports) >= 4 and _tight(low) and _tight(high):
        # the allocator wrapped from the top of its range to the bottom
        # while we sampled: two tight runs (a random allocator scatters)
        inner = [b - a for run in (low, high) for a, b in zip(run, run[1:])]
        return PortAllocation(Allocation.SEQUENTIAL, min(inner) if inner else 1)
    return PortAllocation(Allocation.RANDOM)


def newest_port(samples: Sequence[Tuple[int, int]]) -> Optional[int]:
    """The mapped port a sequential allocator gave last: the highest one,
    or, when it wrapped while we sampled (two tight runs), the highest of
    the low run."""
    ports = sorted({mapped for _, mapped in samples})
    if not ports:
        return None
    if len(ports) >= 4 and not _tight(ports):
        low, high = _split(ports)
        if _tight(low) and _tight(high):
            return low[-1]
    return ports[-1]


def _tight(ports: Sequence[int]) -> bool:
    return ports[-1] - ports[0] <= SEQUENTIAL_MAX_SPREAD * max(1, len(ports) - 1)


def _split(ports: Sequence[int]) -> Tuple[Sequence[int], Sequence[int]]:
    """``ports`` (sorted) cut at their widest gap."""
    i = max(range(1, len(ports)), key=lambda k: ports[k] - ports[k - 1])
    return ports[:i], ports[i:]
