"""Which salon a client talks to, when it may talk to several.

An operator may run several salons sharing one set of rooms (``--rooms
redis://...``): the client is given them as ``--server a,b`` or as a name
with several addresses.  :class:`Salons` is the choice, sans-IO (``now``
passed in): the list, the one in use, and what to do when it fails (no
answer to a JOIN, an ICMP port unreachable, a 503 retry later).

A salon that failed rests for ``rest`` seconds: :meth:`Salons.failed`
moves to the next salon in the list that is not resting, or says there is
none (None), so the caller gives up this attempt and backs off.  It then
starts its next attempt at the salon that failed longest ago.  A salon
that answers is cleared at once (:meth:`Salons.answered`).  With one salon
:meth:`Salons.failed` is always None: the behaviour of a single
``--server``.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

Server = Tuple[str, int]

#: seconds a salon that failed is passed over while another is available
REST = 30.0


class Salons:
    """The salons, in order of preference, and the one in use (:attr:`current`)."""

    def __init__(self, servers: Iterable[Server], rest: float = REST) -> None:
        self.servers: Tuple[Server, ...] = tuple(dict.fromkeys((host, int(port)) for host, port in servers))
        if not self.servers:
            raise ValueError("no salon given")
        self.rest = rest
        self._index = 0
        self._failed: Dict[Server, float] = {}  #: salon -> when it last failed

    def __len__(self) -> int:
        return len(self.servers)

    def __repr__(self) -> str:
        return "<Salons %s, using %s:%d>" % (", ".join("%s:%d" % s for s in self.servers), *self.current)

    @property
    def current(self) -> Server:
        return self.servers[self._index]

    def resting(self, server: Server, now: float) -> bool:
        at = self._failed.get(server)
        return at is not None and now - at < self.rest

    def failed(self, now: float) -> Optional[Server]:
        """The current salon failed at ``now``: the next one not resting
        becomes current and is returned; None when every other salon is
        resting (the current one is then the one that failed longest ago,
        where the next attempt starts)."""
        self._failed[self.current] = now
        n = len(self.servers)
        for step in range(1, n):
            i = (self._index + step) % n
            if not self.resting(self.servers[i], now):
                self._index = i
                return self.servers[i]
        self._index = min(range(n), key=lambda i: (self._failed.get(self.servers[i], float("-inf")), i))
        return None

    def answered(self) -> None:
        """The current salon answered: it is not resting any more."""
        self._failed.pop(self.current, None)
