"""The TURN relay on real loopback sockets, against independent clients:
coturn's turnutils_uclient relaying to turnutils_peer (channels and Send
indications), aioice's TURN client relaying to a plain UDP socket, and a
client made of natsalon's own codec for the error answers."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, threads, utils
from twisted.internet.task import deferLater

from natsalon.ops.testing import value
from natsalon.server.service import SalonConfig, SalonService
from natsalon.server.turn import TurnConfig, mint
from natsalon.stun import Address, Attr, Class, Message, Method, decode, encode, long_term_key

pytestmark = pytest.mark.interop
SECRET = b"loopback-secret"


def need(tool):
    if shutil.which(tool) is None:
        msg = "%s is not installed (make test installs it)" % tool
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_salon(**turn):
    turn.setdefault("secrets", (SECRET,))
    turn.setdefault("allow_peer", ("127.0.0.0/8",))
    svc = SalonService(reactor, SalonConfig(interface="127.0.0.1", port=0, alt_port=0, rcvbuf=0, rate_limit=0,
                                            turn=TurnConfig(**turn)))
    svc.startService()
    return svc


@pytest.fixture
def salon():
    svc = start_salon()
    yield svc
    pytest_twisted.blockon(defer.maybeDeferred(svc.stopService))
    assert len(svc.turn.core) == 0


class Queue(protocol.DatagramProtocol):
    noisy = False

    def __init__(self):
        self.queue = defer.DeferredQueue()

    def datagramReceived(self, data, addr):
        self.queue.put((data, addr))

    def get(self, timeout=5.0):
        d = self.queue.get()
        d.addTimeout(timeout, reactor)
        return d


class Quiet(protocol.ProcessProtocol):
    def __init__(self):
        self.ended = defer.Deferred()

    def processEnded(self, reason):
        self.ended.callback(None)


def echo_peer(host: str, port: int):
    """coturn's turnutils_peer (a UDP echo server) on ``host``; yields its
    port once it answers, ends it after."""
    need("turnutils_peer")
    proc = Quiet()
    transport = reactor.spawnProcess(proc, shutil.which("turnutils_peer"),
                                     ["turnutils_peer", "-L", host, "-p", str(port)], env=os.environ)
    probe = Queue()
    listening = reactor.listenUDP(0, probe, interface=host)

    @defer.inlineCallbacks
    def wait_up():
        for _ in range(50):
            probe.transport.write(b"ping", (host, port))
            try:
                yield probe.get(0.1)
                return
            except defer.TimeoutError:
                pass
        raise RuntimeError("turnutils_peer did not answer on %s" % host)

    try:
        pytest_twisted.blockon(wait_up())
        yield port
    finally:
        listening.stopListening()
        transport.signalProcess("TERM")
        pytest_twisted.blockon(proc.ended)


@pytest.fixture
def turn_peer():
    """coturn's turnutils_peer (a UDP echo server) on loopback."""
    yield from echo_peer("127.0.0.1", free_udp_port())


def uclient_totals(out: str):
    sent = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", out)
    lost = re.search(r"Total lost packets (\d+)", out)
    assert sent and lost, out
    return int(sent[-1][0]), int(sent[-1][1]), int(lost.group(1))


@pytest.mark.parametrize("mode", ["channels", "send-indications", "tcp"])
@pytest_twisted.inlineCallbacks
def test_turnutils_uclient_relays_to_turnutils_peer(salon, turn_peer, mode):
    need("turnutils_uclient")
    n = 200
    args = ["-c", "-W", SECRET.decode(), "-u", "alice", "-e", "127.0.0.1", "-r", str(turn_peer),
            "-p", str(salon.layout.ports[0]), "-n", str(n), "-l", "100", "-z", "2"]
    if mode == "send-indications":
        args.append("-s")
    if mode == "tcp":
        args.append("-t")
    out, err, rc = yield utils.getProcessOutputAndValue(shutil.which("turnutils_uclient"), args + ["127.0.0.1"],
                                                        env=os.environ)
    text = (out + err).decode("utf-8", "replace")
    assert rc == 0, text
    sent, received, lost = uclient_totals(text)
    assert (sent, received, lost) == (n, n, 0), text
    assert salon.state.stats["turn_allocations"] >= 1
    if mode != "send-indications":
        assert salon.state.stats["turn_channels"] >= 1
    yield deferLater(reactor, 0.2, lambda: None)
    if mode == "tcp":  # the client's connection closed: its allocation went with it
        assert len(salon.turn.core) == 0 and salon.state.stats["turn_allocations_closed"] >= 1


@pytest_twisted.inlineCallbacks
def test_turnutils_uclient_with_a_wrong_secret_relays_nothing(salon, turn_peer):
    need("turnutils_uclient")
    args = ["-c", "-W", "not-the-secret", "-u", "alice", "-e", "127.0.0.1", "-r", str(turn_peer),
            "-p", str(salon.layout.ports[0]), "-n", "5", "127.0.0.1"]
    out, err, rc = yield utils.getProcessOutputAndValue(shutil.which("turnutils_uclient"), args, env=os.environ)
    assert rc != 0 or "tot_recv_msgs=0" in (out + err).decode("utf-8", "replace")
    assert salon.state.stats["turn_allocations"] == 0
    assert salon.state.stats["turn_auth_failed"] >= 1


