"""The demo's application: a tiny UDP "ping/pong" program run in each lab host.

It binds 127.0.0.1:APP_PORT (where ``natsalon connect --deliver`` hands the
peer's datagrams), sends COUNT pings to the forward port (127.0.0.1:FWD_PORT,
which ``natsalon connect --forward`` carries to the peer), answers every ping
that comes from the peer with a pong carrying the same payload, and prints one
JSON summary line at the end.  It prints "ready" once bound and starts
sending when a line arrives on stdin (both sides bound: no ping is lost
to a port nobody listens on yet).  Only the standard library: it runs with any
python3.
"""
import hashlib
import json
import socket
import sys
import time

name, app_port, fwd_port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
interval, linger = 0.02, 2.0
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", app_port))
fwd = ("127.0.0.1", fwd_port)
print("ready", flush=True)
sys.stdin.readline()  # "go": the peer's program is bound too
sent_at, rtts, answered, bad, first_seen = {}, [], 0, 0, None
next_send, n = time.monotonic(), 0
last_activity = time.monotonic()
while True:
    now = time.monotonic()
    if n < count and now >= next_send:
        body = ("ping %d from %s" % (n, name)).encode()
        sent_at[n] = now
        s.sendto(b"P" + hashlib.sha256(body).digest()[:8] + body, fwd)
        n += 1
        next_send = now + interval
    if n >= count and now - last_activity > linger:
        break
    s.settimeout(max(0.001, min(next_send - now, 0.2)) if n < count else 0.2)
    try:
        data = s.recv(4096)
    except socket.timeout:
        continue
    last_activity = time.monotonic()
    kind, digest, body = data[:1], data[1:9], data[9:]
    if hashlib.sha256(body).digest()[:8] != digest:
        bad += 1
        continue
    if kind == b"P":  # the peer's ping: answer it through our forward port
        if first_seen is None:
            first_seen = body.decode()
        s.sendto(b"R" + data[1:], fwd)
        answered += 1
    elif kind == b"R":  # our ping came back
        seq = int(body.split()[1])
        if seq in sent_at:
            rtts.append((last_activity - sent_at.pop(seq)) * 1000)
rtts.sort()
print(json.dumps({"name": name, "pings_sent": n, "pongs_back": len(rtts), "peer_pings_answered": answered,
                  "corrupt": bad, "first_peer_ping": first_seen,
                  "rtt_ms_median": round(rtts[len(rtts) // 2], 2) if rtts else None,
                  "rtt_ms_max": round(rtts[-1], 2) if rtts else None}), flush=True)
