"""natlab: real Linux NATs of every behaviour, built in network namespaces for the tests.

    from natlab import Lab, Nat
    with Lab() as lab:
        site = lab.add_site("a", Nat.FULL_CONE)
        site.hosts[0].run(["ip", "addr"])

Not part of the natsalon wheel; needs root, iproute2 and nftables.
"""
from __future__ import annotations

from .lab import (DOC_NETS, SERVER_IPS, THIRD_IP, Host, Lab, LabError, Nat, Site,
                  cleanup_stale, list_netns, nft_ruleset, unavailable_reason)
from .probe import Probe, ProbeError, PSock

__all__ = ["Lab", "Nat", "Host", "Site", "LabError", "Probe", "PSock", "ProbeError",
           "cleanup_stale", "list_netns", "nft_ruleset", "unavailable_reason",
           "DOC_NETS", "SERVER_IPS", "THIRD_IP"]
