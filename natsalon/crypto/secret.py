"""Keys from the room secret (scrypt, then HKDF-SHA256).

Two users share a room name and a secret out of band.  The room id and the
JOIN MAC are visible to the salon and on the wire, so they allow offline
guessing of the secret; to make each guess expensive, the secret is first
stretched with scrypt (salt ``natsalon-v1`` followed by the room name,
n=2**14, r=8, p=1, 32 bytes: tens of milliseconds and 16 MiB per guess).
From the stretched secret each client derives, with HKDF-SHA256 (salt
``natsalon-v1``, the room name in ``info``):

- ``room_id`` (16 bytes): the only thing the salon sees; it names the room;
- ``k_join``: MESSAGE-INTEGRITY-SHA256 key of JOIN requests; the salon cannot
  check it, it hands the peer's JOIN to us and we check it end to end;
- ``k_punch``: the base of the punch/keepalive probe key;
- ``k_data``: the base of the payload AEAD key.

Probe and data keys are bound to one session (the two members' random join
nonces) by :func:`session_keys`, so AEAD counters restarting after a
re-punch never reuse a nonce, and probes of an old session do not verify.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Union

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

SALT = b"natsalon-v1"
#: scrypt cost of stretching the secret; both sides must use the same values
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
NONCE_SIZE = 16


class RoomKeys(NamedTuple):
    room_id: bytes
    k_join: bytes
    k_punch: bytes
    k_data: bytes


class SessionKeys(NamedTuple):
    k_punch: bytes  #: probe MAC key of this session
    k_data: bytes  #: ChaCha20-Poly1305 key of this session
    role: int  #: 0 or 1: which half of the nonce space is ours


def _hkdf(key: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def _bytes(value: Union[str, bytes]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def stretch(room: bytes, secret: bytes) -> bytes:
    """scrypt of the secret, salted with ``natsalon-v1`` and the room name."""
    return Scrypt(salt=SALT + room, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(secret)


def derive(room: Union[str, bytes], secret: Union[str, bytes]) -> RoomKeys:
    """The room id and keys for ``room`` and ``secret`` (str or bytes).

    CPU-bound for some tens of milliseconds (scrypt): from the reactor
    thread, call it through ``deferToThread`` (as :func:`natsalon.client.api`
    does)."""
    r = _bytes(room)
    s = _bytes(secret)
    if not s:
        raise ValueError("the secret is empty")
    s = stretch(r, s)
    return RoomKeys(
        _hkdf(s, SALT, b"room-id\x00" + r, 16),
        _hkdf(s, SALT, b"join\x00" + r),
        _hkdf(s, SALT, b"punch\x00" + r),
        _hkdf(s, SALT, b"data\x00" + r),
    )


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def session_keys(keys: RoomKeys, my_nonce: bytes, peer_nonce: bytes) -> SessionKeys:
    """Keys of the session between two join nonces; both sides get the same
    keys and opposite roles (the lower nonce is role 0)."""
    if my_nonce == peer_nonce:
        raise ValueError("a session needs two different nonces")
    lo, hi = sorted((my_nonce, peer_nonce))
    salt = lo + hi
    return SessionKeys(
        _hkdf(keys.k_punch, salt, b"session-punch"),
        _hkdf(keys.k_data, salt, b"session-data"),
        0 if my_nonce == lo else 1,
    )
