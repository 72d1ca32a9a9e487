"""The TURN relay's segmented sends (natsalon.server.gso) across a real
NAT: a burst queued while the salon is stopped is read in one batch and
relayed in runs, one ``sendmsg`` with UDP_SEGMENT per run. Every datagram
must still arrive, intact and in order, from the right address, through
the site's NAT and the lab's veth links; the server namespace's UDP
``OutDatagrams`` (one per socket send) shows that runs were used."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from natlab import Lab, Nat
from natlab.salon import start_salon
from test_relay_lab import TURN_ARGS

pytestmark = pytest.mark.nat

SCRIPT = str(Path(__file__).with_name("turn_burst.py"))
BURST = 150  # fits the salon's receive buffer (150 x ~800 bytes of socket memory)
PEER_PORT = 7100


def _line(proc) -> dict:
    line = proc.stdout.readline()
    assert line, "the burst script ended: %s" % proc.stderr.read()
    return json.loads(line)


def _ask(proc, command: str) -> None:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()


def _out_datagrams(host) -> int:
    """The namespace's UDP OutDatagrams (/proc/net/snmp)."""
    text = host.run(["cat", "/proc/net/snmp"], check=True).stdout
    names, values = [line.split() for line in text.splitlines() if line.startswith("Udp:")][:2]
    return int(values[names.index("OutDatagrams")])


def _while_stopped(salon, start, finish):
    """Stop the salon, ``start()`` the burst, let it queue, go on; return
    ``finish()``'s result and the datagrams the server sent meanwhile."""
    os.kill(salon.pid, signal.SIGSTOP)
    try:
        start()
        time.sleep(0.3)  # the burst is queued at the stopped salon's sockets
    finally:
        os.kill(salon.pid, signal.SIGCONT)
    return finish()


def test_a_burst_is_relayed_in_runs_intact_and_in_order_through_a_nat(natlab: Lab) -> None:
    lab = natlab
    host = lab.add_site("a", Nat.PORT_RESTRICTED_CONE).hosts[0]
    salon = start_salon(lab, extra_args=TURN_ARGS)
    salon_ip, peer_ip = lab.server.ips[0], lab.server.ips[1]
    pipes = dict(stdin=-1, stdout=-1, stderr=-1, text=True)
    peer = lab.server.python([SCRIPT, "peer", peer_ip, str(PEER_PORT)], spawn=True, **pipes)
    client = host.python([SCRIPT, "client", salon_ip, "3478", TURN_ARGS[1], peer_ip, str(PEER_PORT)],
                         spawn=True, **pipes)
    try:
        assert _line(peer) == {"ready": True}
        relayed = _line(client)["relayed"]
        # client -> peer: ChannelData queued at the salon's socket
        before = _out_datagrams(lab.server)
        _ask(peer, "recv %d" % BURST)
        got = _while_stopped(salon, lambda: (_ask(client, "send %d" % BURST), _line(client)), lambda: _line(peer))
        to_peer_sends = _out_datagrams(lab.server) - before
        assert got == {"got": BURST, "in_order": BURST, "intact": BURST,
                       "from": ["%s:%d" % tuple(relayed)]}, got
        # peer -> client: datagrams queued at the relayed socket
        before = _out_datagrams(lab.server)
        _ask(client, "recv %d" % BURST)
        got = _while_stopped(salon, lambda: (_ask(peer, "send %d %s %d" % (BURST, *relayed)), _line(peer)),
                             lambda: _line(client))
        to_client_sends = _out_datagrams(lab.server) - before
        assert got == {"got": BURST, "in_order": BURST, "intact": BURST, "from": ["%s:3478" % salon_ip]}, got
    finally:
        for p in (client, peer):
            p.kill()
            p.wait()
    # 150 datagrams each way in runs of at most 64: three sends each (one
    # per run; the peer's own 150 sends are counted too, 150 + 3)
    print("server UDP sends for %d relayed datagrams: to the peer %d, to the client %d (peer's own %d)"
          % (BURST, to_peer_sends, to_client_sends - BURST, BURST))
    assert to_peer_sends <= 10, to_peer_sends
    assert to_client_sends - BURST <= 10, to_client_sends
