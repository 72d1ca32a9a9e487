"""Room keys: scrypt-stretched secret, then HKDF."""

import time

import pytest

from natsalon.crypto import secret
from natsalon.crypto.secret import derive, new_nonce, session_keys


def test_deterministic_and_str_equals_bytes():
    a = derive("room", "correct horse")
    assert a == derive(b"room", b"correct horse")
    assert len(a.room_id) == 16 and all(len(k) == 32 for k in a[1:])
    assert len(set(a)) == 4


def test_room_name_separates():
    a, b = derive("room", "s"), derive("room2", "s")
    assert not set(a) & set(b)


def test_other_secret_other_keys():
    a, b = derive("room", "s"), derive("room", "t")
    assert not set(a) & set(b)


def test_secret_is_stretched_with_scrypt():
    # the published derivation: scrypt(S, salt "natsalon-v1" + room, 2**14, 8, 1), then HKDF
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    stretched = Scrypt(salt=b"natsalon-v1room", length=32, n=2 ** 14, r=8, p=1).derive(b"s")
    assert derive("room", "s").k_join == secret._hkdf(stretched, b"natsalon-v1", b"join\x00room")
    assert derive("room", "s").k_join != secret._hkdf(b"s", b"natsalon-v1", b"join\x00room")


def test_cost_is_bounded():
    started = time.perf_counter()
    derive("room", "s")
    assert time.perf_counter() - started < 1.0  # about 30 ms here; generous for loaded CI


def test_empty_secret_and_session_keys():
    with pytest.raises(ValueError, match="empty"):
        derive("room", "")
    keys = derive("room", "s")
    na, nb = new_nonce(), new_nonce()
    sa, sb = session_keys(keys, na, nb), session_keys(keys, nb, na)
    assert sa.k_punch == sb.k_punch and sa.k_data == sb.k_data and {sa.role, sb.role} == {0, 1}
