"""What the salon's messages share: sizes, flags, the error type, and the
packed list of candidate endpoints."""

from __future__ import annotations

import enum
import socket
import struct
from typing import Iterator, Sequence, Tuple

from natsalon.stun import Address

MAX_CANDIDATES = 8
ROOM_ID_SIZE = 16
NONCE_SIZE = 16
LEAVE_TOKEN_SIZE = 16
LEAVE_HASH_SIZE = 16
#: PUNCH flags (NS-STATUS of a probe or its answer)
FLAG_CONNECTED = 0x1  #: the sender has a verified path
FLAG_LEAVING = 0x2  #: the sender ends the session now (a clean exit)
#: JOIN flags (NS-STATUS of a JOIN request, checked by the peer)
JOIN_FLAG_PLAIN = 0x1  #: the sender does not encrypt its payload (--no-encrypt)


class WireError(ValueError):
    """A salon or punch message we reject, with the precise reason."""


class Status(enum.IntEnum):
    WAITING = 1
    INTRODUCED = 2


_FAMILY_PORT = struct.Struct("!BH")


def pack_candidates(cands: Sequence[Address]) -> bytes:
    if len(cands) > MAX_CANDIDATES:
        raise WireError("%d candidates (at most %d)" % (len(cands), MAX_CANDIDATES))
    out = []
    for host, port in cands:
        if ":" in host:
            out.append(struct.pack("!BH", 6, port) + socket.inet_pton(socket.AF_INET6, host))
        else:
            out.append(struct.pack("!BH", 4, port) + socket.inet_pton(socket.AF_INET, host))
    return b"".join(out)


def _candidate_spans(raw: bytes) -> Iterator[Tuple[int, int, int]]:
    """Walk packed candidates: ``(address family, port, offset)`` of each,
    its address the 4 or 16 bytes at ``offset``; raises :class:`WireError`
    at the first fault (the one walk behind both readers below)."""
    pos, count, end = 0, 0, len(raw)
    while pos < end:
        if pos + 3 > end:
            raise WireError("truncated candidate")
        fam, port = _FAMILY_PORT.unpack_from(raw, pos)
        pos += 3
        if fam == 4:
            n, af = 4, socket.AF_INET
        elif fam == 6:
            n, af = 16, socket.AF_INET6
        else:
            raise WireError("candidate of unknown family %d" % fam)
        if pos + n > end:
            raise WireError("truncated candidate address")
        count += 1
        if count > MAX_CANDIDATES:
            raise WireError("more than %d candidates" % MAX_CANDIDATES)
        yield af, port, pos
        pos += n


def unpack_candidates(raw: bytes) -> Tuple[Address, ...]:
    return tuple(Address(socket.inet_ntop(af, raw[at:at + (4 if af == socket.AF_INET else 16)]), port)
                 for af, port, at in _candidate_spans(raw))


def check_candidates(raw: bytes) -> int:
    """How many candidates ``raw`` packs; raises :class:`WireError` exactly
    where :func:`unpack_candidates` does, with the same reason, without
    making the addresses (the salon only hands the JOIN on)."""
    return sum(1 for _ in _candidate_spans(raw))
