"""Relayed datagrams sent in runs with UDP segmentation offload
(natsalon.server.gso): on real loopback sockets, what arrives is exactly
what was queued, datagram by datagram and in order; with fake sockets,
how runs are cut, and what happens when the kernel refuses."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from natsalon.server.gso import MAX_SEGMENTS, MAX_SIZE, SOL_UDP, UDP_SEGMENT, Runs


class Owner:
    """What pays for a datagram: an allocation's ``credit`` and ``dropped``."""

    def __init__(self, credit: int = 0) -> None:
        self.credit = credit
        self.dropped = 0


class SegmentingSocket:
    """A socket as the kernel segments: ``sendmsg`` with UDP_SEGMENT cuts
    the buffer into datagrams; ``refuse`` makes ``sendmsg`` fail."""

    def __init__(self) -> None:
        #: bound once, as the read loops hold it (a run is for one ``sendto`` object)
        self.send = self.sendto
        self.wire: list = []  # (datagram, address) as the receivers would see them
        self.calls: list = []  # ("sendto" | "sendmsg", datagrams)
        self.refuse = None
        self.refuse_sendto = None

    def sendto(self, data, addr) -> int:
        if self.refuse_sendto is not None:
            raise OSError(self.refuse_sendto, "refused")
        self.calls.append(("sendto", 1))
        self.wire.append((bytes(data), addr))
        return len(data)

    def sendmsg(self, buffers, ancdata, flags, addr) -> int:
        if self.refuse is not None:
            raise OSError(self.refuse, "refused")
        assert flags == 0
        cut = segments(buffers, ancdata)
        self.calls.append(("sendmsg", len(cut)))
        self.wire.extend((d, addr) for d in cut)
        return sum(len(d) for d in cut)


def segments(buffers, ancdata) -> list:
    """The datagrams the kernel makes of a ``sendmsg`` with UDP_SEGMENT."""
    [(level, kind, raw)] = ancdata
    assert (level, kind) == (SOL_UDP, UDP_SEGMENT)
    (size,) = struct.unpack("=H", raw)
    data = b"".join(buffers)
    cut = [data[i:i + size] for i in range(0, len(data), size)]
    assert 1 < len(cut) <= MAX_SEGMENTS and len(data) <= 65535 - 48
    return cut


A, B = ("192.0.2.1", 1000), ("192.0.2.2", 2000)


def payloads(n: int, size: int, tag: int = 0):
    return [struct.pack("!HI", tag, i).ljust(size, b"x") for i in range(n)]


def test_equal_datagrams_to_one_destination_go_out_in_runs_of_at_most_64():
    sock, owner, runs = SegmentingSocket(), Owner(), Runs(enabled=True)
    sent = payloads(150, 100)
    for p in sent:
        runs.send(sock.send, p, A, owner)
    runs.flush()
    assert sock.wire == [(p, A) for p in sent]
    assert sock.calls == [("sendmsg", 64), ("sendmsg", 64), ("sendmsg", 22)]
    assert (owner.credit, owner.dropped, runs.failed) == (0, 0, 0)


def test_a_change_of_size_destination_or_socket_starts_a_new_run():
    one, two, owner, runs = SegmentingSocket(), SegmentingSocket(), Owner(), Runs(enabled=True)
    plan = ([(one, p, A) for p in payloads(3, 100)] + [(one, p, A) for p in payloads(2, 60, 1)]
            + [(one, p, B) for p in payloads(1, 60, 2)] + [(two, p, B) for p in payloads(4, 60, 3)]
            + [(one, p, B) for p in payloads(2, 60, 4)])
    for sock, p, dest in plan:
        runs.send(sock.send, p, dest, owner)
    runs.flush()
    assert one.wire + two.wire == [(p, d) for s, p, d in plan if s is one] + [(p, d) for s, p, d in plan if s is two]
    assert one.calls == [("sendmsg", 3), ("sendmsg", 2), ("sendto", 1), ("sendmsg", 2)]
    assert two.calls == [("sendmsg", 4)]


def test_large_datagrams_make_shorter_runs_within_64_kib():
    sock, runs = SegmentingSocket(), Runs(enabled=True)
    sent = payloads(100, 1400)
    for p in sent:
        runs.send(sock.send, p, A, Owner())
    runs.flush()
    per_run = (65535 - 48) // 1400
    assert [n for _, n in sock.calls] == [per_run, per_run, 100 - 2 * per_run]
    assert sock.wire == [(p, A) for p in sent]


