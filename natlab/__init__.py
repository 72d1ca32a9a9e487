"""natlab: real Linux NATs of every behaviour, built in network namespaces for the tests.

    from natlab import Lab, Nat
    with Lab() as lab:
        site = lab.add_site("a", Nat.FULL_CONE)
        site.hosts[0].run(["ip", "addr"])

Not part of the natsalon wheel; needs root, iproute2 and nftables.
"""
from __future__ import annotations

from .lab import (DOC_NETS, SERVER_IPS, SERVER_IPS6, THIRD_IP, THIRD_IP6, V6, Host, Lab, LabError, Nat, Site,
                  cleanup_stale, list_netns, nft_ruleset, nft_ruleset6, unavailable_reason)
from .probe import Probe, ProbeError, PSock

__all__ = ["Lab", "Nat", "V6", "Host", "Site", "LabError", "Probe", "PSock", "ProbeError",
           "cleanup_stale", "list_netns", "nft_ruleset", "unavailable_reason",
           "DOC_NETS", "SERVER_IPS", "THIRD_IP", "SERVER_IPS6", "THIRD_IP6", "nft_ruleset6"]
