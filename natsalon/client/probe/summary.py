"""The compact summary a client puts in its JOIN (:class:`natsalon.wire.NatSummary`),
from what a probe run has found so far: mapping, filtering, port
allocation and the highest mapped port seen.  Pure: no sockets, no clock.

It may be taken before the run is over (:func:`~.measure.probe`'s
``on_early``): a filtering test whose answer has not come yet counts as
unknown, except that a change-port answer already proves the filter is
at most address-dependent (``address-dependent`` is then reported, which
the strategies treat like endpoint-independent filtering)."""

from __future__ import annotations

from typing import Optional

from natsalon.client.probe import classify
from natsalon.client.probe.classify import Allocation, Behaviour
from natsalon.client.probe.findings import Bound, Findings
from natsalon.wire.nat import AD, APD, EI, UNKNOWN, NatSummary


def summarize(found: Findings, final: bool = False) -> NatSummary:
    """The summary of ``found``; ``final``: every test is over (a missing
    filtering answer then means "not received")."""
    r = found.results
    if not any(isinstance(v, Bound) for v in r.values()):
        return NatSummary()
    mapping = classify.mapping_behaviour(r.get("m1"), r.get("m2"), r.get("m3"), r.get("m4")).behaviour
    alloc = classify.port_allocation(found.samples)
    last = classify.newest_port(found.samples)
    return NatSummary(mapping is not Behaviour.UNKNOWN, mapping.value, _filtering(r.get("F1"), r.get("F2"), final),
                      alloc.kind.value if alloc.kind is not Allocation.UNKNOWN else UNKNOWN, alloc.step, last)


def _filtering(change_both: Optional[bool], change_port: Optional[bool], final: bool) -> str:
    if change_both:
        return EI
    if change_port:
        return AD  # at most address-dependent (exactly that once change-IP is known not to pass)
    if change_both is False and change_port is False:
        return APD
    return classify.filtering_behaviour(change_both, change_port).behaviour.value if final else UNKNOWN
