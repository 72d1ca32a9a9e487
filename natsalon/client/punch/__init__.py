"""Hole punching: see :mod:`natsalon.client.punch.puncher`."""

from natsalon.client.errors import PunchFailed
from natsalon.client.punch.puncher import _MAX_PEER_REFLEXIVE, DIRECT, LAN, Path, Puncher

__all__ = ["Puncher", "Path", "LAN", "DIRECT", "PunchFailed"]
