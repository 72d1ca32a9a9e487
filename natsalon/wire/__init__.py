"""The salon's own messages, sans-IO: JOIN between a client and the
introducer (:mod:`natsalon.wire.join`), PUNCH between the peers
(:mod:`natsalon.wire.punch`).  Both are STUN messages of methods the
salon defines (:class:`natsalon.stun.Method`), built and parsed here with
no sockets and no clock."""

from natsalon.wire.common import (
    FLAG_CONNECTED, FLAG_LEAVING, JOIN_FLAG_PLAIN, LEAVE_HASH_SIZE, LEAVE_TOKEN_SIZE, MAX_CANDIDATES, NONCE_SIZE,
    ROOM_ID_SIZE, Status, WireError, pack_candidates, unpack_candidates,
)
from natsalon.wire.join import (
    JOIN_FLAG_UPDATE, Answer, JoinAnswer, JoinRequest, LeaveRequest, PeerJoin, cookie_response, introduction, join_error,
    join_request, leave_hash, leave_request, leave_response, new_leave_token, parse_join_answer,
    parse_join_request, parse_leave_request, verify_peer_join, waiting_response,
)
from natsalon.wire.nat import NS_NAT, PENDING_NAT, UNKNOWN_NAT, NatSummary, pack_nat, unpack_nat
from natsalon.wire.punch import Punch, parse_punch, punch_request, punch_response

__all__ = [
    "FLAG_LEAVING", "JOIN_FLAG_PLAIN", "LEAVE_HASH_SIZE", "LEAVE_TOKEN_SIZE", "LeaveRequest", "leave_hash",
    "leave_request", "leave_response", "new_leave_token", "parse_leave_request",
    "FLAG_CONNECTED", "MAX_CANDIDATES", "NONCE_SIZE", "ROOM_ID_SIZE", "Status", "WireError", "pack_candidates",
    "unpack_candidates", "Answer", "JoinAnswer", "JoinRequest", "PeerJoin", "cookie_response", "introduction",
    "join_error", "join_request", "parse_join_answer", "parse_join_request", "verify_peer_join",
    "waiting_response", "JOIN_FLAG_UPDATE", "PENDING_NAT", "NS_NAT", "UNKNOWN_NAT", "NatSummary", "pack_nat", "unpack_nat", "Punch", "parse_punch", "punch_request", "punch_response",
]
