"""A tiny UDP agent for checking the NAT lab, independent of natsalon's code.

Run in a namespace with ``python udpprobe.py``; it reads one JSON command per
line on stdin and answers one JSON line on stdout (the first line it prints is
``{"ready": true}``).  Commands (``sock`` is an index returned by ``bind``):

- ``{"op": "bind", "ip": "0.0.0.0", "port": 0}`` -> ``{"sock": k, "addr": [ip, port]}``
- ``{"op": "send", "sock": k, "to": [ip, port], "data": "x", "count": 1, "interval": 0}``
- ``{"op": "recv", "sock": k, "timeout": 1.0, "max": 1}`` -> ``{"msgs": [{"from": [ip, port], "data": s, "t": t}]}``
  (returns early once ``max`` messages are in; ``max: 0`` means collect until timeout)
- ``{"op": "echo", "sock": k, "on": true}``: every datagram is answered from the
  same socket with ``{"seen": [src_ip, src_port], "data": payload}`` (what a STUN
  server would tell: the source address it observed)
- ``{"op": "count", "sock": k}`` -> number of datagrams received so far (echo mode included)
- ``{"op": "ping", "sock": k, "to": [ip, port], "count": n, "interval": s, "timeout": s}``
  -> ``{"rtts": [seconds or null, ...]}`` against an echoing peer
- ``{"op": "quit"}``

Standalone on purpose (no natlab/natsalon imports): the lab must be checked by
code that shares nothing with the product.
"""
from __future__ import annotations

import json
import queue
import socket
import sys
import threading
import time


class Sock:
    def __init__(self, ip: str, port: int) -> None:
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.s.bind((ip, port))
        self.q: "queue.Queue" = queue.Queue()
        self.echo = False
        self.count = 0
        t = threading.Thread(target=self._reader, daemon=True)
        t.start()

    def _reader(self) -> None:
        while True:
            try:
                data, src = self.s.recvfrom(65536)
            except OSError:
                return
            t = time.monotonic()
            self.count += 1
            text = data.decode("utf-8", "replace")
            if self.echo:
                reply = json.dumps({"seen": [src[0], src[1]], "data": text}).encode()
                try:
                    self.s.sendto(reply, src)
                except OSError:
                    pass
                continue
            self.q.put({"from": [src[0], src[1]], "data": text, "t": t})


def handle(socks: list, cmd: dict) -> dict:
    op = cmd["op"]
    if op == "bind":
        s = Sock(cmd.get("ip", "0.0.0.0"), int(cmd.get("port", 0)))
        socks.append(s)
        return {"sock": len(socks) - 1, "addr": list(s.s.getsockname())}
    s = socks[cmd["sock"]]
    if op == "send":
        to = (cmd["to"][0], int(cmd["to"][1]))
        data = cmd.get("data", "x").encode()
        n = int(cmd.get("count", 1))
        interval = float(cmd.get("interval", 0))
        errors = 0
        for i in range(n):
            try:
                s.s.sendto(data, to)
            except OSError:
                errors += 1
            if interval and i + 1 < n:
                time.sleep(interval)
        return {"sent": n - errors, "errors": errors}
    if op == "recv":
        deadline = time.monotonic() + float(cmd.get("timeout", 1.0))
        maxn = int(cmd.get("max", 1))
        msgs = []
        while maxn == 0 or len(msgs) < maxn:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                msgs.append(s.q.get(timeout=left))
            except queue.Empty:
                break
        return {"msgs": msgs}
    if op == "echo":
        s.echo = bool(cmd.get("on", True))
        return {}
    if op == "count":
        return {"count": s.count}
    if op == "ping":
        to = (cmd["to"][0], int(cmd["to"][1]))
        timeout = float(cmd.get("timeout", 1.0))
        interval = float(cmd.get("interval", 0.0))
        rtts = []
        for i in range(int(cmd.get("count", 5))):
            tag = "ping:%d:%f" % (i, time.time())
            t0 = time.monotonic()
            s.s.sendto(tag.encode(), to)
            rtt = None
            deadline = t0 + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    m = s.q.get(timeout=left)
                except queue.Empty:
                    break
                try:
                    if json.loads(m["data"]).get("data") == tag:
                        rtt = m["t"] - t0
                        break
                except ValueError:
                    pass
            rtts.append(rtt)
            if interval:
                time.sleep(interval)
        return {"rtts": rtts}
    raise ValueError("unknown op %r" % op)


def main() -> int:
    socks: list = []
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
            if cmd.get("op") == "quit":
                out.write(json.dumps({"ok": True}) + "\n")
                out.flush()
                return 0
            res = handle(socks, cmd)
            res["ok"] = True
        except Exception as e:  # report to the controller, keep serving
            res = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
        out.write(json.dumps(res) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
