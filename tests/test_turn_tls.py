"""TURN over TLS (turns:): a self-signed certificate made here, aioice's
TURN client and coturn's turnutils_uclient -S over TLS to a live salon,
and a bad certificate or key ending start-up with one line."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads, utils
from twisted.internet.task import deferLater

from natsalon.server.service import SalonConfig, SalonService
from natsalon.server.turn import TurnConfig, mint
from natsalon.server.turn.tls import TlsConfigError, load_context
from test_turn_interop import SECRET, _aioice_scenario, need, turn_peer, uclient_totals  # noqa: F401

pytestmark = pytest.mark.interop


def make_cert(folder: Path, name: str = "salon"):
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / (name + ".crt"), folder / (name + ".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def cert(tmp_path):
    return make_cert(tmp_path)


@pytest.fixture
def tls_salon(cert):
    cert_path, key_path = cert
    svc = SalonService(reactor, SalonConfig(
        interface="127.0.0.1", port=0, alt_port=0, rcvbuf=0, rate_limit=0,
        turn=TurnConfig(secrets=(SECRET,), allow_peer=("127.0.0.0/8",), tls_cert=str(cert_path),
                        tls_key=str(key_path), tls_port=0)))
    svc.startService()
    assert svc.turn.tls is not None
    yield svc
    pytest_twisted.blockon(defer.maybeDeferred(svc.stopService))
    assert len(svc.turn.core) == 0


def client_context(cert_path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert_path))
    ctx.check_hostname = False  # an IP address; the certificate itself is verified
    return ctx


@pytest.mark.parametrize("bad", ["missing-cert", "missing-key", "garbage", "wrong-key"])
def test_a_bad_certificate_or_key_is_one_line(tmp_path, cert, bad):
    cert_path, key_path = cert
    other_cert, other_key = make_cert(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    args = {"missing-cert": (tmp_path / "nope.crt", key_path), "missing-key": (cert_path, tmp_path / "nope.key"),
            "garbage": (garbage, key_path), "wrong-key": (cert_path, other_key)}[bad]
    with pytest.raises(TlsConfigError) as e:
        load_context(str(args[0]), str(args[1]))
    assert "\n" not in str(e.value) and str(e.value).startswith("TLS: ")
    assert str(args[0 if bad in ("missing-cert", "garbage") else 1]) in str(e.value)


def test_key_in_the_certificate_file(tmp_path, cert):
    cert_path, key_path = cert
    both = tmp_path / "both.pem"
    both.write_bytes(cert_path.read_bytes() + key_path.read_bytes())
    assert isinstance(load_context(str(both), ""), ssl.SSLContext)


def test_twistd_with_a_missing_certificate_exits_with_one_line(tmp_path):
    twistd = Path(sys.executable).with_name("twistd")
    r = subprocess.run([str(twistd), "-n", "--pidfile=", "natsalon", "--interface", "127.0.0.1", "--port", "0",
                        "--alt-port", "0", "--turn-secret", "s", "--tls-cert", str(tmp_path / "missing.pem")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode != 0
    lines = [line for line in (r.stdout + r.stderr).splitlines() if "missing.pem" in line]
    # twistd -n logs stderr with a timestamp prefix
    assert len(lines) == 1 and lines[0].endswith("natsalon: TLS: no such file: %s" % (tmp_path / "missing.pem")), \
        r.stdout + r.stderr


def _tls_handshake_then_garbage(port):
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x00\x05hello")  # a TLS record header and nonsense
        s.settimeout(5)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
    return True


@pytest_twisted.inlineCallbacks
def test_a_broken_handshake_is_dropped(tls_salon):
    yield threads.deferToThread(_tls_handshake_then_garbage, tls_salon.turn.tls.getHost().port)
    assert tls_salon.state.stats["turn_tls_failed"] == 1
    assert len(tls_salon.turn.core) == 0


@pytest_twisted.inlineCallbacks
def test_aioice_turn_client_over_tls_relays_both_ways(tls_salon, cert):
    pytest.importorskip("aioice")
    username, password = mint(SECRET, "aioice-tls", int(time.time()) + 600)
    server = ("127.0.0.1", tls_salon.turn.tls.getHost().port)
    relayed, to_peer, to_client = yield threads.deferToThread(
        _aioice_scenario, server, username, password, 100, "tcp", client_context(cert[0]))
    assert relayed[0] == "127.0.0.1"
    assert (to_peer, to_client) == (100, 100)
    assert tls_salon.state.stats["turn_channels"] == 1
    assert tls_salon.state.stats["turn_tls_failed"] == 0
    yield deferLater(reactor, 0.3, lambda: None)
    assert len(tls_salon.turn.core) == 0


@pytest_twisted.inlineCallbacks
def test_turnutils_uclient_over_tls_relays_to_turnutils_peer(tls_salon, turn_peer):  # noqa: F811
    need("turnutils_uclient")
    n = 200
    args = ["-t", "-S", "-c", "-W", SECRET.decode(), "-u", "alice", "-e", "127.0.0.1", "-r", str(turn_peer),
            "-p", str(tls_salon.turn.tls.getHost().port), "-n", str(n), "-l", "100", "-z", "2", "127.0.0.1"]
    out, err, rc = yield utils.getProcessOutputAndValue(shutil.which("turnutils_uclient"), args, env=os.environ)
    text = (out + err).decode("utf-8", "replace")
    assert rc == 0, text
    assert uclient_totals(text) == (n, n, 0), text
    assert tls_salon.state.stats["turn_channels"] >= 1
    yield deferLater(reactor, 0.2, lambda: None)
    assert len(tls_salon.turn.core) == 0 and tls_salon.state.stats["turn_allocations_closed"] >= 1


def _tls_salon(cert_path, key_path):
    return SalonService(reactor, SalonConfig(
        interface="127.0.0.1", port=0, alt_port=0, rcvbuf=0, rate_limit=0,
        turn=TurnConfig(secrets=(SECRET,), tls_cert=str(cert_path), tls_key=str(key_path), tls_port=0)))


@pytest_twisted.inlineCallbacks
def test_tls_listens_before_privileges_are_dropped(cert):
    svc = _tls_salon(*cert)
    svc.privilegedStartService()  # what twistd runs as root
    try:
        assert svc.turn.tls is not None and svc.turn.tls.getHost().port
        listening = svc.turn.tls
        svc.startService()
        assert svc.turn.tls is listening
    finally:
        yield defer.maybeDeferred(svc.stopService)
    assert svc.turn.tls is None


def test_a_bad_certificate_stops_the_service_with_one_line(tmp_path, cert):
    svc = _tls_salon(tmp_path / "missing.crt", cert[1])
    with pytest.raises(SystemExit, match="^natsalon: TLS: no such file: .*missing.crt$"):
        svc.privilegedStartService()
    for s in svc.sockets.values():
        s.unbind()
