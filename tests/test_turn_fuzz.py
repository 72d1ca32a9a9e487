"""Bad input for the TURN relay, through the salon's real protocol: every
TURN method and attribute, mutated as in test_stun_fuzz.  Nothing raises,
nothing is relayed or allocated without credentials, nothing is cached for
unauthenticated senders, and with credentials datagrams only ever go to
permitted peers."""

from __future__ import annotations

import os
import random
import socket
import struct

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from natsalon.server.turn import mint
from natsalon.stun import Address, Attr, Class, Message, Method, encode, long_term_key
from natsalon.stun.attributes import AddressErrorCode, Icmp
from test_stun_fuzz import mutate, with_fingerprint
from test_turn_relay import CLIENT, PEER, SECRET, Client, FakeUdpReactor, salon

SEED = 0x7E2A
TXID = bytes(range(12))
TURN_ATTRS = (
    (Attr.REQUESTED_TRANSPORT, 17), (Attr.LIFETIME, 600), (Attr.CHANNEL_NUMBER, 0x4000),
    (Attr.XOR_PEER_ADDRESS, Address(*PEER)), (Attr.XOR_RELAYED_ADDRESS, Address("192.0.2.1", 50000)),
    (Attr.DATA, b"payload"), (Attr.REQUESTED_ADDRESS_FAMILY, 1), (Attr.ADDITIONAL_ADDRESS_FAMILY, 2),
    (Attr.EVEN_PORT, True), (Attr.DONT_FRAGMENT, b""), (Attr.RESERVATION_TOKEN, bytes(8)),
    (Attr.ADDRESS_ERROR_CODE, AddressErrorCode(2, 440, "x")), (Attr.ICMP, Icmp(3, 3, 0)),
)
METHODS = (Method.ALLOCATE, Method.REFRESH, Method.SEND, Method.DATA, Method.CREATE_PERMISSION,
           Method.CHANNEL_BIND)


def seeds(key=None, username="1:nobody", nonce="ffffffff-bad"):
    rng = random.Random(SEED)
    out = []
    for method in METHODS:
        for cls in (Class.REQUEST, Class.INDICATION):
            attrs = tuple(rng.sample(TURN_ATTRS, rng.randint(1, 5)))
            auth = ((Attr.USERNAME, username), (Attr.REALM, "natsalon"), (Attr.NONCE, nonce))
            m = Message(method, cls, TXID, attrs + auth)
            out.append(encode(m, integrity_key=key, fingerprint=rng.random() < 0.5))
            out.append(encode(Message(method, cls, TXID, attrs)))
    out += [b"\x40\x00\x00\x04abcd", b"\x40\x00\x00\x00", b"\x4f\xff\x00\x02xy\x00\x00"]
    return out


def fuzz(proto, sources, data_seeds, rounds, rng):
    for i in range(rounds):
        data = data_seeds[i % len(data_seeds)]
        for _ in range(rng.choice([1, 1, 2, 3])):
            data = mutate(rng, data)
        if rng.random() < 0.05:
            data = with_fingerprint(data[:20] + data[20:][: len(data[20:]) & ~3]) if len(data) >= 20 else data
        proto.datagramReceived(data, rng.choice(sources))


def test_fuzz_without_credentials_relays_nothing():
    r = FakeUdpReactor()
    svc, proto, wire = salon(r)
    rng = random.Random(SEED)
    sources = [("198.51.100.%d" % i, 1000 + i) for i in range(1, 9)]
    wrong_key = long_term_key("1:nobody", "natsalon", "guess")
    fuzz(proto, sources, seeds(wrong_key) + seeds(), 20000, rng)
    stats = proto.state.stats
    assert stats["internal_error"] == 0
    assert len(svc.core) == 0 and r.ports == {}  # no allocation, no relayed socket
    assert svc.core._cache == {}  # nothing kept for unauthenticated senders
    answers = wire.pop()
    assert answers and all(to in sources for _, to in answers)
    assert max(len(d) for d, _ in answers) <= 128
    assert stats["turn_401"] > 1000


def test_fuzz_with_a_live_allocation_relays_only_to_permitted_peers():
    r = FakeUdpReactor()
    svc, proto, wire = salon(r)
    c = Client(proto, wire)
    relayed = c.request(Method.ALLOCATE, ((Attr.REQUESTED_TRANSPORT, 17),)).get(Attr.XOR_RELAYED_ADDRESS)
    c.request(Method.CHANNEL_BIND, ((Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, Address(*PEER))))
    relay_transport, relay_proto = r.ports[relayed.port]
    rng = random.Random(SEED + 1)
    fuzz(proto, [CLIENT, ("198.51.100.9", 9)], seeds(c.key, c.username, c.nonce), 20000, rng)
    # the peer side of the relay too: random datagrams from random peers
    for i in range(5000):
        relay_proto.datagramReceived(os.urandom(rng.randrange(0, 200)),
                                     rng.choice([PEER, (PEER[0], 1), ("203.0.113.77", 5)]))
    assert proto.state.stats["internal_error"] == 0
    sent = relay_transport.pop()
    assert sent and {to[0] for _, to in sent} <= {PEER[0]}
    assert all(to == CLIENT for _, to in wire.pop() if to[0] == CLIENT[0])
    assert len(svc.core._cache) <= svc.core.config.max_cached
    assert len(svc.core) <= 2  # the client's own allocation (and at most a fuzzed second one)


