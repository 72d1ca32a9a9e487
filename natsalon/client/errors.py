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


class ModeMismatch(ConnectFailed):
    """One end encrypts its payload and the other does not (``--no-encrypt``)."""

    def __init__(self, peer_plain: bool) -> None:
        if peer_plain:
            text = "the peer does not encrypt (--no-encrypt) and we do: both ends must use the same mode"
        else:
            text = "the peer encrypts and we do not (--no-encrypt): both ends must use the same mode"
        super().__init__(text)
        self.peer_plain = peer_plain


class PeerLeft(ConnectFailed):
    """The peer ended the session (a clean exit: it said goodbye)."""


class ConnectTimeout(ConnectFailed):
    """The overall timeout ran out."""


class PunchFailed(ConnectFailed):
    """No path verified in both directions before the punch timeout."""
