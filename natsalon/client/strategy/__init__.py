"""Punching strategies for hard NATs: the pure decision table
(:mod:`.table`) and what carries a plan out (:mod:`.runner`)."""

from natsalon.client.strategy.table import (
    TABLE, NatClass, Plan, Role, Strategy, classify, decide, predicted_ports,
)

__all__ = ["TABLE", "NatClass", "Plan", "Role", "Strategy", "classify", "decide", "predicted_ports"]
