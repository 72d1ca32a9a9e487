"""A TURN relay (RFC 8656) in the salon.

:mod:`~natsalon.server.turn.core` holds the state and the rules, sans-IO
(``now`` passed in); :mod:`~natsalon.server.turn.auth` the long-term
credentials (coturn's shared secret, stateless nonces);
:mod:`~natsalon.server.turn.peers` the peer-address filter;
:mod:`~natsalon.server.turn.relay` the Twisted glue: the relayed UDP sockets,
the handlers registered on the salon's STUN sockets and the sweep timer.
"""

from natsalon.server.turn.auth import NonceJar, SharedSecretAuth, mint, rest_password
from natsalon.server.turn.core import Allocation, TurnConfig, TurnCore
from natsalon.server.turn.peers import PeerFilter

__all__ = ["Allocation", "NonceJar", "PeerFilter", "SharedSecretAuth", "TurnConfig", "TurnCore", "mint",
           "rest_password"]
