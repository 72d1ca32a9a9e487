"""Hole punching: probe every candidate of the peer, keep the paths that
verify in both directions, pick the best.

:class:`Puncher` holds no socket: it is given ``send(data, addr)`` (its
default local socket) and a clock, and is fed every datagram that looks like
STUN through :meth:`Puncher.datagram`.  Three small pieces of state:

**Candidates** (:mod:`.candidates`).  A candidate is an address of the peer
and where we got it (:class:`CandidateKind`):

- ``host``: an address of the peer's own interfaces (its LAN), from the salon;
- ``srflx``: the peer's public endpoint as the salon saw it;
- ``prflx`` (peer-reflexive): the source of a valid probe of the peer that
  we did not know (its NAT gave that flow another port);
- ``predicted``: guessed ports of the peer's NAT (port prediction and
  birthday punching, :mod:`natsalon.client.strategy`): added as candidates,
  or probed with :meth:`Puncher.probe` and made candidates by a valid
  response;
- ``relay``: the peer's relayed address (its TURN allocation), probed
  from our own socket; our own allocation is a local socket instead
  (:class:`LocalSocket` with ``relayed``, see :mod:`natsalon.client.relay`).
  Either way the pair is a relayed path: ``kind`` "relay", ranked last.

Each candidate is probed from a **local socket** (:class:`LocalSocket`, a
send callable; the constructor's ``send`` is the default one).  A *pair* is
(local socket, candidate); a session may use many local sockets, and
:meth:`Puncher.datagram` is told which one a datagram arrived on (default:
the default socket).  Answers leave from the socket the request arrived on,
and a response proves a pair only if it came from the probed address *to*
the socket that sent the probe.  :class:`Path` keeps ``kind`` "lan" for host
candidates and "direct" for the others, and adds ``candidate_kind`` and
``local``.

**Pair states** (:class:`PairState`; the full table is in :mod:`.candidates`):
``WAITING`` (not probed yet) -> ``IN_PROGRESS`` (probed) ->
``SUCCEEDED_ONE_WAY`` (a valid response to our probe came back through it,
*or* a valid probe of the peer came through it; ``one_way`` says which) ->
``VERIFIED`` (both).  ``FAILED``: sending to it raised ``OSError`` (no
route) before it verified; a failed pair is probed no more and delays
nothing, but a later valid message of the peer through it revives it (to
one-way).  A verified pair stays verified.

**Phases** of the puncher (:class:`Phase`; the transition table is in
:mod:`.phases`):

- ``IDLE``: built, not started; a valid datagram is answered and recorded;
- ``PUNCHING`` (``start()``): every ``interval`` seconds a probe goes to every
  scheduled pair, until ``timeout``;
- ``NOMINATED``: a pair verified, but it is not a host pair and host pairs
  are still pending: it waits for them (the LAN grace), probing on, until a
  host pair verifies, the grace runs out, or the timeout comes; then the best
  verified pair is selected;
- ``KEEPING_ALIVE``: a path is selected and start()'s Deferred fired; the
  puncher answers and verifies keepalive probes (the connection's, through
  :meth:`Puncher.probe`), and its probes carry
  :data:`~natsalon.wire.FLAG_CONNECTED` so the peer knows we are done
  (``peer_connected`` says when the peer's carry it);
- ``FAILED`` (the timeout, no verified pair: PunchFailed) and ``STOPPED``
  (``stop()``, or the Deferred cancelled): inert.  Nothing is sent, learnt or
  recorded; a valid message of the peer is still claimed (``datagram()``
  returns True, so the caller does not take it for garbage) and counted in
  ``ignored``.

The schedule's ``tick``, the ``timeout`` and the LAN ``grace`` are calls owned
by the phases that wait on them, cancelled by any transition out.

Rules:

- a probe is a PUNCH request (MESSAGE-INTEGRITY-SHA256 with the session's
  k_punch); the schedule probes every pair that is neither verified, failed
  nor peer-reflexive, all at once;
- a request carries no timestamp, so the same bytes verify from any source:
  the transaction ids of the last ``seen_requests`` (256) requests are kept and a request seen
  before is dropped before anything else (a replay gets no answer and no
  probe);
- a valid request from the peer is answered at once from the same socket
  (that answer is what opens the path for the peer); when it comes from an
  address we did not know, that address becomes a peer-reflexive candidate,
  at most ``max_peer_reflexive`` (4 by default) of them and none once a path is
  selected (requests from other unknown sources are dropped);
- a valid request also triggers a probe back to its source when its pair
  is not verified yet (and, once selected, when we have not probed it for
  ``interval / 2``), so each side ends up with both halves even when the
  other stopped its schedule; peer-reflexive candidates are probed only that
  way, so every packet we send them answers a fresh request of the peer;
- a verified host pair wins at once; a verified other pair waits for a host
  pair while host pairs are pending, twice its RTT (at least 50 ms, at most
  ``lan_grace``); among verified pairs host beats the rest, relay comes last,
  then the lowest RTT wins (smoothed: 0.8 old + 0.2 new); an IPv6 pair
  counts ``V6_TIE`` (5 ms) or ``V6_TIE_SHARE`` (10 %) of its RTT less,
  whichever is more, so IPv6 wins a tie, and a verified IPv4 pair waits the
  same grace while an IPv6 pair is pending (happy eyeballs).  Pairs never
  cross families: the client probes IPv6 candidates from its IPv6 socket
  (:mod:`natsalon.client.families`), and a send to the other family fails
  like a send with no route;
- the two sides end on one path (:mod:`.nomination`): the side of the lower
  nonce (controlling) chooses as above and marks its messages on the path
  it selected; the other takes that pair as soon as it verifies, and once
  connected moves its path to it (``on_moved``) if it chose another.

Peer addresses are logged at debug level only.
"""

from natsalon.client.errors import PunchFailed
from natsalon.client.punch.candidates import (
    DIRECT,
    LAN,
    RELAY,
    Candidate,
    CandidateKind,
    CandidatePair,
    Direction,
    LocalSocket,
    PairEvent,
    PairState,
)
from natsalon.client.punch.phases import Phase, PhaseError, PhaseEvent
from natsalon.client.punch.puncher import _MAX_PEER_REFLEXIVE, Path, Puncher

__all__ = ["Puncher", "Path", "LAN", "DIRECT", "RELAY", "PunchFailed", "Phase", "PhaseEvent", "PhaseError",
           "PairState", "PairEvent", "Direction", "CandidateKind", "Candidate", "CandidatePair", "LocalSocket"]
