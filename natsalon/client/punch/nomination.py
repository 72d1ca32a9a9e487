"""One path for both sides: the controlling side nominates, the other follows.

Each side punches every pair and measures its own RTTs, so on their own
the two sides may settle on different paths when several verify (IPv6 and
IPv4 with close RTTs: one side keeps IPv6, the other takes IPv4).  As ICE
does with its controlling agent, one side decides:

- the side whose nonce is the lower (session role 0; both sides know it
  from the introduction) is *controlling*: it chooses by the puncher's
  preference (lower RTT, IPv6 on a tie) and says which path it chose: once
  it keeps a path alive, its probes and answers on the selected pair carry
  :data:`FLAG_NOMINATED`;
- the other side is *controlled*: a verified pair the peer nominated is
  its best pair (while punching it takes it at once); otherwise it chooses
  as before, by its own measurements and at once, and once connected a
  nomination of another verified pair moves its path there
  (:attr:`Puncher.on_moved <natsalon.client.punch.Puncher.on_moved>`), half
  a round trip after the controlling side chose.  It does not wait for the
  nomination before choosing: both sides verify at about the same moment,
  so waiting would cost the controlled side half a round trip on every
  connection, where the sides disagree on a few (the controlled side's
  frames on the other path are taken meanwhile: an encrypted frame from
  any source, a plain one from any verified pair, see
  :meth:`Connection.frame_received <natsalon.client.connection.Connection.frame_received>`).

Relayed pairs stay out of it: the relay race and the upgrade to direct
have their own rules, so a relayed pair's nomination is not followed, nor
is any while the selected path is relayed.

Pure data, no clock: the puncher feeds it (:meth:`Nomination.heard`) and
asks it (:meth:`chosen`, :meth:`flag`).
"""

from __future__ import annotations

from typing import Optional

from natsalon.client.punch.candidates import CandidatePair

#: PUNCH flag (NS-STATUS, beside :data:`~natsalon.wire.FLAG_CONNECTED` 0x1
#: and :data:`~natsalon.wire.FLAG_LEAVING` 0x2): the controlling side's
#: message on the pair it selected.  An older peer ignores it.
FLAG_NOMINATED = 0x4


class Nomination:
    """What the controlling side said, as the controlled side knows it."""

    def __init__(self, controlling: bool) -> None:
        self.controlling = controlling
        #: the (direct) pair the peer's last nominating message came through
        self.pair: Optional[CandidatePair] = None

    def heard(self, pair: CandidatePair, flags: int) -> None:
        """A valid message of the peer came through ``pair`` with ``flags``."""
        if not self.controlling and flags & FLAG_NOMINATED and not pair.relayed:
            self.pair = pair

    def chosen(self) -> Optional[CandidatePair]:
        """The nominated pair once it verified here too (controlled side)."""
        return self.pair if self.pair is not None and self.pair.verified else None

    def flag(self, pair: Optional[CandidatePair], selected: Optional[CandidatePair]) -> int:
        """The flag our message through ``pair`` carries (the controlling
        side's, on its selected pair)."""
        return FLAG_NOMINATED if self.controlling and pair is not None and pair is selected else 0
