"""Punching strategies for hard NATs: the pure decision table
(:mod:`.table`), the join-time knowledge of our own NAT (:mod:`.knowledge`)
and what carries a plan out (:mod:`.runner`).  :class:`HardNat` is what the
client machine's core holds of it."""

from typing import Callable, NamedTuple

from natsalon.client.strategy.knowledge import NatKnowledge
from natsalon.client.strategy.runner import Runner, Spray, StrategySettings, Sweep
from natsalon.client.strategy.table import (
    TABLE, NatClass, Plan, Role, Strategy, classify, decide, predicted_ports,
)
from natsalon.client.strategy.timing import SalonRtt, fire_wait, first_try


def coordinated_wait(plan: Plan, intro, kit: "HardNat | None") -> float:
    """Seconds between our introduction ``intro`` and the first shot of
    ``plan``: predicted and birthday fire when both sides have their
    introduction (:func:`.timing.fire_wait`), everything else at once."""
    if kit is None or not kit.settings.coordinate or plan.strategy not in (Strategy.PREDICTED, Strategy.BIRTHDAY):
        return 0.0
    return fire_wait(intro.salon_rtt, intro.peer.salon_rtt, kit.settings.max_wait)


class HardNat(NamedTuple):
    """The client's hard-NAT kit: its NAT knowledge (the join-time probe),
    a factory of extra-socket pools, and the strategies' settings."""

    knowledge: NatKnowledge
    pool: Callable[[], object]
    settings: StrategySettings = StrategySettings()


__all__ = ["HardNat", "SalonRtt", "coordinated_wait", "fire_wait", "first_try", "NatKnowledge", "Runner", "Spray", "Sweep", "StrategySettings", "TABLE", "NatClass", "Plan",
           "Role", "Strategy", "classify", "decide", "predicted_ports"]