def test_off_or_without_sendmsg_every_datagram_is_sent_alone():
    sock, runs = SegmentingSocket(), Runs(enabled=False)
    for p in payloads(5, 100):
        runs.send(sock.send, p, A, Owner())
    runs.flush()
    assert sock.calls == [("sendto", 1)] * 5
    plain, runs = [], Runs(enabled=True)
    for p in payloads(5, 100):
        runs.send(lambda d, a: plain.append((d, a)), p, A, Owner())  # a writer with no socket behind it
    runs.flush()
    assert plain == [(p, A) for p in payloads(5, 100)]


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP])
def test_when_the_kernel_cannot_segment_the_run_is_sent_alone_and_segmentation_stays_off(code):
    sock, owner, runs = SegmentingSocket(), Owner(), Runs(enabled=True)
    sock.refuse = code
    sent = payloads(10, 100)
    for p in sent:
        runs.send(sock.send, p, A, owner)
    runs.flush()
    assert sock.wire == [(p, A) for p in sent] and not runs.enabled
    assert (owner.dropped, runs.failed) == (0, 0)
    sock.refuse, sock.calls = None, []
    for p in sent:
        runs.send(sock.send, p, A, owner)
    runs.flush()
    assert sock.calls == [("sendto", 1)] * 10


def test_a_run_that_cannot_be_sent_gives_its_credit_back_and_counts_as_dropped():
    sock, owner, runs = SegmentingSocket(), Owner(credit=0), Runs(enabled=True)
    sock.refuse = errno.ENOBUFS
    for p in payloads(10, 104):
        runs.send(sock.send, p, A, owner, 4)  # 4 header bytes not paid for (ChannelData to a client)
    runs.flush()
    assert (owner.credit, owner.dropped, runs.failed) == (1000, 10, 10) and runs.enabled
    sock.refuse_sendto = errno.EAGAIN
    runs.send(sock.send, b"y" * 50, B, owner)  # a run of one: sendto
    runs.flush()
    assert (owner.credit, owner.dropped, runs.failed) == (1050, 11, 11) and sock.wire == []


class CountingSocket(socket.socket):
    """A real socket that counts its ``sendmsg`` calls."""

    runs_sent = 0

    def sendmsg(self, *args):
        self.runs_sent += 1
        return super().sendmsg(*args)


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_on_loopback_the_receiver_gets_each_datagram_as_it_was_queued(family, host):
    rx = socket.socket(family, socket.SOCK_DGRAM)
    tx = CountingSocket(family, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((host, 0))
        rx.settimeout(2)
        tx.bind((host, 0))
        dest = rx.getsockname()[:2]
        runs, send = Runs(), tx.sendto
        sent = payloads(70, 100) + payloads(3, 33, 1) + payloads(1, 7, 2) + payloads(5, 1400, 3)
        for p in sent:
            runs.send(send, p, dest, Owner())
        runs.flush()
        got = [rx.recvfrom(2048) for _ in sent]
        assert [d for d, _ in got] == sent
        assert {a[:2] for _, a in got} == {tx.getsockname()[:2]}
        # the kernel segmented (Linux 4.18+): 64 + 6, 3 and 5 in four sendmsg, the one alone
        assert tx.runs_sent == 4 and runs.enabled and runs.failed == 0


def test_datagrams_over_the_mtu_bound_go_alone_and_a_run_refused_for_its_size_lowers_it():
    sock, runs = SegmentingSocket(), Runs(enabled=True)
    for p in payloads(3, MAX_SIZE + 1):  # might not fit a 1500-byte MTU as one segment
        runs.send(sock.send, p, A, Owner())
    runs.flush()
    assert sock.calls == [("sendto", 1)] * 3
    sock.calls, sock.wire, sock.refuse = [], [], errno.EINVAL  # EMSGSIZE-like: the way out has a smaller MTU
    sent = payloads(4, 1400)
    for p in sent:
        runs.send(sock.send, p, A, Owner())
    runs.flush()
    assert sock.wire == [(p, A) for p in sent] and runs.enabled and runs.max_size == 1399
    sock.refuse, sock.calls = None, []
    for p in payloads(4, 1400) + payloads(4, 1300, 1):
        runs.send(sock.send, p, A, Owner())
    runs.flush()
    assert sock.calls == [("sendto", 1)] * 4 + [("sendmsg", 4)]
