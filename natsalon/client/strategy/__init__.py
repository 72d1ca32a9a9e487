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


class HardNat(NamedTuple):
    """The client's hard-NAT kit: its NAT knowledge (the join-time probe),
    a factory of extra-socket pools, and the strategies' settings."""

    knowledge: NatKnowledge
    pool: Callable[[], object]
    settings: StrategySettings = StrategySettings()


__all__ = ["HardNat", "NatKnowledge", "Runner", "Spray", "Sweep", "StrategySettings", "TABLE", "NatClass", "Plan",
           "Role", "Strategy", "classify", "decide", "predicted_ports"]
