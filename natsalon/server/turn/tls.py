"""TURN over TLS (``turns:``, RFC 8656 section 3.1): the TCP stream of
:mod:`.stream`, inside TLS.

TLS is done by Python's own :mod:`ssl` on memory BIOs (``SSLObject``), the
way Twisted's ``TLSMemoryBIOProtocol`` does it with pyOpenSSL, which
natsalon does not depend on.  :class:`TlsWrapper` is the stream protocol's
transport: ciphertext in, plaintext to the stream protocol; the stream
protocol's writes leave encrypted.  A failed handshake or a TLS error ends
the connection (counted as ``turn_tls_failed``); a connection that has not
allocated within the stream's idle timeout is closed by the stream
protocol, handshake or not.

:func:`load_context` reads the certificate and key once, at start-up, and
raises :class:`TlsConfigError` with one line saying what is wrong.
"""

from __future__ import annotations

import ssl

from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

#: plaintext read from the TLS object per call
_READ = 1 << 16


class TlsConfigError(Exception):
    """The certificate or key cannot be used; ``str()`` is one line."""


def load_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for ``cert`` (PEM, the chain) and ``key`` (PEM;
    the cert file when it holds the key too).  TLS 1.2 at least."""
    for path in (cert, key) if key else (cert,):
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            raise TlsConfigError("TLS: no such file: %s" % path) from None
        except OSError as e:
            raise TlsConfigError("TLS: cannot read %s: %s" % (path, e.strerror or e)) from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    try:
        ctx.load_cert_chain(cert, key or None)
    except ssl.SSLError as e:
        raise TlsConfigError("TLS: cannot use certificate %s with key %s: %s" % (
            cert, key or cert, e.reason or e)) from None
    except OSError as e:
        raise TlsConfigError("TLS: cannot load certificate %s with key %s: %s" % (
            cert, key or cert, e.strerror or e)) from None
    return ctx


class TlsWrapper(ProtocolWrapper):
    """One TLS connection; the wrapped protocol sees plaintext."""

    def makeConnection(self, transport) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = self.factory.context.wrap_bio(self._in, self._out, server_side=True)
        self._ready = False
        self._closing = False
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self._in.write(data)
        try:
            if not self._ready:
                self._tls.do_handshake()
                self._ready = True
            chunks = []
            while True:
                try:
                    chunk = self._tls.read(_READ)
                except ssl.SSLWantReadError:
                    break
                if not chunk:  # close_notify from the client
                    self._flush()
                    self.transport.loseConnection()
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ssl.CertificateError):
            self._failed()
            return
        self._flush()
        if chunks and self.wrappedProtocol is not None and not self._closing:
            self.wrappedProtocol.dataReceived(b"".join(chunks))

    def _failed(self) -> None:
        self.factory.stats["turn_tls_failed"] += 1
        self._flush()
        self.transport.abortConnection()

    def _flush(self) -> None:
        out = self._out.read()
        if out:
            self.transport.write(out)

    def write(self, data: bytes) -> None:
        if not self._ready or self._closing:
            return
        try:
            self._tls.write(data)
        except ssl.SSLError:
            self._failed()
            return
        self._flush()

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.disconnecting = 1
        if self._ready:
            try:
                self._tls.unwrap()  # close_notify; the client's answer is not awaited
            except ssl.SSLError:
                pass
            self._flush()
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        self._closing = True
        self.transport.abortConnection()


class TlsFactory(WrappingFactory):
    """Wraps the TURN stream factory's protocols in TLS."""

    protocol = TlsWrapper
    noisy = False

    def __init__(self, wrapped, context: ssl.SSLContext, stats) -> None:
        super().__init__(wrapped)
        self.context = context
        self.stats = stats