def _aioice_scenario(server, username, password, n, transport="udp", ssl=None):
    """Runs in a thread with its own asyncio loop: allocate with aioice,
    exchange ``n`` datagrams each way with a plain UDP socket."""
    from aioice.turn import create_turn_endpoint

    class Collect(asyncio.DatagramProtocol):
        def __init__(self):
            self.queue = asyncio.Queue()

        def datagram_received(self, data, addr):
            self.queue.put_nowait((data, addr))

    async def run():
        loop = asyncio.get_running_loop()
        turn, client = await create_turn_endpoint(Collect, server_addr=server, username=username,
                                                  password=password, transport=transport, ssl=ssl)
        peer_t, peer = await loop.create_datagram_endpoint(Collect, local_addr=("127.0.0.1", 0))
        try:
            relayed = turn.get_extra_info("sockname")
            peer_addr = peer_t.get_extra_info("sockname")
            for i in range(n):
                turn.sendto(b"to peer %d" % i, peer_addr)
            got = [await asyncio.wait_for(peer.queue.get(), 5) for _ in range(n)]
            assert sorted(d for d, _ in got) == sorted(b"to peer %d" % i for i in range(n))
            assert {a for _, a in got} == {tuple(relayed)}
            for i in range(n):
                peer_t.sendto(b"to client %d" % i, tuple(relayed))
            back = [await asyncio.wait_for(client.queue.get(), 5) for _ in range(n)]
            assert sorted(d for d, _ in back) == sorted(b"to client %d" % i for i in range(n))
            assert {a for _, a in back} == {peer_addr}
            return tuple(relayed), len(got), len(back)
        finally:
            turn.close()
            peer_t.close()
            await asyncio.sleep(0.2)  # let the closing Refresh go out

    return asyncio.run(run())


def _scrape(salon):
    from natsalon.ops import metrics
    from natsalon.ops.testing import samples
    from prometheus_client.exposition import generate_latest

    return samples(generate_latest(metrics.registry(metrics.SalonCollector(salon))).decode())


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest_twisted.inlineCallbacks
def test_aioice_turn_client_relays_both_ways(salon, transport):
    pytest.importorskip("aioice")
    username, password = mint(SECRET, "aioice", int(time.time()) + 600)
    server = ("127.0.0.1", salon.layout.ports[0])
    relayed, to_peer, to_client = yield threads.deferToThread(_aioice_scenario, server, username, password, 100,
                                                              transport)
    assert relayed[0] == "127.0.0.1" and 49152 <= relayed[1] <= 65535
    assert (to_peer, to_client) == (100, 100)
    # the per-direction counters (the inline loops' included) match what
    # was relayed, and the metrics page says the same
    core = salon.turn.core
    payload_out = sum(len(b"to peer %d" % i) for i in range(100))
    payload_back = sum(len(b"to client %d" % i) for i in range(100))
    assert (core.to_peer_packets, core.to_peer_bytes) == (100, payload_out)
    assert (core.to_client_packets, core.to_client_bytes) == (100, payload_back)
    s = _scrape(salon)
    assert value(s, "natsalon_turn_packets_total", direction="client_to_peer") == 100
    assert value(s, "natsalon_turn_packets_total", direction="peer_to_client") == 100
    assert value(s, "natsalon_turn_bytes_total", direction="client_to_peer") == payload_out
    assert value(s, "natsalon_turn_bytes_total", direction="peer_to_client") == payload_back
    assert value(s, "natsalon_turn_relayed_bytes_total") == payload_out + payload_back
    assert salon.state.stats["turn_channels"] == 1
    yield deferLater(reactor, 0.3, lambda: None)
    assert salon.state.stats["turn_allocations_deleted"] == 1  # aioice's close() sent Refresh 0
    assert len(salon.turn.core) == 0


@pytest_twisted.inlineCallbacks
def test_own_client_errors_and_relay_socket_lifecycle(salon):
    """natsalon's codec as the client: 401, 438-free allocate, 437, 403 to
    the salon's own socket, and the relayed port closed by Refresh 0."""
    client = Queue()
    port = reactor.listenUDP(0, client, interface="127.0.0.1")
    server = ("127.0.0.1", salon.layout.ports[0])
    try:
        username, password = mint(SECRET, "own", int(time.time()) + 600)
        key = long_term_key(username, "natsalon", password)

        def req(method, attrs, nonce=None):
            txid = os.urandom(12)
            m = Message(method, Class.REQUEST, txid, tuple(attrs) + (
                ((Attr.USERNAME, username), (Attr.REALM, "natsalon"), (Attr.NONCE, nonce)) if nonce else ()))
            client.transport.write(encode(m, integrity_key=key if nonce else None), server)

        req(Method.ALLOCATE, ((Attr.REQUESTED_TRANSPORT, 17),))
        data, _ = yield client.get()
        challenge = decode(data)
        assert challenge.get(Attr.ERROR_CODE).code == 401
        nonce = challenge.get(Attr.NONCE)
        req(Method.ALLOCATE, ((Attr.REQUESTED_TRANSPORT, 17),), nonce)
        ok = decode((yield client.get())[0])
        assert ok.cls == Class.SUCCESS, ok
        relayed = ok.get(Attr.XOR_RELAYED_ADDRESS)
        req(Method.ALLOCATE, ((Attr.REQUESTED_TRANSPORT, 17),), nonce)
        assert decode((yield client.get())[0]).get(Attr.ERROR_CODE).code == 437
        req(Method.CHANNEL_BIND, ((Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, Address(*server))), nonce)
        assert decode((yield client.get())[0]).get(Attr.ERROR_CODE).code == 403
        # the relayed port is bound while the allocation lives
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with pytest.raises(OSError):
            probe.bind(("127.0.0.1", relayed.port))
        req(Method.REFRESH, ((Attr.LIFETIME, 0),), nonce)
        assert decode((yield client.get())[0]).get(Attr.LIFETIME) == 0
        yield deferLater(reactor, 0.05, lambda: None)
        probe.bind(("127.0.0.1", relayed.port))
        probe.close()
    finally:
        yield port.stopListening()
