"""The typed failures of :func:`natsalon.connect` and the client machine."""

from __future__ import annotations


class ConnectFailed(Exception):
    """Base of the typed failures of :func:`connect`."""


class SalonUnreachable(ConnectFailed):
    """The salon did not answer our JOIN."""


class IntroductionRefused(ConnectFailed):
    """The salon refused the join (room full, too many joins, salon busy)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__("salon refused the join: %d %s" % (code, reason))
        self.code = code


class PeerNotVerified(ConnectFailed):
    """The salon introduced a peer that does not know the secret."""


class ConnectTimeout(ConnectFailed):
    """The overall timeout ran out."""


class PunchFailed(ConnectFailed):
    """No path verified in both directions before the punch timeout."""
