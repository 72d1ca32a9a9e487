"""Relayed datagrams sent in runs with UDP generic segmentation offload.

Most of a relayed datagram's cost on Linux is the kernel's: one
``sendto`` per datagram walks the whole UDP/IP output path (on loopback,
the receiving path too).  A read batch of a busy allocation is mostly
datagrams of one size for one peer, so the TURN read loops hand what they
relay to :class:`Runs` instead of sending it: consecutive datagrams for
the same destination, through the same socket, of the same size are
joined and sent by one ``sendmsg`` with ``UDP_SEGMENT`` (Linux 4.18+), which
the kernel cuts back into the same datagrams (on the wire, or at the
receiving socket on loopback and veth).  The receiver cannot tell.
WireGuard-go (Tailscale) and quic-go send the same way.

A run is sent when the next datagram does not belong to it, when it holds
:data:`MAX_SEGMENTS` datagrams or 64 KiB, and when the read loop ends its
batch (:meth:`Runs.flush`), so a datagram waits at most one read batch.
A run of one is sent with a plain ``sendto``.  Where the socket has no
``sendmsg`` (test fakes) or is not one whose ``sendto`` can be traced
back (a dual allocation's writer), datagrams are sent one by one.  When
the kernel refuses segmentation (no checksum offload on the device: EIO;
an old kernel: EINVAL for a run of small datagrams), the run is sent again
one by one and segmentation is off for good for this :class:`Runs`
(:attr:`Runs.enabled`).  Each segment must fit the MTU of the way out:
datagrams over :data:`MAX_SIZE` bytes are sent alone, and a run refused
with EINVAL for its size is sent one by one and lowers that bound
(:attr:`Runs.max_size`) below its size.

Credit is paid when a datagram is queued; a run that cannot be sent gives
its credit back to its owner (the allocation) and counts its datagrams in
``owner.dropped``, as a single failed ``sendto`` did.  :attr:`Runs.failed`
counts them for the read loop's batch totals.
"""

from __future__ import annotations

import errno
import struct
import sys

from twisted.logger import Logger

#: ``setsockopt``/cmsg level and type (``netinet/udp.h``); Python's socket
#: module does not name them
SOL_UDP = 17
UDP_SEGMENT = 103
#: the kernel's UDP_MAX_SEGMENTS (64 before Linux 6.x raised it to 128)
MAX_SEGMENTS = 64
#: a run's bytes: an IP datagram's limit less the UDP and IPv6 headers
MAX_RUN_BYTES = 65535 - 8 - 40
#: the largest datagram sent in runs to begin with: a segment must fit the
#: path's MTU (1500 less the IPv6 and UDP headers), else the kernel refuses
#: the run (EINVAL), where a lone datagram would have been fragmented
MAX_SIZE = 1452
#: no MTU is below 576 bytes (RFC 791): a run of datagrams this small that
#: is refused with EINVAL means the kernel does not know UDP_SEGMENT
SURELY_FITS = 576 - 60 - 8
#: errors that say the kernel or the device cannot segment
_NO_GSO = (errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP)
_SEGMENT = struct.Struct("=H")

log = Logger()


def _sendmsg_of(sendto):
    """The ``sendmsg`` of the socket whose bound ``sendto`` this is, or None."""
    return getattr(getattr(sendto, "__self__", None), "sendmsg", None)


class Runs:
    """Datagrams queued by a read loop, sent in runs (see the module)."""

    __slots__ = ("enabled", "failed", "max_size", "_sendto", "_dest", "_size", "_limit", "_parts", "_owner", "_header")

    def __init__(self, enabled: bool = sys.platform.startswith("linux")) -> None:
        #: False: every datagram is sent alone (set for good on the first
        #: refusal by the kernel)
        self.enabled = enabled
        #: datagrams that could not be sent since the read loop last took
        #: this count (it resets it)
        self.failed = 0
        #: datagrams larger than this are sent alone (lowered when a run of
        #: them is refused as larger than the path's MTU)
        self.max_size = MAX_SIZE
        self._sendto = None
        self._dest = None
        self._size = 0
        self._limit = 0
        self._parts: list = []
        self._owner = None
        self._header = 0

    def send(self, sendto, data: bytes, dest, owner, header: int = 0) -> None:
        """Queue ``data`` for ``dest`` through ``sendto`` (a socket's bound
        ``sendto``), paid by ``owner``: its ``.credit`` was already taken
        for ``data`` less its first ``header`` bytes (given back if it is
        lost), and ``.dropped`` counts losses."""
        parts = self._parts
        if sendto is self._sendto and len(data) == self._size and len(parts) < self._limit and dest == self._dest:
            parts.append(data)
            return
        if parts:
            self.flush()
            parts = self._parts
        size = len(data)
        self._sendto, self._dest, self._size, self._owner, self._header = sendto, dest, size, owner, header
        self._limit = min(MAX_SEGMENTS, MAX_RUN_BYTES // size) if (self.enabled and 0 < size <= self.max_size) else 1
        parts.append(data)

    def flush(self) -> None:
        """Send the queued run, if any."""
        parts = self._parts
        if not parts:
            return
        sendto, dest, owner = self._sendto, self._dest, self._owner
        self._parts = []
        self._sendto = self._dest = self._owner = None
        if len(parts) == 1:
            try:
                sendto(parts[0], dest)
            except OSError:
                self._lost(owner, parts)
            return
        sendmsg = _sendmsg_of(sendto)
        if sendmsg is None:
            self._one_by_one(sendto, parts, dest, owner)
            return
        try:
            sendmsg([b"".join(parts)], [(SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(self._size))], 0, dest)
        except OSError as e:
            if e.errno == errno.EINVAL and self._size > SURELY_FITS:
                self.max_size = self._size - 1  # larger than the MTU of the way out: such sizes go alone
                self._one_by_one(sendto, parts, dest, owner)
            elif e.errno in _NO_GSO or e.errno == errno.EINVAL:
                self.enabled = False
                log.info("UDP segmentation offload refused ({error}): relaying one datagram per send",
                         error=e.strerror)
                self._one_by_one(sendto, parts, dest, owner)
            else:
                self._lost(owner, parts)  # e.g. ENOBUFS: the run is lost, as a router would

    def _one_by_one(self, sendto, parts: list, dest, owner) -> None:
        for data in parts:
            try:
                sendto(data, dest)
            except OSError:
                self._lost(owner, (data,))

    def _lost(self, owner, parts) -> None:
        owner.credit += sum(len(p) for p in parts) - self._header * len(parts)
        owner.dropped += len(parts)
        self.failed += len(parts)
