"""The one error the STUN decoder raises."""

from __future__ import annotations

from typing import Optional


class StunDecodeError(ValueError):
    """A datagram is not a valid STUN message.

    ``reason`` says precisely why.  When the 20-byte header itself was valid
    (so the sender can be answered with 400 Bad Request), ``header`` is the
    tuple ``(method, cls, transaction_id, classic)``; otherwise it is None.
    """

    def __init__(self, reason: str, header: Optional[tuple] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.header = header
