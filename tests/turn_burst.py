"""A blocking TURN client and peer for the burst lab test
(test_turn_gso_lab), run inside lab namespaces as scripts.

    turn_burst.py client SALON_IP PORT SECRET PEER_IP PEER_PORT
        allocates (REST credentials), binds channel 0x4000 to the peer and
        prints {"relayed": [ip, port]}; then reads commands on stdin:
        "send N" sends N ChannelData frames as fast as it can, "recv N"
        reads N ChannelData frames and prints what it found.
    turn_burst.py peer IP PORT
        binds IP:PORT, prints {"ready": true}; "recv N" reads N datagrams,
        "send N HOST PORT" sends N datagrams to HOST:PORT.

Every payload is 100 bytes: a 4-byte sequence number, then a pattern of
it; "recv" prints {"got": n, "in_order": n, "intact": n, "from": [...]}
(what arrived within 5 s of the last datagram).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time

from natsalon.server.turn.auth import mint
from natsalon.stun import Address, Attr, Class, Message, Method, decode, encode
from natsalon.stun.message import long_term_key

CHANNEL = 0x4000
SIZE = 100


def payload(seq: int) -> bytes:
    return struct.pack("!I", seq) + bytes((seq + i) & 0xFF for i in range(SIZE - 4))


def say(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def request(sock, server, method, attrs, auth):
    """One authenticated request (a 401 first teaches realm and nonce)."""
    for _ in range(6):
        txid = os.urandom(12)
        extra = () if auth.get("nonce") is None else (
            (Attr.USERNAME, auth["user"]), (Attr.REALM, auth["realm"]), (Attr.NONCE, auth["nonce"]))
        key = long_term_key(auth["user"], auth["realm"], auth["password"]) if extra else None
        sock.sendto(encode(Message(method, Class.REQUEST, txid, tuple(attrs) + extra), integrity_key=key), server)
        try:
            while True:
                answer = decode(sock.recvfrom(2048)[0])
                if answer.transaction_id == txid:
                    break
        except socket.timeout:
            continue
        err = answer.get(Attr.ERROR_CODE)
        if err is not None and err.code in (401, 438):
            auth["nonce"], auth["realm"] = answer.get(Attr.NONCE), answer.get(Attr.REALM) or auth.get("realm")
            continue
        if answer.cls != Class.SUCCESS:
            raise SystemExit("TURN %s refused: %s" % (method, err))
        return answer
    raise SystemExit("no answer from the TURN server")


def receive(sock, n: int, strip: int) -> dict:
    got = in_order = intact = 0
    sources = set()
    last = -1
    sock.settimeout(5)
    try:
        while got < n:
            data, addr = sock.recvfrom(4096)
            body = data[strip:]
            if strip and data[:4] != struct.pack("!HH", CHANNEL, SIZE):
                continue
            got += 1
            sources.add("%s:%d" % addr[:2])
            seq = struct.unpack("!I", body[:4])[0]
            intact += body == payload(seq)
            in_order += seq == last + 1
            last = seq
    except socket.timeout:
        pass
    return {"got": got, "in_order": in_order, "intact": intact, "from": sorted(sources)}


def client(salon_ip, port, secret, peer_ip, peer_port) -> None:
    server = (salon_ip, int(port))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    sock.settimeout(1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    user, password = mint(secret, "burst", int(time.time()) + 3600)
    auth = {"user": user, "password": password, "realm": "", "nonce": None}
    alloc = request(sock, server, Method.ALLOCATE, ((Attr.REQUESTED_TRANSPORT, 17),), auth)
    relayed = alloc.get(Attr.XOR_RELAYED_ADDRESS)
    request(sock, server, Method.CHANNEL_BIND, ((Attr.CHANNEL_NUMBER, CHANNEL),
                                                (Attr.XOR_PEER_ADDRESS, Address(peer_ip, int(peer_port)))), auth)
    say({"relayed": [relayed.host, relayed.port]})
    for line in sys.stdin:
        cmd, n = line.split()[0], int(line.split()[1])
        if cmd == "send":
            for seq in range(n):
                sock.sendto(struct.pack("!HH", CHANNEL, SIZE) + payload(seq), server)
            say({"sent": n})
        elif cmd == "recv":
            say(receive(sock, n, 4))


def peer(ip, port) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    say({"ready": True})
    for line in sys.stdin:
        words = line.split()
        if words[0] == "recv":
            say(receive(sock, int(words[1]), 0))
        elif words[0] == "send":
            dest = (words[2], int(words[3]))
            for seq in range(int(words[1])):
                sock.sendto(payload(seq), dest)
            say({"sent": int(words[1])})


if __name__ == "__main__":
    {"client": client, "peer": peer}[sys.argv[1]](*sys.argv[2:])
