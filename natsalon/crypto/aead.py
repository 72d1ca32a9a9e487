"""Payload frames on the punched path: ChaCha20-Poly1305 with a per-direction
counter nonce and a sliding replay window, or plain frames (``--no-encrypt``).

Frame layout (first byte 0xD0/0xD1: its top two bits are 11, so a frame is
never taken for STUN, whose first two bits are 00)::

    0xD0 | counter (8 bytes, big endian) | ciphertext + 16-byte tag
    0xD1 | payload                                    (plain)

The AEAD nonce is ``role (4 bytes) | counter (8 bytes)``: the two sides of a
session use disjoint halves, and session keys are fresh per session
(:func:`natsalon.crypto.secret.session_keys`), so a nonce is never reused.  The
header (type byte and counter) is the associated data.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

SEALED = 0xD0
PLAIN = 0xD1
OVERHEAD = 1 + 8 + 16
_Q = struct.Struct("!Q")


class FrameRejected(ValueError):
    """A frame that fails authentication, is replayed, or is malformed."""


class ReplayWindow:
    """Accepts each counter once; counters more than ``size`` behind the
    highest seen are refused (RFC 6479-style sliding bitmap)."""

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self.highest = -1
        self.bits = 0  # bit i: counter highest - i seen

    def check(self, n: int) -> bool:
        if n > self.highest:
            return True
        back = self.highest - n
        return back < self.size and not (self.bits >> back) & 1

    def commit(self, n: int) -> None:
        if n > self.highest:
            shift = n - self.highest
            self.bits = ((self.bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.highest = n
        else:
            self.bits |= 1 << (self.highest - n)


class Sealer:
    def __init__(self, key: bytes, role: int) -> None:
        self.aead = ChaCha20Poly1305(key)
        self.prefix = struct.pack("!I", role)
        self.counter = 0

    def seal(self, payload: bytes) -> bytes:
        n = self.counter
        self.counter += 1
        header = bytes((SEALED,)) + _Q.pack(n)
        return header + self.aead.encrypt(self.prefix + _Q.pack(n), payload, header)


class Opener:
    def __init__(self, key: bytes, peer_role: int, window: int = 2048) -> None:
        self.aead = ChaCha20Poly1305(key)
        self.prefix = struct.pack("!I", peer_role)
        self.window = ReplayWindow(window)

    def open(self, frame: bytes) -> bytes:
        if len(frame) < OVERHEAD or frame[0] != SEALED:
            raise FrameRejected("not a sealed frame")
        n = _Q.unpack_from(frame, 1)[0]
        if not self.window.check(n):
            raise FrameRejected("replayed or too old (counter %d)" % n)
        try:
            payload = self.aead.decrypt(self.prefix + frame[1:9], frame[9:], frame[:9])
        except InvalidTag:
            raise FrameRejected("authentication failed") from None
        self.window.commit(n)
        return payload


class PlainCodec:
    """The ``--no-encrypt`` framing (for traffic that is already encrypted)."""

    @staticmethod
    def seal(payload: bytes) -> bytes:
        return bytes((PLAIN,)) + payload

    @staticmethod
    def open(frame: bytes) -> bytes:
        if not frame or frame[0] != PLAIN:
            raise FrameRejected("not a plain frame")
        return frame[1:]


def is_frame(data: bytes) -> bool:
    return bool(data) and data[0] in (SEALED, PLAIN)
