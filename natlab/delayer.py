"""Userspace one-way delay line between two interfaces (the lab has no netem).

Run inside a "wire" namespace that holds two veth ends and nothing else::

    python delayer.py IFACE_A IFACE_B DELAY_MS

Every Ethernet frame that arrives on one interface is sent out of the other
DELAY_MS milliseconds later (FIFO, so order is kept).  The namespace has no IP
addresses, so its own stack never answers anything: the forwarder is the only
path between the router's WAN port and the emulated internet.

veth hands packet sockets frames whose TCP/UDP checksum is still "partial"
(checksum offload); such frames would be dropped by the receiver, so the
checksum of IPv4 and IPv6 UDP/TCP frames flagged TP_STATUS_CSUMNOTREADY is
completed here.  This file is standalone (no imports from natlab) so it can be run by
path with any Python >= 3.9.
"""
from __future__ import annotations

import array
import heapq
import os
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
TP_STATUS_CSUMNOTREADY = 8
AUX_SIZE = struct.calcsize("IIIHHHH")


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(array.array("H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _fill(frame: bytes, l4: int, end: int, proto: int, pseudo_addrs: bytes, wide: bool) -> bytes:
    """``frame`` with the UDP/TCP checksum of ``frame[l4:end]`` computed over the pseudo-header."""
    seg = bytearray(frame[l4:end])
    off = 6 if proto == 17 else 16
    if len(seg) < off + 2:
        return frame
    seg[off:off + 2] = b"\0\0"
    if wide:  # IPv6: 32-bit length, three zero bytes, next header
        pseudo = pseudo_addrs + struct.pack("!IxxxB", len(seg), proto)
    else:
        pseudo = pseudo_addrs + struct.pack("!BBH", 0, proto, len(seg))
    c = _csum(pseudo + bytes(seg))
    if proto == 17 and c == 0:
        c = 0xFFFF
    seg[off:off + 2] = struct.pack("=H", c)
    return frame[:l4] + bytes(seg) + frame[end:]


def fix_checksum6(frame: bytes) -> bytes:
    """Complete the L4 checksum of an IPv6 UDP/TCP frame (no extension headers)."""
    if len(frame) < 54 or frame[12:14] != b"\x86\xdd" or frame[20] not in (6, 17):
        return frame
    length = struct.unpack("!H", frame[18:20])[0]
    return _fill(frame, 54, 54 + length, frame[20], frame[22:54], True)


def fix_checksum(frame: bytes) -> bytes:
    """Complete the L4 checksum of an IPv4 (or IPv6) UDP/TCP frame (native-order trick)."""
    if frame[12:14] == b"\x86\xdd":
        return fix_checksum6(frame)
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return frame
    ihl = (frame[14] & 0x0F) * 4
    total = struct.unpack("!H", frame[16:18])[0]
    frag = struct.unpack("!H", frame[20:22])[0]
    proto = frame[23]
    if frag & 0x3FFF or proto not in (6, 17):
        return frame
    return _fill(frame, 14 + ihl, 14 + total, proto, frame[26:34], False)


def open_if(name: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((name, 0))
    s.setblocking(False)
    return s


def main(argv: list) -> int:
    a_name, b_name, delay_ms = argv[0], argv[1], float(argv[2])
    delay = delay_ms / 1000.0
    a, b = open_if(a_name), open_if(b_name)
    other = {a.fileno(): b, b.fileno(): a}
    socks = {a.fileno(): a, b.fileno(): b}
    heap: list = []
    seq = 0
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        timeout = None
        if heap:
            timeout = max(0.0, heap[0][0] - time.monotonic())
        r, _, _ = select.select(list(socks), [], [], timeout)
        now = time.monotonic()
        for fd in r:
            s = socks[fd]
            while True:
                try:
                    data, anc, _flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(AUX_SIZE))
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                for level, typ, cdata in anc:
                    if level == SOL_PACKET and typ == PACKET_AUXDATA and len(cdata) >= 4:
                        status = struct.unpack("I", cdata[:4])[0]
                        if status & TP_STATUS_CSUMNOTREADY:
                            data = fix_checksum(data)
                seq += 1
                heapq.heappush(heap, (now + delay, seq, fd, data))
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _due, _seq, fd, data = heapq.heappop(heap)
            try:
                other[fd].send(data)
            except OSError:
                pass  # e.g. oversized GSO frame: dropped like on a real wire


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        os._exit(0)