@pytest_twisted.inlineCallbacks
def test_fuzz_a_live_salon_over_udp():
    """Mutated TURN datagrams at a running salon on loopback; it keeps
    answering, raises nothing and allocates nothing."""
    from test_turn_interop import start_salon

    svc = start_salon()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    try:
        target = ("127.0.0.1", svc.layout.ports[0])
        rng = random.Random(SEED + 2)
        data_seeds = seeds()
        for i in range(3000):
            data = mutate(rng, data_seeds[i % len(data_seeds)])
            try:
                s.sendto(data, target)
            except OSError:
                pass
            if i % 200 == 0:
                yield deferLater(reactor, 0.01, lambda: None)
        yield deferLater(reactor, 0.3, lambda: None)
        stats = svc.state.stats
        assert stats["internal_error"] == 0
        assert len(svc.turn.core) == 0 and stats["turn_allocations"] == 0
        # still serving: a Binding request is answered
        while True:  # drain the answers to the fuzz (non-blocking)
            try:
                s.recvfrom(2048)
            except OSError:
                break
        s.settimeout(2)
        s.sendto(struct.pack("!HH", 1, 0) + b"\x21\x12\xa4\x42" + TXID, target)
        d = defer.Deferred()
        reactor.callInThread(lambda: reactor.callFromThread(d.callback, s.recvfrom(2048)))
        data, _ = yield d
        assert data[:2] == b"\x01\x01"
        assert stats["turn_401"] > 0
    finally:
        s.close()
        yield svc.stopService()


def _rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def test_fuzz_a_live_daemon_keeps_its_memory_flat(tmp_path):
    """``twistd -n natsalon`` with TURN, fuzzed over UDP from several
    sockets with and without its credentials, ChannelData included, while
    a real allocation and channel live: it stays up and its RSS after
    30,000 more datagrams is within a generous bound of its RSS after a
    warm-up of the same fuzz (no timing is asserted)."""
    import subprocess
    import sys
    import time

    from natsalon.stun import decode
    from test_turn_interop import free_udp_port

    port, alt = free_udp_port(), free_udp_port()
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    proc = subprocess.Popen([twistd, "-n", "--pidfile=", "natsalon", "--interface", "127.0.0.1", "--port", str(port),
                             "--alt-port", str(alt), "--rate-limit", "0", "--turn-secret", SECRET.decode(),
                             "--turn-allow-peer", "127.0.0.0/8", "--no-turn-tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
    target = ("127.0.0.1", port)
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
            s.settimeout(0.2)
        client, peer = socks[0], socks[4]

        def ask(data):
            for _ in range(50):
                client.sendto(data, target)
                try:
                    while True:
                        got = decode(client.recvfrom(4096)[0])
                        if got.transaction_id == decode(data).transaction_id:
                            return got
                except socket.timeout:
                    assert proc.poll() is None, "the daemon exited"
            raise AssertionError("the daemon did not answer")

        username, password = mint(SECRET, "fuzz", int(time.time()) + 3600)
        key = long_term_key(username, "natsalon", password)
        nonce = ask(encode(Message(Method.ALLOCATE, Class.REQUEST, os.urandom(12),
                                   ((Attr.REQUESTED_TRANSPORT, 17),)))).get(Attr.NONCE)
        auth = ((Attr.USERNAME, username), (Attr.REALM, "natsalon"), (Attr.NONCE, nonce))
        ok = ask(encode(Message(Method.ALLOCATE, Class.REQUEST, os.urandom(12),
                                ((Attr.REQUESTED_TRANSPORT, 17),) + auth), integrity_key=key))
        assert ok.cls == Class.SUCCESS
        relayed = ok.get(Attr.XOR_RELAYED_ADDRESS)
        bound = ask(encode(Message(Method.CHANNEL_BIND, Class.REQUEST, os.urandom(12), (
            (Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, Address(*peer.getsockname()))) + auth),
            integrity_key=key))
        assert bound.cls == Class.SUCCESS
        client.settimeout(0)
        rng = random.Random(SEED + 3)
        data_seeds = seeds(key, username, nonce) + seeds() + [b"\x40\x00\x00\x64" + bytes(100)] * 8

        def blast(n):
            for i in range(n):
                data = data_seeds[i % len(data_seeds)]
                if rng.random() < 0.8:
                    data = mutate(rng, data)
                try:
                    socks[i % 4].sendto(data, target)
                    if i % 7 == 0:
                        peer.sendto(os.urandom(rng.randrange(0, 120)), (relayed.host, relayed.port))
                except OSError:
                    pass
                if i % 500 == 0:
                    time.sleep(0.005)  # let the daemon keep up; losses would not matter
            time.sleep(0.5)
            for s in socks:  # drain the answers and the relayed data
                s.settimeout(0)
                while True:
                    try:
                        s.recvfrom(65536)
                    except OSError:
                        break

        blast(5000)
        before = _rss_kib(proc.pid)
        blast(30000)
        after = _rss_kib(proc.pid)
        assert proc.poll() is None
        client.settimeout(2)
        probe = struct.pack("!HH", 1, 0) + b"\x21\x12\xa4\x42" + TXID
        client.sendto(probe, target)
        assert client.recvfrom(2048)[0][:2] == b"\x01\x01"
        assert after - before < 8 * 1024, "RSS grew from %d to %d KiB" % (before, after)
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
